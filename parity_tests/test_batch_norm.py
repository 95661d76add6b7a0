"""`batch_norm_train`'s closed-form gradient against autodiff through the plain formula.

Values and every gradient (x, scale, bias, and cotangents arriving through the returned mean and
variance), even and odd sizes, float32 and bfloat16. Each low-precision result is judged against
a float64 evaluation of the plain formula on the same (rounded) inputs: the closed form may not be
further from it than autodiff's own result in that precision, with a floor of a few ulps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_resnet.models.layers import batch_norm_train
from parity_tests.twins import relative_error

EPSILON = 1e-5


def plain_batch_norm(x, scale, bias):
    """The textbook formula; JAX differentiates it through both reductions."""
    axes = tuple(range(x.ndim - 1))
    x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mean = jnp.mean(x32, axes)
    var = jnp.mean(jnp.square(x32 - mean), axes)
    y = (x32 - mean) * jax.lax.rsqrt(var + EPSILON) * scale + bias
    return y.astype(x.dtype), mean, var


def closed_form(x, scale, bias):
    return batch_norm_train(x, scale, bias, EPSILON)


def values_and_grads(fn, x, scale, bias, weights):
    """fn's outputs, and the gradient of a loss that reads y, the mean and the variance."""
    g_y, g_mean, g_var = weights

    def loss(x, scale, bias):
        y, mean, var = fn(x, scale, bias)
        return (jnp.sum(y.astype(g_y.dtype) * g_y) + jnp.sum(mean * g_mean) + jnp.sum(var * g_var))

    outputs = fn(x, scale, bias)
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(x, scale, bias)
    return [np.asarray(v, np.float64) for v in (*outputs, *grads)]


def problem(shape, seed):
    rng = np.random.default_rng(seed)
    channels = shape[-1]
    # An offset and a spread per channel: a conv output is rarely centred.
    x = rng.standard_normal(shape) * rng.uniform(0.5, 3.0, channels) + rng.uniform(-2.0, 2.0, channels)
    scale = rng.uniform(0.5, 1.5, channels)
    bias = rng.standard_normal(channels) * 0.2
    weights = (rng.standard_normal(shape), rng.standard_normal(channels), rng.standard_normal(channels))
    return x, scale, bias, weights


NAMES = ("y", "mean", "var", "dx", "dscale", "dbias")
SHAPES = [(4, 6, 6, 5), (3, 7, 5, 3), (33, 4)]  # NHWC even and odd, and (N, C)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype,floor", [(jnp.float32, 1e-6), (jnp.bfloat16, 2.0**-8)])
def test_closed_form_matches_autodiff(shape, dtype, floor):
    x, scale, bias, weights = problem(shape, seed=len(shape) * 100 + shape[0])
    # The low-precision inputs, and the same numbers in float64 for the reference.
    x_low = jnp.asarray(x, dtype)
    weights_low = (jnp.asarray(weights[0], dtype), *(jnp.asarray(w, jnp.float32) for w in weights[1:]))
    params_low = [jnp.asarray(p, jnp.float32) for p in (scale, bias)]
    with jax.enable_x64(True):
        exact = values_and_grads(plain_batch_norm, jnp.asarray(np.asarray(x_low, np.float64)),
                                 *[jnp.asarray(np.asarray(p, np.float64)) for p in params_low],
                                 tuple(jnp.asarray(np.asarray(w, np.float64)) for w in weights_low))
    ours = values_and_grads(closed_form, x_low, *params_low, weights_low)
    autodiff = values_and_grads(plain_batch_norm, x_low, *params_low, weights_low)
    for name, mine, theirs, reference in zip(NAMES, ours, autodiff, exact):
        assert mine.shape == reference.shape, name
        our_error, autodiff_error = relative_error(mine, reference), relative_error(theirs, reference)
        assert our_error <= max(2 * autodiff_error, floor), (name, our_error, autodiff_error)


def test_gradient_of_a_constant_shift_vanishes():
    """Adding a per-channel constant to x changes nothing after BatchNorm: the sum of dx over each
    channel is zero, and the closed form keeps it so to rounding where autodiff may not."""
    x, scale, bias, weights = problem((16, 8, 8, 4), seed=7)
    x = jnp.asarray(x + 1e3, jnp.float32)  # a large common offset, as after a biased conv
    g = jnp.asarray(weights[0], jnp.float32)
    _, vjp = jax.vjp(lambda v: closed_form(v, jnp.asarray(scale, jnp.float32), jnp.asarray(bias, jnp.float32))[0], x)
    dx = np.asarray(vjp(g)[0], np.float64)
    per_channel = np.abs(dx.sum(axis=(0, 1, 2))) / np.abs(dx).sum(axis=(0, 1, 2))
    assert per_channel.max() <= 1e-5


def test_batch_norm_module_uses_the_closed_form_and_keeps_torch_statistics():
    """The BatchNorm layer's train-mode output and gradients are those of `batch_norm_train`, and its
    running variance moves toward the unbiased batch variance."""
    from flax import nnx

    from flax_resnet.models.layers import BatchNorm

    x, scale, bias, weights = problem((5, 3, 3, 4), seed=3)
    layer = BatchNorm(4)
    layer.scale[...] = jnp.asarray(scale, jnp.float32)
    layer.bias[...] = jnp.asarray(bias, jnp.float32)
    x = jnp.asarray(x, jnp.float32)
    graphdef, params, rest = nnx.split(layer, nnx.Param, ...)

    def loss(params):
        module = nnx.merge(graphdef, params, rest, copy=True)
        return jnp.sum(module(x) * weights[0])

    grads = jax.grad(loss)(params)
    _, vjp = jax.vjp(lambda s, b: closed_form(x, s, b)[0], params["scale"][...], params["bias"][...])
    expected_scale, expected_bias = vjp(jnp.asarray(weights[0], jnp.float32))
    assert relative_error(grads["scale"][...], expected_scale) <= 1e-6
    assert relative_error(grads["bias"][...], expected_bias) <= 1e-6
    layer(x)
    count = x.size // 4
    unbiased = np.asarray(x, np.float64).reshape(-1, 4).var(axis=0) * count / (count - 1)
    assert relative_error(layer.var[...], 0.9 + 0.1 * unbiased) <= 1e-6
