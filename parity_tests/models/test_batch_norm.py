"""BatchNorm's output in float32 and bfloat16 against a float64 evaluation on the same inputs.

The normalization runs in float32 and a bfloat16 output is rounded once, so its error is one
bfloat16 rounding; multiplying and shifting in bfloat16, as before, cost up to four times that
when a channel's mean is large against its spread.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from flax_resnet.models.layers import BatchNorm
from parity_tests.helpers.twins import relative_error

EPSILON = 1e-5


def problem(shape, seed):
    rng = np.random.default_rng(seed)
    channels = shape[-1]
    # An offset and a spread per channel: a conv output is rarely centred.
    x = rng.standard_normal(shape) * rng.uniform(0.2, 3.0, channels) + rng.uniform(-4.0, 4.0, channels)
    return x, rng.uniform(0.5, 1.5, channels), rng.standard_normal(channels) * 0.2


@pytest.mark.parametrize("shape", [(4, 6, 6, 5), (3, 7, 5, 3), (33, 4)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype,bound", [(jnp.float32, 1e-6), (jnp.bfloat16, 2.0**-8)])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_batch_norm_rounds_once(shape, dtype, bound, train):
    x, scale, bias = problem(shape, seed=shape[0] * 10 + shape[-1])
    layer = BatchNorm(shape[-1], use_running_average=not train)
    layer.scale[...], layer.bias[...] = jnp.asarray(scale, jnp.float32), jnp.asarray(bias, jnp.float32)
    layer.mean[...] = jnp.asarray(x.reshape(-1, shape[-1]).mean(0) + 0.1, jnp.float32)
    layer.var[...] = jnp.asarray(x.reshape(-1, shape[-1]).var(0) * 1.2, jnp.float32)
    x_low = jnp.asarray(x, dtype)
    exact_x = np.asarray(x_low, np.float64).reshape(-1, shape[-1])
    if train:
        mean, var = exact_x.mean(0), exact_x.var(0)
    else:
        mean, var = np.asarray(layer.mean[...], np.float64), np.asarray(layer.var[...], np.float64)
    exact = (exact_x - mean) / np.sqrt(var + EPSILON) * np.asarray(layer.scale[...], np.float64) + np.asarray(
        layer.bias[...], np.float64)
    y = layer(x_low)
    assert y.dtype == dtype and y.shape == shape
    assert relative_error(np.asarray(y, np.float64).reshape(-1, shape[-1]), exact) <= bound
