"""The optimizer of a TrainConfig as an optax transformation, with torch's semantics.

sgd is torch.optim.SGD: weight decay is L2 added to the gradient before momentum; adam is
torch.optim.Adam (L2 into the gradient as well), adamw torch.optim.AdamW (decoupled decay), lamb
timm's Lamb (`training.lamb`). The learning rate and the momentum (sgd) or beta1 (adam, adamw,
lamb) follow `core.schedule`, the function of the update count that `torch_ref.training.optim`
follows too. With --norm-weight-decay or --bias-weight-decay each parameter has its own decay
(`ParameterDecays`), as torch's param groups give it.

The optimizer state has one shape for every value of the resumable settings (lr, schedule,
weight decay, nesterov), so a run resumes with any of them changed: the hyperparameters are
computed from the update count at every step, never read back from the checkpoint, and the weight
decay is always in the chain (a decay of 0 adds nothing).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from flax_resnet.core.config import TrainConfig
from flax_resnet.core.plan import StepPlan
from flax_resnet.core.registry import classifier_prefix
from flax_resnet.core.schedule import ADAM_BETAS, ADAM_EPS, Schedule, make_schedule

__all__ = ["make_optimizer", "make_schedule"]


# weight_decay below: one number, or a tree of numbers shaped like the parameters (`decay_groups`).
def torch_sgd(learning_rate, momentum, weight_decay, nesterov: bool) -> optax.GradientTransformation:
    """torch.optim.SGD (dampening 0): momentum buffer of (grad + weight_decay * param)."""
    return optax.chain(add_decayed_weights(weight_decay),
                       optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov))


def torch_adam(learning_rate, b1, weight_decay) -> optax.GradientTransformation:
    """torch.optim.Adam: weight_decay * param added to the gradient."""
    return optax.chain(add_decayed_weights(weight_decay),
                       optax.adam(learning_rate, b1=b1, b2=ADAM_BETAS[1], eps=ADAM_EPS))


def torch_adamw(learning_rate, b1, weight_decay) -> optax.GradientTransformation:
    """torch.optim.AdamW: param *= 1 - lr * weight_decay, then the Adam step (optax.adamw's chain)."""
    return optax.chain(optax.scale_by_adam(b1=b1, b2=ADAM_BETAS[1], eps=ADAM_EPS),
                       add_decayed_weights(weight_decay), optax.scale_by_learning_rate(learning_rate))


def timm_lamb(learning_rate, b1, weight_decay) -> optax.GradientTransformation:
    """timm.optim.Lamb with its other defaults (`training.lamb`)."""
    from flax_resnet.training.lamb import lamb

    return lamb(learning_rate, b1=b1, weight_decay=weight_decay)


def add_decayed_weights(weight_decay) -> optax.GradientTransformation:
    """optax.add_decayed_weights for one decay or a tree of Python numbers, one per parameter
    (torch's param groups); a parameter with decay 0 is left as it is, as torch skips it."""
    if isinstance(weight_decay, (int, float)):
        return optax.add_decayed_weights(weight_decay)

    def decayed(g, p, decay):
        # Under optax.multi_transform (freeze_backbone) the other transformation's leaves are MaskedNodes.
        return g if isinstance(g, optax.MaskedNode) or decay == 0 else g + decay * p

    def update(updates, state, params):
        decays = weight_decay(params) if callable(weight_decay) else weight_decay
        return jax.tree.map(decayed, updates, params, decays,
                            is_leaf=lambda x: isinstance(x, optax.MaskedNode)), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


OPTIMIZER_FIELDS = ("optimizer", "lr", "momentum", "nesterov", "weight_decay", "schedule", "schedule_unit",
                    "warmup_epochs", "warmup_start", "milestones", "gamma", "grad_accum", "epochs", "freeze_backbone",
                    "model")


def make_optimizer(config: TrainConfig, plan: StepPlan, model: nnx.Module | None = None,
                   ) -> tuple[optax.GradientTransformation, Schedule]:
    """(optax transformation, schedule). With grad_accum > 1 the transformation is an
    optax.MultiSteps that applies the mean gradient every grad_accum steps. `model` is needed
    only for --norm-weight-decay and --bias-weight-decay: which parameters are norms'."""
    from flax_resnet.core.weight_decay import config_decay_settings, uses_groups

    weight_decay = config.weight_decay
    if uses_groups(config):
        if model is None:
            raise ValueError("make_optimizer needs the model for norm_weight_decay or bias_weight_decay")
        weight_decay = ParameterDecays.of(model, *config_decay_settings(config))
    return _make_optimizer(tuple(getattr(config, name) for name in OPTIMIZER_FIELDS), plan, weight_decay)


@dataclasses.dataclass(frozen=True)
class ParameterDecays:
    """Each parameter's weight decay, by its torch state_dict key: torch's param groups for a tree of
    parameters. Called on a parameter tree, it gives the tree of decays the transformations here
    and `lamb.lamb` take. Hashable, so equal decays give the same optimizer (`_make_optimizer`)."""

    by_key: tuple[tuple[str, float], ...]

    @classmethod
    def of(cls, model: nnx.Module, weight_decay: float, norm_weight_decay: float | None = None,
           custom_keys_weight_decay=None) -> ParameterDecays:
        """The decays of `model`'s parameters by torchvision's `set_weight_decay` rule (see `decay_groups`)."""
        from flax_resnet.porting.state_dict import torch_key

        tree = decay_groups(model, weight_decay, norm_weight_decay, custom_keys_weight_decay)
        return cls(tuple(sorted((torch_key(_dict_keys(path)), decay)
                                for path, decay in jax.tree_util.tree_flatten_with_path(tree)[0])))

    def __call__(self, params):
        from flax_resnet.porting.state_dict import torch_key

        decays = dict(self.by_key)
        return jax.tree_util.tree_map_with_path(lambda path, _: decays[torch_key(_dict_keys(path))], params)


def _dict_keys(path) -> tuple:
    return tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))


# Equal settings give the very same optimizer object: JAX then recognizes the train step of a
# second run in the same process (a resumption, a sweep) and reuses its compiled program.
@functools.lru_cache(maxsize=16)
def _make_optimizer(settings: tuple, plan: StepPlan, weight_decay):
    config = TrainConfig(**dict(zip(OPTIMIZER_FIELDS, settings)))
    schedule = make_schedule(config, plan)
    learning_rate = functools.partial(_traced, schedule.learning_rate)
    momentum = functools.partial(_traced, schedule.momentum_at)
    if config.optimizer == "sgd":
        tx = optax.inject_hyperparams(torch_sgd, static_args=("weight_decay", "nesterov"))(
            learning_rate, momentum, weight_decay, config.nesterov)
    elif config.optimizer in ("adam", "adamw"):
        factory = torch_adam if config.optimizer == "adam" else torch_adamw
        tx = optax.inject_hyperparams(factory, static_args=("weight_decay",))(
            learning_rate, momentum, weight_decay)
    elif config.optimizer == "lamb":
        tx = optax.inject_hyperparams(timm_lamb, static_args=("weight_decay",))(learning_rate, momentum, weight_decay)
    else:
        raise ValueError(f"unknown optimizer {config.optimizer!r}")
    if config.freeze_backbone:
        # Only the classifier moves (no update, no weight decay elsewhere), as torch's optimizer
        # given only the classifier's parameters.
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()},
                                   functools.partial(classifier_labels, prefix=classifier_prefix(config.model)))
    if config.grad_accum > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=config.grad_accum).gradient_transformation()
    return tx, schedule


def classifier_labels(params, *, prefix: str):
    """'train' for the classifier's parameters (twin keys starting with `prefix`), 'frozen' for the rest."""
    # Imported here: torch_ref's optimizer shares this module's schedule and must not load Flax.
    from flax_resnet.porting.state_dict import torch_key

    def label(path, _):
        keys = tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))
        return "train" if torch_key(keys).startswith(prefix) else "frozen"

    return jax.tree_util.tree_map_with_path(label, params)


def decay_groups(model, weight_decay: float, norm_weight_decay: float | None = None,
                 custom_keys_weight_decay=None):
    """Each parameter's weight decay by torchvision's `set_weight_decay` rule
    (`flax_resnet.core.weight_decay`), as a tree shaped like the model's nnx.Param state: the
    `weight_decay` the transformations here and `lamb.lamb` take in place of torch's param groups.
    Norm layers are the model's BatchNorm, LayerNorm, GroupNorm and InstanceNorm modules, as
    torchvision's default norm classes."""
    # Imported here, as in classifier_labels.
    from flax_resnet.core.weight_decay import weight_decays
    from flax_resnet.models.layers import BatchNorm
    from flax_resnet.porting.state_dict import torch_key

    norm_layers = (BatchNorm, nnx.BatchNorm, nnx.LayerNorm, nnx.GroupNorm, nnx.InstanceNorm)
    nodes = dict(nnx.iter_graph(model))
    params = {path: node for path, node in nodes.items() if isinstance(node, nnx.Param)}
    norm_names = {torch_key(path) for path in params if isinstance(nodes.get(path[:-1]), norm_layers)}
    decays = weight_decays([torch_key(path) for path in params], norm_names, weight_decay, norm_weight_decay,
                           custom_keys_weight_decay)

    def decay(path, _):
        return decays[torch_key(_dict_keys(path))]

    return jax.tree_util.tree_map_with_path(decay, nnx.state(model, nnx.Param))


def _traced(function, count):
    return function(count, jnp)
