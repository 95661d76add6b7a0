"""The optimizer and learning-rate schedule of a TrainConfig, as optax transformations.

Semantics are torch's, so `torch_ref.training.optim` builds the same thing: sgd's weight decay is L2 added
to the gradient before momentum (torch.optim.SGD), adam's too (torch.optim.Adam), adamw's is
decoupled (torch.optim.AdamW). The schedule is one function of the optimizer-update count, shared
by both frameworks.
"""

from __future__ import annotations

import functools

import jax
import optax

from flax_resnet.training.config import TrainConfig
from flax_resnet.training.initial_weights import classifier_prefix
from flax_resnet.training.setup import StepPlan


OPTIMIZER_FIELDS = ("optimizer", "lr", "momentum", "nesterov", "weight_decay", "schedule", "warmup_epochs",
                    "milestones", "gamma", "grad_accum", "epochs", "freeze_backbone", "model")


def _settings(config: TrainConfig) -> tuple:
    return tuple(getattr(config, name) for name in OPTIMIZER_FIELDS)


def _config(settings: tuple) -> TrainConfig:
    return TrainConfig(**dict(zip(OPTIMIZER_FIELDS, settings)))


# Equal settings give the very same schedule and optimizer objects: JAX then recognizes the train
# step of a second run in the same process (a resumption, a sweep) and reuses its compiled program.

def make_schedule(config: TrainConfig, plan: StepPlan) -> optax.Schedule:
    """Learning rate as a function of the optimizer-update count."""
    return _make_schedule(_settings(config), plan)


@functools.lru_cache(maxsize=16)
def _make_schedule(settings: tuple, plan: StepPlan) -> optax.Schedule:
    config = _config(settings)
    peak, total = config.lr, plan.total_updates
    warmup = plan.updates_at(config.warmup_epochs)
    if config.schedule == "constant":
        if warmup == 0:
            return optax.constant_schedule(peak)
        return optax.join_schedules(
            [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup])
    if config.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total, warmup + 1), 0.0)
    if config.schedule == "multistep":
        milestones = config.milestones or (0.5 * config.epochs, 0.75 * config.epochs)
        return optax.piecewise_constant_schedule(
            peak, {plan.updates_at(m): config.gamma for m in milestones})
    if config.schedule == "onecycle":
        # torch.optim.lr_scheduler.OneCycleLR's defaults: 30% up from peak / 25, cosine down to
        # peak / 25e4 (momentum is not cycled here).
        return optax.cosine_onecycle_schedule(total, peak, pct_start=0.3, div_factor=25.0,
                                              final_div_factor=1e4)
    raise ValueError(f"unknown schedule {config.schedule!r}")


def make_optimizer(config: TrainConfig, plan: StepPlan) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optax transformation, schedule). With grad_accum > 1 the transformation is an
    optax.MultiSteps that applies the mean gradient every grad_accum steps."""
    return _make_optimizer(_settings(config), plan)


@functools.lru_cache(maxsize=16)
def _make_optimizer(settings: tuple, plan: StepPlan):
    config = _config(settings)
    schedule = _make_schedule(settings, plan)
    decay = config.weight_decay
    if config.optimizer == "sgd":
        momentum = config.momentum or None
        tx = optax.sgd(schedule, momentum=momentum, nesterov=config.nesterov)
        tx = optax.chain(optax.add_decayed_weights(decay), tx) if decay else tx
    elif config.optimizer == "adam":
        tx = optax.adam(schedule, b1=0.9, b2=0.999, eps=1e-8)
        tx = optax.chain(optax.add_decayed_weights(decay), tx) if decay else tx
    elif config.optimizer == "adamw":
        tx = optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=decay)
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


def learning_rate(schedule: optax.Schedule, step: int, grad_accum: int) -> float:
    """The learning rate in force at train step `step` (0-based)."""
    return float(schedule(step // grad_accum))
