"""No weight decay on norms and biases, as torchvision's `set_weight_decay` decides it.

The reference is torchvision's function (references/classification/utils.py) written out here: it
walks the modules and tells norm layers by their type, where ours decides by state_dict names
(`flax_resnet.core.weight_decay`) and finds norm layers in each framework's model. Checked:
the names that get each decay, the torch param groups themselves, and a few updates of torch's SGD
and AdamW and timm's Lamb with the reference's groups against our optax ones with the per-leaf decay.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx
from timm.optim import Lamb as TimmLamb

import torch_ref
from flax_resnet.core.schedule import ADAM_BETAS, ADAM_EPS
from flax_resnet.core.weight_decay import WeightDecayError, weight_decays
from flax_resnet.models import model_skeleton
from flax_resnet.porting import state_to_torch
from flax_resnet.porting.state_dict import torch_key
from flax_resnet.training import optim
from flax_resnet.training.lamb import lamb
from parity_tests.helpers.flax_trees import from_torch_values
from parity_tests.helpers.twins import relative_error
from torch_ref.training.optim import decay_groups as torch_decay_groups

NOISE_FACTOR = 10
WEIGHT_DECAY = 0.05
# CIFAR option-A net (no conv biases), pre-activation (a BatchNorm after the last block), SE
# (conv biases inside the attention), d2l (conv biases everywhere), the deep-stem ResNet-D shortcut.
VARIANTS = ("resnet20", "preact_resnet18", "seresnet18", "d2l_resnet18", "resnet10t")
# (norm_weight_decay, bias_weight_decay): the V2 recipe's (0, None), both off, biases only, and
# both set (the bias key wins over the norm group for BatchNorm's bias).
SETTINGS = [(0.0, None), (0.0, 0.0), (None, 0.0), (1e-5, 2e-5)]
TORCHVISION_NORM_CLASSES = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.LayerNorm, torch.nn.GroupNorm,
                            torch.nn.modules.instancenorm._InstanceNorm, torch.nn.LocalResponseNorm)


def torchvision_set_weight_decay(model, weight_decay, norm_weight_decay=None, custom_keys_weight_decay=None):
    """torchvision's set_weight_decay, from its description: recursive over modules, each module's
    own parameters first; a custom key matches the local name, or with a dot the full name."""
    params = {"other": [], "norm": []}
    decays = {"other": weight_decay, "norm": norm_weight_decay}
    keys = []
    for key, decay in custom_keys_weight_decay or ():
        params[key], decays[key] = [], decay
        keys.append(key)

    def add(module, prefix=""):
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            target = next((key for key in keys
                           if key == (f"{prefix}.{name}" if prefix != "" and "." in key else name)), None)
            if target is not None:
                params[target].append(p)
            elif norm_weight_decay is not None and isinstance(module, TORCHVISION_NORM_CLASSES):
                params["norm"].append(p)
            else:
                params["other"].append(p)
        for child_name, child in module.named_children():
            add(child, f"{prefix}.{child_name}" if prefix != "" else child_name)

    add(model)
    return [{"params": params[key], "weight_decay": decays[key]} for key in params if params[key]]


def custom_keys(bias_weight_decay):
    return None if bias_weight_decay is None else [("bias", bias_weight_decay)]


def by_name(model, groups) -> dict[str, float]:
    names = {id(p): name for name, p in model.named_parameters()}
    return {names[id(p)]: group["weight_decay"] for group in groups for p in group["params"]}


def flax_decays(tree) -> dict[str, float]:
    return {torch_key(path): variable.get_value() for path, variable in nnx.to_flat_state(tree)}


def skeleton(name):
    return model_skeleton(name)


@pytest.mark.parametrize("name", VARIANTS)
def test_decay_of_every_parameter_is_torchvisions(name):
    torch.manual_seed(0)
    model = torch_ref.create_model(name)
    flax_model = skeleton(name)
    norms = {f"{module_name}.{leaf}" for module_name, module in model.named_modules()
             if isinstance(module, torch.nn.BatchNorm2d) for leaf in ("weight", "bias")}
    biases = {key for key, _ in model.named_parameters() if key.endswith(".bias")}
    assert norms and biases - norms  # every variant has BatchNorm and a bias outside it (at least fc's)
    for norm_decay, bias_decay in SETTINGS:
        settings = (WEIGHT_DECAY, norm_decay, custom_keys(bias_decay))
        reference = torchvision_set_weight_decay(model, *settings)
        ours = torch_decay_groups(model, *settings)
        # The same groups, in torchvision's order, each with its parameters in model order.
        assert [g["weight_decay"] for g in ours] == [g["weight_decay"] for g in reference]
        assert [[id(p) for p in g["params"]] for g in ours] == [[id(p) for p in g["params"]] for g in reference]
        expected = by_name(model, reference)
        assert flax_decays(optim.decay_groups(flax_model, *settings)) == expected
        zero = {key for key, decay in expected.items() if decay == 0}
        if (norm_decay, bias_decay) == (0.0, None):
            assert zero == norms
        if (norm_decay, bias_decay) == (0.0, 0.0):
            assert zero == norms | biases
        if (norm_decay, bias_decay) == (1e-5, 2e-5):
            assert {key for key, decay in expected.items() if decay == 2e-5} == biases


def test_frozen_parameters_are_left_out():
    model = torch_ref.create_model("resnet20")
    for p in model.fc.parameters():
        p.requires_grad_(False)
    ours = torch_decay_groups(model, WEIGHT_DECAY, 0.0, custom_keys(0.0))
    reference = torchvision_set_weight_decay(model, WEIGHT_DECAY, 0.0, custom_keys(0.0))
    assert [[id(p) for p in g["params"]] for g in ours] == [[id(p) for p in g["params"]] for g in reference]
    assert "fc.weight" not in by_name(model, ours)


def test_custom_keys_given_twice_raise_one_line():
    with pytest.raises(WeightDecayError, match="bias"):
        weight_decays(["fc.bias"], set(), 0.1, custom_keys_weight_decay=[("bias", 0.0), ("bias", 1e-5)])


LR = 0.1
STEPS = 3


@functools.cache
def start_state() -> dict[str, np.ndarray]:
    """resnet20's initial weights (torch layouts), where both optimizers start."""
    torch.manual_seed(0)
    return {key: value.numpy() for key, value in torch_ref.create_model("resnet20").state_dict().items()}


def torch_steps(optimizer_name, grads, dtype, grouped=True):
    model = torch_ref.create_model("resnet20").to(dtype)
    model.load_state_dict({key: torch.from_numpy(value) for key, value in start_state().items()})
    groups = torchvision_set_weight_decay(model, WEIGHT_DECAY, 0.0, custom_keys(0.0)) if grouped else model.parameters()
    if optimizer_name == "sgd":
        optimizer = torch.optim.SGD(groups, lr=LR, momentum=0.9, weight_decay=WEIGHT_DECAY)
    elif optimizer_name == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=LR, betas=ADAM_BETAS, eps=ADAM_EPS, weight_decay=WEIGHT_DECAY)
    else:
        optimizer = TimmLamb(groups, lr=LR, weight_decay=WEIGHT_DECAY)
    parameters = dict(model.named_parameters())
    for grad in grads:
        for key, value in grad.items():
            parameters[key].grad = torch.from_numpy(value).to(dtype)
        optimizer.step()
    return {key: p.detach().numpy() for key, p in parameters.items()}


def optax_steps(optimizer_name, grads, dtype):
    flax_model = skeleton("resnet20")
    template = nnx.state(flax_model, nnx.Param)
    decay = optim.decay_groups(flax_model, WEIGHT_DECAY, 0.0, custom_keys(0.0))
    if optimizer_name == "sgd":
        tx = optim.torch_sgd(LR, 0.9, decay, nesterov=False)
    elif optimizer_name == "adamw":
        tx = optim.torch_adamw(LR, ADAM_BETAS[0], decay)
    else:
        tx = lamb(LR, weight_decay=decay)

    @jax.jit
    def steps(params, grads):  # a scan over the updates: one step body to compile
        def step(carry, grad):
            params, state = carry
            updates, state = tx.update(grad, state, params)
            return (jax.tree.map(lambda p, u: p + u, params, updates), state), None

        return jax.lax.scan(step, (params, tx.init(params)), grads)[0][0]

    params = from_torch_values(template, start_state(), dtype)
    stacked = jax.tree.map(lambda *leaves: np.stack(leaves), *[from_torch_values(template, g, dtype) for g in grads])
    return state_to_torch(steps(params, stacked))


@pytest.mark.parametrize("optimizer_name", ["sgd", "adamw", "lamb"])
def test_updates_with_decay_groups_match_the_reference(optimizer_name, request):
    if optimizer_name == "adamw":
        # optax's Adam takes its bias corrections in JAX's default float, float32 unless 64-bit
        # types are on, where torch takes them in double: 1e-5 apart after the first updates,
        # whatever the decay. With 64-bit types on (float32 parameters still) they agree.
        request.getfixturevalue("float64_enabled")
    rng = np.random.default_rng(0)
    parameters = {key for key, _ in torch_ref.create_model("resnet20").named_parameters()}
    shapes = {key: value.shape for key, value in start_state().items() if key in parameters}
    grads = [{key: rng.standard_normal(shape).astype(np.float32) for key, shape in shapes.items()}
             for _ in range(STEPS)]
    reference = torch_steps(optimizer_name, grads, torch.float64)

    def errors(ours):
        return max(relative_error(ours[k], v) for k, v in reference.items())

    bound = NOISE_FACTOR * errors(torch_steps(optimizer_name, grads, torch.float32)) + np.finfo(np.float32).eps

    assert errors(optax_steps(optimizer_name, grads, jnp.float32)) <= bound
    # With one decay for every parameter torch ends elsewhere: the groups are what the comparison sees.
    assert errors(torch_steps(optimizer_name, grads, torch.float64, grouped=False)) > 1e3 * bound


@pytest.mark.parametrize("optimizer_name", ["sgd", "lamb"])
def test_per_leaf_decay_under_a_frozen_backbone(optimizer_name):
    """Under optax.multi_transform (freeze_backbone) the per-leaf decay sees only the trained
    leaves, as a torch optimizer given only the classifier's parameters."""
    rng = np.random.default_rng(1)
    shapes = {"conv.weight": (4, 3, 3, 3), "fc.weight": (5, 7), "fc.bias": (5,)}
    params = {key: rng.standard_normal(shape).astype(np.float32) for key, shape in shapes.items()}
    grads = [{key: rng.standard_normal(shape).astype(np.float32) for key, shape in shapes.items()}
             for _ in range(STEPS)]
    decays = weight_decays(shapes, set(), WEIGHT_DECAY, custom_keys_weight_decay=custom_keys(0.0))

    def torch_run(dtype):
        tensors = {key: torch.tensor(params[key], dtype=dtype, requires_grad=True) for key in ("fc.weight", "fc.bias")}
        groups = [{"params": [tensors[key]], "weight_decay": decays[key]} for key in tensors]
        optimizer = (torch.optim.SGD(groups, lr=LR, momentum=0.9) if optimizer_name == "sgd"
                     else TimmLamb(groups, lr=LR))
        for grad in grads:
            for key, tensor in tensors.items():
                tensor.grad = torch.tensor(grad[key], dtype=dtype)
            optimizer.step()
        return {key: tensor.detach().numpy() for key, tensor in tensors.items()}

    if optimizer_name == "sgd":
        inner = optim.torch_sgd(LR, 0.9, decays, nesterov=False)
    else:
        inner = lamb(LR, weight_decay=decays)
    labels = {key: "train" if key.startswith("fc.") else "frozen" for key in shapes}
    tx = optax.multi_transform({"train": inner, "frozen": optax.set_to_zero()}, labels)
    ours = {key: jnp.asarray(value) for key, value in params.items()}
    state = tx.init(ours)
    for grad in grads:
        updates, state = tx.update({key: jnp.asarray(value) for key, value in grad.items()}, state, ours)
        ours = jax.tree.map(lambda p, u: p + u, ours, updates)

    reference = torch_run(torch.float64)
    bound = NOISE_FACTOR * max(relative_error(v, reference[k]) for k, v in torch_run(torch.float32).items())
    assert max(relative_error(ours[k], v) for k, v in reference.items()) <= bound + np.finfo(np.float32).eps
    assert np.array_equal(ours["conv.weight"], params["conv.weight"])
    assert relative_error(reference["fc.bias"], params["fc.bias"]) > 1e3 * bound  # it moved
