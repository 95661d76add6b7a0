"""Train mode: one forward/backward on ported twins gives the same outputs (batch statistics),
the same updated running statistics and the same gradient for every parameter.

Which variants: every kind of part at least once (each family, block, stem, deep-stem widths,
shortcut, attention, grouped convolution, residual or plain, stage widths), shallow nets first;
and ALWAYS: torchvision's ResNet-18 and ResNet-50, the nets ported most, and the deepest plain
CIFAR net, where float32 rounding accumulates most (no shortcut carries the signal past it).
(ResNet-152 and ResNet-110, the deepest residual nets, only repeat ResNet-50's and ResNet-20's
blocks, and their steps were among the suite's slowest tests, 85 s and 50 s; their forwards are
checked stage by stage by the eval parity test.) The other variants combine the same
parts in more or wider blocks; the eval parity test checks every variant's forward stage by
stage, and the train step of all of them in float64 would take most of the suite's time. Each
runs the step four times: torch and Flax, float64 and float32.

- float64: every output, running statistic and gradient agrees to 1e-6 relative (most to 1e-12),
  which shows the two frameworks compute the same function and the same gradient.
- float32: logits, running statistics and all gradients agree within 1e-4, or within
  NOISE_FACTOR times torch's own float32 error against the float64 step, whichever is larger.
  Deep nets in train mode at initialization are ill-conditioned (BatchNorm's backward after
  global pooling cancels almost everything; plain nets are chaotic), so torch's own float32 step
  can land far from its float64 one, and two float32 implementations may differ by as much.
  Both float32 runs apply the float64 run's ReLU patterns (parity_tests/relu_patterns.py): a ReLU
  input within rounding of zero would otherwise switch the gradient of whole tensors at random.

The Flax steps are jitted, as training runs them.
"""

import contextlib
import copy

import numpy as np
import pytest
import torch
from flax import nnx

from flax_resnet.core.registry import MODELS, resolve
from flax_resnet.porting import state_to_torch, to_torch_state_dict
from parity_tests.helpers.compilation import optimized
from parity_tests.helpers.relu_patterns import pinned_flax_relus, pinned_torch_relus, record_torch_relus
from parity_tests.helpers.twins import as_float64, family, gradient_errors, make_twins, random_images, relative_error

TOLERANCE = 1e-4
FLOAT64_TOLERANCE = 1e-6
# Two independent float32 implementations of one ill-conditioned step: errors of the same size.
NOISE_FACTOR = 10
# The smallest inputs at which every stride sees an odd size and the last stage is still 2x2
# (1x1 with batch 2 would leave BatchNorm two values, whose normalized outputs have no gradient):
# 33 -> 17 -> 9 -> 5 -> 3 -> 2 through an ImageNet stem and stages, 34 for an even width.
SIZES = {"mnist": (28, 28), "cifar": (9, 11)}
IMAGENET_SIZE = (33, 34)
BATCH = 2


# torchvision's ResNet-18 and ResNet-50, the nets most ported; the deepest plain CIFAR net.
ALWAYS = ("resnet18", "resnet50", "plain110")


def features(name: str) -> set[tuple]:
    """What a variant's train step is made of, other than depth and width: (feature, value) pairs."""
    spec = MODELS[name]
    return {("family", spec.family), ("block", (spec.family, spec.block)), ("residual", spec.residual),
            ("stem", spec.stem),
            ("deep stem", spec.deep_stem_widths if spec.stem == "deep" else None),
            ("shortcut", spec.options.get("shortcut", spec.shortcut) if spec.residual else None),
            ("attention", spec.attention), ("grouped", spec.groups > 1), ("widths", spec.widths)}


def train_parity_variants() -> list[str]:
    """ALWAYS, and, shallowest first, each variant that brings a (feature, value) no earlier one had."""
    covered: set[tuple] = set()
    chosen = set(ALWAYS)
    for name in sorted(MODELS, key=lambda n: (sum(MODELS[n].layers), MODELS[n].base_width * MODELS[n].groups)):
        if features(name) - covered:
            chosen.add(name)
            covered |= features(name)
    return [name for name in MODELS if name in chosen]


def large(name: str) -> bool:
    """The bottleneck nets deeper or wider than ResNet-50: several GB each in float64."""
    spec = MODELS[name]
    return spec.block == "bottleneck" and (sum(spec.layers) > 16 or spec.base_width * spec.groups > 64)


BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def _buffers(state: dict) -> dict[str, np.ndarray]:
    """BatchNorm's running statistics and counters: the part of a state_dict a train step changes."""
    return {k: np.asarray(v) for k, v in state.items() if k.endswith(BUFFER_SUFFIXES)}


def torch_step(model, images, weights):
    """(logits, gradients, BatchNorm buffers) of one train-mode step. The gradients are moved out
    of the model, so a large model holds one copy of them."""
    model.train()
    logits = model(torch.from_numpy(images))
    (logits * torch.from_numpy(weights)).sum().backward()
    grads = {}
    for name, parameter in model.named_parameters():
        grads[name], parameter.grad = parameter.grad.numpy(), None
    return logits.detach().numpy(), grads, _buffers({k: v.numpy() for k, v in model.state_dict().items()})


def _loss(model, images, weights):
    logits = model(images)
    return (logits * weights).sum(), logits


def flax_step(model, images, weights):
    model.train()
    # Jitted, as training runs it (and 3-4x faster than op by op on the deep nets). A fresh
    # function each time: a pinned ReLU pattern is traced into the program as constants, and a
    # cached one must never serve another pattern.
    (_, logits), grads = nnx.jit(nnx.value_and_grad(_loss, has_aux=True))(model, images, weights)
    return np.asarray(logits), state_to_torch(grads), _buffers(to_torch_state_dict(model))


def running_statistics(state):
    keys = sorted(k for k in state if k.endswith(("running_mean", "running_var")))
    return np.concatenate([np.asarray(state[k], np.float64).ravel() for k in keys] or [np.zeros(1)])


def global_gradient_error(actual, expected):
    """||actual - expected|| / ||expected|| over every gradient at once."""
    diff = sum(float(np.sum((actual[k].astype(np.float64) - g) ** 2)) for k, g in expected.items())
    norm = sum(float(np.sum(np.asarray(g, np.float64) ** 2)) for g in expected.values())
    return (diff / norm) ** 0.5


@pytest.mark.parametrize("name", train_parity_variants())
def test_train_step_matches_in_float64_and_float32(name, float64_enabled, request):
    if large(name):  # several GB in float64: these take turns across the workers
        request.getfixturevalue("large_memory")
    # Each model and result is dropped once it has been compared.
    torch_model, flax_model = make_twins(name, seed=1)
    height, width = SIZES.get(family(name), IMAGENET_SIZE)
    nchw, nhwc = random_images(name, BATCH, height, width, seed=7)
    num_classes = resolve(name, None, None, {})[1]
    weights = np.random.default_rng(3).standard_normal((BATCH, num_classes))

    with record_torch_relus() as pattern:
        exact = torch_step(copy.deepcopy(torch_model).double(), nchw.astype(np.float64), weights)
    # XLA's own loops run the float64 convolutions; unoptimized, a grouped net's took 6.3 s of 13 s.
    with optimized() if MODELS[name].groups > 1 else contextlib.nullcontext():
        flax64 = flax_step(as_float64(flax_model), nhwc.astype(np.float64), weights)

    # float64: the same computation, to rounding.
    assert flax64[0].dtype == np.float64
    assert relative_error(flax64[0], exact[0]) <= FLOAT64_TOLERANCE
    assert sorted(flax64[1]) == sorted(exact[1])
    for key, error in gradient_errors(flax64[1], exact[1]).items():
        assert error <= FLOAT64_TOLERANCE, f"float64 gradient of {key}: {error:.2e}"
    assert sorted(flax64[2]) == sorted(exact[2])
    for key, value in exact[2].items():
        if not key.endswith("num_batches_tracked"):
            error = relative_error(flax64[2][key], value)
            assert error <= FLOAT64_TOLERANCE, f"float64 {key}: {error:.2e}"
    del flax64

    with pinned_torch_relus(pattern):
        torch32 = torch_step(torch_model, nchw, weights.astype(np.float32))
    del torch_model
    with pinned_flax_relus(pattern):
        flax32 = flax_step(flax_model, nhwc, weights.astype(np.float32))
    for key, value in exact[2].items():
        if key.endswith("num_batches_tracked"):
            assert int(flax32[2][key]) == int(torch32[2][key]) == int(value), key

    # float32: within 1e-4, or as close to torch as float32 lets torch be to the exact step.
    checks = {
        "logits": (flax32[0], torch32[0], exact[0], relative_error),
        "running statistics": (running_statistics(flax32[2]), running_statistics(torch32[2]),
                               running_statistics(exact[2]), relative_error),
        "gradients": (flax32[1], torch32[1], exact[1], global_gradient_error),
    }
    for label, (flax_value, torch_value, exact_value, error_of) in checks.items():
        error = error_of(flax_value, torch_value)
        torch_rounding = error_of(torch_value, exact_value)
        allowed = max(TOLERANCE, NOISE_FACTOR * torch_rounding)
        assert error <= allowed, (
            f"float32 {label}: {error:.2e} (torch's own float32 error {torch_rounding:.2e})")
