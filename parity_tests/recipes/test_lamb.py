"""LAMB: `flax_resnet.training.lamb.lamb` (optax) and its torch twin `torch_ref.training.lamb.Lamb`
follow timm's `timm.optim.Lamb` for K updates on the same random gradients.

Two param groups as the recipes build them (decay on weights, none on biases), a learning rate
that changes every update, a first gradient far above max_grad_norm (clipped) and one below it
(not clipped), a weight that starts at zero (the trust ratio's zero-norm case). float64: all three
compute the same function (a few float64 ulps per update). float32: ours within NOISE_FACTOR times
timm's own float32 error against timm's float64 run, plus one float32 ulp.
"""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from timm.optim import Lamb as TimmLamb

from flax_resnet.training.lamb import lamb
from parity_tests.helpers.twins import relative_error
from torch_ref.training.lamb import Lamb

NOISE_FACTOR = 10
UPDATES = 6
WEIGHT_DECAY = 0.05
# Odd and even sizes; the biases and the norm-like vector get no decay.
SHAPES = {"conv.weight": (6, 3, 3, 3), "fc.weight": (10, 7), "zero.weight": (4, 5), "fc.bias": (10,),
          "norm.weight": (7,)}
DECAYED = ("conv.weight", "fc.weight", "zero.weight")
# Gradient scale per update: the first is clipped hard, the fourth has a global norm below 1.
GRADIENT_SCALES = (1e3, 1.0, 3.0, 1e-2, 1.0, 0.5)
CONFIGS = {
    "timm defaults": {},
    "always adapt, trust clip, no grad averaging": dict(always_adapt=True, trust_clip=True, grad_averaging=False),
    "no bias correction, no clipping, other betas": dict(bias_correction=False, max_grad_norm=None,
                                                         betas=(0.8, 0.99), eps=1e-5),
}


def learning_rate(update):
    """A schedule of the update count (0 first): warmup-like growth, so every update has its own lr."""
    return 0.02 * (update + 1) / UPDATES


def draws(seed=0):
    rng = np.random.default_rng(seed)
    params = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in SHAPES.items()}
    params["zero.weight"][:] = 0
    grads = [{name: (scale * rng.standard_normal(shape)).astype(np.float32) for name, shape in SHAPES.items()}
             for scale in GRADIENT_SCALES]
    return params, grads


def run_torch(optimizer_class, params, grads, dtype, options):
    tensors = {name: torch.tensor(value, dtype=dtype, requires_grad=True) for name, value in params.items()}
    groups = [{"params": [tensors[n] for n in DECAYED], "weight_decay": WEIGHT_DECAY},
              {"params": [t for n, t in tensors.items() if n not in DECAYED], "weight_decay": 0.0}]
    optimizer = optimizer_class(groups, lr=learning_rate(0), **options)
    for update, grad in enumerate(grads):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(update)
        for name, tensor in tensors.items():
            tensor.grad = torch.tensor(grad[name], dtype=dtype)
        optimizer.step()
    return {name: tensor.detach().numpy() for name, tensor in tensors.items()}


def run_optax(params, grads, dtype, options):
    options = dict(options)
    if "betas" in options:
        options["b1"], options["b2"] = options.pop("betas")
    decays = {name: WEIGHT_DECAY if name in DECAYED else 0.0 for name in params}
    tx = lamb(learning_rate, weight_decay=decays, **options)
    params = {name: jnp.asarray(value, dtype) for name, value in params.items()}
    state = tx.init(params)

    @jax.jit
    def step(params, state, grad):
        updates, state = tx.update(grad, state, params)
        return jax.tree.map(lambda p, u: p + u, params, updates), state

    for grad in grads:
        params, state = step(params, state, {name: jnp.asarray(value, dtype) for name, value in grad.items()})
    return {name: np.asarray(value) for name, value in params.items()}


def worst(actual, expected):
    return max(relative_error(actual[name], expected[name]) for name in expected)


@pytest.mark.parametrize("config", CONFIGS)
def test_lamb_matches_timm_in_float64(config, float64_enabled):
    """The same function: float64 agrees to rounding."""
    options = CONFIGS[config]
    params, grads = draws()
    reference = run_torch(TimmLamb, params, grads, torch.float64, options)
    bound = 100 * UPDATES * np.finfo(np.float64).eps
    assert worst(run_torch(Lamb, params, grads, torch.float64, options), reference) <= bound
    assert worst(run_optax(params, grads, jnp.float64, options), reference) <= bound


@pytest.mark.parametrize("config", CONFIGS)
def test_lamb_matches_timm_in_float32(config):
    """As training runs it (JAX without 64-bit types): within timm's own float32 error."""
    options = CONFIGS[config]
    params, grads = draws()
    reference = run_torch(TimmLamb, params, grads, torch.float64, options)
    bound = NOISE_FACTOR * worst(run_torch(TimmLamb, params, grads, torch.float32, options), reference)
    bound += np.finfo(np.float32).eps
    assert worst(run_torch(Lamb, params, grads, torch.float32, options), reference) <= bound
    assert worst(run_optax(params, grads, jnp.float32, options), reference) <= bound

    # The updates moved every parameter far beyond that bound: the comparison has something to see.
    assert min(relative_error(reference[n], params[n], floor=1.0) for n in params) > 1e3 * bound


def test_each_option_changes_timms_result():
    """Clipping, the trust ratio on undecayed parameters and gradient averaging each move timm's
    result, so the parity above covers each of them."""
    params, grads = draws(1)
    default = run_torch(TimmLamb, params, grads, torch.float64, {})
    for options in (dict(max_grad_norm=None), dict(always_adapt=True), dict(grad_averaging=False)):
        changed = run_torch(TimmLamb, params, grads, torch.float64, options)
        assert worst(changed, default) > 1e-3, options



def test_defaults_are_timms():
    """Both twins default to timm's hyperparameters (the float comparisons above pass most explicitly)."""
    parameter = [torch.zeros(3, requires_grad=True)]
    timm_defaults = TimmLamb(parameter).defaults
    ours = Lamb(parameter).defaults
    assert ours == {key: timm_defaults[key] for key in ours}
    flax_defaults = {name: p.default for name, p in inspect.signature(lamb).parameters.items()
                     if p.default is not inspect.Parameter.empty}
    flax_defaults["betas"] = (flax_defaults.pop("b1"), flax_defaults.pop("b2"))
    assert flax_defaults == {key: timm_defaults[key] for key in flax_defaults}
