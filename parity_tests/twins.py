"""Building a Flax model and its torch twin with the same weights, and comparing them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

import flax_resnet
import torch_ref
from flax_resnet.porting.state_dict import load_torch_state_dict
from flax_resnet.registry import MODELS


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


def make_twins(name: str, seed: int = 0, **kwargs):
    """torch_ref model with random weights and BN statistics, and a Flax model ported from it."""
    torch.manual_seed(seed)
    torch_model = torch_ref.create_model(name, **kwargs)
    randomize_batchnorm(torch_model, seed)
    # Shapes only: initializing the Flax weights would be wasted, the port overwrites them all.
    flax_model = nnx.eval_shape(lambda: flax_resnet.create_model(name, rngs=nnx.Rngs(seed), **kwargs))
    load_torch_state_dict(flax_model, torch_model.state_dict())
    return torch_model, flax_model


def as_float64(flax_model: nnx.Module) -> nnx.Module:
    """A copy of the model with every floating-point value in float64 (jax_enable_x64 must be on)."""
    graphdef, state = nnx.split(flax_model)
    state = jax.tree.map(lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, state)
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
    """An even and an odd input size fit for the variant."""
    return {
        "mnist": [(28, 28)],
        "cifar": [(32, 32), (33, 33)],
        "d2l": [(96, 96), (97, 123)],
    }.get(family(name), [(64, 96), (97, 123)])
