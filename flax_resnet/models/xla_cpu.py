"""Convolution and max-pool written the way XLA:CPU runs them fast; the same results up to rounding.

Three things cost a ResNet train step on XLA:CPU more than the arithmetic (BENCHMARKS.md has the
profiles and figures):

- XLA copies cheap element-wise producers (BatchNorm, ReLU, the residual add) into each consumer.
  One consumer of a conv input is the transpose its weight gradient needs; there the copied chain
  runs at transposed strides. `unfusable_identity` stores the input once instead.
- The input gradient of a strided convolution is a convolution over the output gradient with
  zeros between its pixels: for stride 2, three quarters of the products are with zeros.
  `conv` computes it phase by phase, one small dense convolution per output phase.
- The gradient of `lax.reduce_window(max)` tracks argmax indices with four int32 iotas the size
  of the padded input. `max_pool` takes the maximum over shifted slices and routes each gradient
  to the first maximum of its window in row-major order, as torch does.
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
from jax import lax

NHWC = ("NHWC", "HWIO", "NHWC")

# XLA:CPU hands convolutions, matrix products and reductions to YNNPACK by default. Its kernels for
# a convolution's weight gradient (a window as large as the feature map) ran 2-3x slower than XLA's
# own, so convolutions stay with XLA; YNNPACK keeps the matrix products and the reductions, which
# XLA's own emitter ran about 1.5x slower (BatchNorm's statistics).
COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE",
}

_enabled = True


def enabled() -> bool:
    """Whether layers use the formulations below: on the CPU backend, unless `disabled()`."""
    return _enabled and jax.default_backend() == "cpu"


def compiler_options(tuned: bool = True) -> dict[str, str] | None:
    """The XLA options the train and eval steps compile with: `COMPILER_OPTIONS` on CPU, else none."""
    return dict(COMPILER_OPTIONS) if tuned and jax.default_backend() == "cpu" else None


@contextlib.contextmanager
def disabled():
    """Trace with plain `lax` convolutions and max-pool, e.g. to benchmark against them."""
    global _enabled
    previous, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = previous


def unfusable_identity(x, like):
    """`x / 1`, bit for bit `x`, with the 1 made at run time from `like` so XLA cannot fold it.

    XLA counts a division as expensive and will not duplicate it into consumers, so the result is
    stored once and every consumer (the next convolution, the transpose for the weight gradient)
    reads it.
    """
    one = lax.stop_gradient(jnp.sign(jnp.abs(like.reshape(-1)[0]) + 1)).astype(x.dtype)
    return x / one


def _plain_conv(x, kernel, strides, padding, groups):
    return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=NHWC,
                                    feature_group_count=groups)


def _phase_input_grad(g, kernel, x_shape, strides, padding):
    """The input gradient of a strided convolution, one dense stride-1 convolution per phase.

    Padded input pixel `s*q + r` (phase r) receives `sum_t g[q - t] * kernel[r + s*t]`: a full
    correlation of `g` with the flipped sub-kernel `kernel[r::s]`.
    """
    _, height, width, in_channels = x_shape
    (stride_h, stride_w), ((top, bottom), (left, right)) = strides, padding
    padded_h, padded_w = height + top + bottom, width + left + right
    rows_h, rows_w = -(-padded_h // stride_h), -(-padded_w // stride_w)  # phase 0 is the longest
    out_h, out_w = g.shape[1:3]
    phases = []
    for r_h in range(stride_h):
        row = []
        for r_w in range(stride_w):
            sub = kernel[r_h::stride_h, r_w::stride_w]
            taps_h, taps_w = sub.shape[:2]
            if taps_h == 0 or taps_w == 0:
                row.append(jnp.zeros((g.shape[0], rows_h, rows_w, in_channels), g.dtype))
                continue
            flipped = jnp.swapaxes(sub[::-1, ::-1], 2, 3)  # (taps_h, taps_w, out, in)
            pad = ((taps_h - 1, rows_h - out_h), (taps_w - 1, rows_w - out_w))
            row.append(_plain_conv(g, flipped, (1, 1), pad, 1))
        phases.append(jnp.stack(row, axis=3))  # (N, rows_h, rows_w, stride_w, C)
    interleaved = jnp.stack(phases, axis=2)  # (N, rows_h, stride_h, rows_w, stride_w, C)
    full = interleaved.reshape(g.shape[0], rows_h * stride_h, rows_w * stride_w, in_channels)
    return full[:, top:top + height, left:left + width, :]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _strided_conv(x, kernel, strides, padding, groups):
    return _plain_conv(x, kernel, strides, padding, groups)


def _strided_conv_fwd(x, kernel, strides, padding, groups):
    return _plain_conv(x, kernel, strides, padding, groups), (x, kernel)


def _strided_conv_bwd(strides, padding, groups, residuals, g):
    x, kernel = residuals
    _, kernel_vjp = jax.vjp(lambda k: _plain_conv(x, k, strides, padding, groups), kernel)
    return _phase_input_grad(g, kernel, x.shape, strides, padding), kernel_vjp(g)[0]


_strided_conv.defvjp(_strided_conv_fwd, _strided_conv_bwd)


def conv(x, kernel, strides, padding, groups=1):
    """An NHWC/HWIO convolution with explicit padding; strided ones take the phase-wise gradient."""
    strides = tuple(int(s) for s in strides)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    x = unfusable_identity(x, kernel)
    if strides == (1, 1) or groups != 1:
        return _plain_conv(x, kernel, strides, padding, groups)
    return _strided_conv(x, kernel, strides, padding, groups)


def _windows(x_padded, kernel_size, stride, out_h, out_w):
    span_h, span_w = stride * (out_h - 1) + 1, stride * (out_w - 1) + 1
    return [x_padded[:, i:i + span_h:stride, j:j + span_w:stride, :]
            for i in range(kernel_size) for j in range(kernel_size)]


def _pool_geometry(x, kernel_size, stride, padding):
    pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    x_padded = jnp.pad(x, pad, constant_values=-jnp.inf)
    out_h = (x_padded.shape[1] - kernel_size) // stride + 1
    out_w = (x_padded.shape[2] - kernel_size) // stride + 1
    return x_padded, out_h, out_w


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x, kernel_size: int, stride: int, padding: int):
    """MaxPool2d over NHWC, padding with -inf; the gradient goes to the first maximum of a window."""
    x_padded, out_h, out_w = _pool_geometry(x, kernel_size, stride, padding)
    return functools.reduce(jnp.maximum, _windows(x_padded, kernel_size, stride, out_h, out_w))


def _max_pool_fwd(x, kernel_size, stride, padding):
    out = max_pool(x, kernel_size, stride, padding)
    return out, (x, out)


def _max_pool_bwd(kernel_size, stride, padding, residuals, g):
    x, out = residuals
    x_padded, out_h, out_w = _pool_geometry(x, kernel_size, stride, padding)
    grad_padded = jnp.zeros_like(x_padded)
    taken = jnp.zeros(out.shape, bool)
    zero = jnp.zeros((), g.dtype)
    for index, window in enumerate(_windows(x_padded, kernel_size, stride, out_h, out_w)):
        i, j = divmod(index, kernel_size)
        hit = (window == out) & ~taken
        taken = taken | hit
        after_h = x_padded.shape[1] - i - stride * (out_h - 1) - 1
        after_w = x_padded.shape[2] - j - stride * (out_w - 1) - 1
        spread = ((0, 0, 0), (i, after_h, stride - 1), (j, after_w, stride - 1), (0, 0, 0))
        grad_padded = grad_padded + lax.pad(jnp.where(hit, g, zero), zero, spread)
    height, width = x.shape[1:3]
    return (grad_padded[:, padding:padding + height, padding:padding + width, :],)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
