"""Building a Flax model and its torch twin with the same weights, and comparing them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

import torch_ref
from flax_resnet.core.registry import MODELS
from flax_resnet.models import model_skeleton
from flax_resnet.porting.state_dict import load_torch_state_dict


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm random affine parameters and running statistics.

    Fresh BatchNorm (mean 0, var 1, weight 1, bias 0) would hide a mapping bug.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.2)
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.2)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=generator)))


def calibrate_batchnorm(model: torch.nn.Module, images: np.ndarray, seed: int = 0) -> None:
    """Running statistics of the scale the activations have, still random: the statistics one
    train-mode pass over `images` meets, each channel's mean moved by 0.05 of its std and its
    variance scaled by U(0.9, 1.1). With statistics of another scale a deep net's eval-mode
    activations grow layer by layer: seresnet152's layer3 reached 2e5 with U(0.5, 1.5) and 0.2,
    where torch's own float64 forward changed by 37 % for an input scaled by 1 + 1e-15. A
    comparison there measures chaos, not the port; with these spreads that change is 5e-13."""
    norms = [module for module in model.modules() if isinstance(module, torch.nn.BatchNorm2d)]
    if not norms:
        return
    saved = [(module.momentum, module.num_batches_tracked.clone()) for module in norms]
    training = model.training
    for module in norms:
        module.reset_running_stats()
        module.momentum = None  # a cumulative average: after one batch, that batch's statistics
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(images))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module, (momentum, tracked) in zip(norms, saved):
            n = module.num_features
            module.momentum = momentum
            module.num_batches_tracked.copy_(tracked)
            module.running_mean.add_(0.05 * module.running_var.sqrt() * torch.randn(n, generator=generator))
            module.running_var.mul_(0.9 + 0.2 * torch.rand(n, generator=generator))
    model.train(training)


CALIBRATION_SIZES = {"cifar": 32, "mnist": 28, "d2l": 28}  # others: 64, an ImageNet net's 2x2 last stage


def make_twins(name: str, seed: int = 0, **kwargs):
    """torch_ref model with random weights and BN statistics, and a Flax model ported from it."""
    torch.manual_seed(seed)
    torch_model = torch_ref.create_model(name, **kwargs)
    randomize_batchnorm(torch_model, seed)  # random affine parameters
    size = CALIBRATION_SIZES.get(family(name), 64)
    calibrate_batchnorm(torch_model, random_images(name, 4, size, size, seed + 100, **kwargs)[0], seed)
    # Shapes only: initializing the Flax weights would be wasted, the port overwrites them all.
    flax_model = model_skeleton(name, **kwargs)
    load_torch_state_dict(flax_model, torch_model.state_dict())
    return torch_model, flax_model


def as_float64(flax_model: nnx.Module) -> nnx.Module:
    """A copy of the model with every floating-point value in float64 (jax_enable_x64 must be on)."""
    graphdef, state = nnx.split(flax_model)
    # Through numpy: jnp's astype and asarray would compile a program for every parameter shape.
    state = jax.tree.map(lambda a: jax.device_put(np.asarray(a, np.float64)) if jnp.issubdtype(a.dtype, jnp.floating)
                         else a, state)
    return nnx.merge(graphdef, state)


def input_channels(name: str, **kwargs) -> int:
    return kwargs.get("in_channels") or MODELS[name].in_channels


def random_images(name: str, batch: int, height: int, width: int, seed: int = 0, **kwargs):
    """(NCHW float32 numpy, the same images NHWC)."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, input_channels(name, **kwargs), height, width))
    images = images.astype(np.float32)
    return images, np.ascontiguousarray(images.transpose(0, 2, 3, 1))


def to_nhwc(array: np.ndarray) -> np.ndarray:
    return array.transpose(0, 2, 3, 1) if array.ndim == 4 else array


def relative_error(actual, expected, floor: float = 0.0) -> float:
    """max|actual - expected| / max(max|expected|, floor)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = max(float(np.abs(expected).max()), floor)
    return float(np.abs(actual - expected).max() / (scale if scale > 0 else 1.0))


def gradient_errors(actual: dict, expected: dict) -> dict[str, float]:
    """Each gradient's relative error.

    A gradient more than 1000x smaller than the largest one is judged against 1/1000 of the
    largest: some are zero in exact arithmetic (a conv bias before a train-mode BatchNorm), and
    rounding noise relative to zero means nothing.
    """
    largest = max(float(np.abs(g).max()) for g in expected.values())
    return {k: relative_error(actual[k], g, floor=1e-3 * largest) for k, g in expected.items()}


def family(name: str) -> str:
    spec = MODELS[name]
    if spec.family == "resnet" and spec.stem == "cifar":
        return "cifar"
    return spec.family


def input_sizes(name: str) -> list[tuple[int, int]]:
    """An even and an odd input size fit for the variant. Through an ImageNet stem and four stages
    65x33 is odd at every stride (33x17, 17x9, 9x5, 5x3, 3x2), where an asymmetric padding would
    shift the sampling grid; 64x48 halves evenly, and neither is square. They are small because
    torch's float64 forwards compute at their size (13 s over all variants, 22 s at 64x96, 97x123)."""
    return {
        "mnist": [(28, 28)],
        "cifar": [(32, 32), (33, 33)],
        "d2l": [(96, 96), (65, 33)],
    }.get(family(name), [(64, 48), (65, 33)])
