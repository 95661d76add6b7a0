"""Conv, BatchNorm, Linear and pooling with PyTorch's numerics, in NHWC."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from flax_resnet.models import xla_cpu

# torchvision: kaiming_normal_(mode='fan_out', nonlinearity='relu'), a plain (untruncated) normal.
kaiming_normal_fan_out = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# torch's default for Conv2d and Linear weights: kaiming_uniform_(a=sqrt(5)) == U(+-1/sqrt(fan_in)).
torch_default_kernel = jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _torch_default_bias(fan_in: int):
    bound = 1.0 / fan_in**0.5 if fan_in > 0 else 0.0

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
    """`jax.lax.conv_general_dilated`; on CPU a plain NHWC convolution runs as `xla_cpu.conv`."""
    plain = (lhs_dilation in (None, (1, 1)) and rhs_dilation in (None, (1, 1)) and precision is None
             and all(v is None for v in kwargs.values())
             and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
             == lax.conv_dimension_numbers(lhs.shape, rhs.shape, xla_cpu.NHWC))
    if plain and xla_cpu.enabled():
        return xla_cpu.conv(lhs, rhs, window_strides, padding, feature_group_count)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, precision=precision, **kwargs)


def conv(in_channels, out_channels, kernel_size, *, rngs, stride=1, padding=None, groups=1,
         bias=False, init="kaiming"):
    """A Conv2d twin. `padding` defaults to k // 2 on every side, as torch's ResNets pad.

    XLA's 'SAME' would put the odd pixel of a strided conv on the bottom/right only, so the padding
    is always explicit and symmetric. `init` is 'kaiming' (torchvision) or 'torch' (nn.Conv2d's default).
    """
    pad = kernel_size // 2 if padding is None else padding
    fan_in = in_channels // groups * kernel_size * kernel_size
    kernel_init = kaiming_normal_fan_out if init == "kaiming" else torch_default_kernel
    return nnx.Conv(
        in_channels, out_channels, (kernel_size, kernel_size), strides=stride,
        padding=((pad, pad), (pad, pad)), feature_group_count=groups, use_bias=bias,
        kernel_init=kernel_init, bias_init=_torch_default_bias(fan_in),
        conv_general_dilated=conv_general_dilated, rngs=rngs,
    )


def linear(in_features, out_features, *, rngs):
    """An nn.Linear twin with torch's default initialization."""
    return nnx.Linear(
        in_features, out_features, kernel_init=torch_default_kernel,
        bias_init=_torch_default_bias(in_features), rngs=rngs,
    )


def _affine(x, multiplier, shift):
    """x * multiplier + shift per channel, computed in at least float32 and rounded once."""
    x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    return (x32 * multiplier + shift).astype(x.dtype)


class BatchNorm(nnx.Module):
    """BatchNorm2d as torch computes it, over every axis but the last.

    Training normalizes with the biased batch variance and moves the running variance toward the
    *unbiased* one, as torch does (stock Flax uses the biased one, so running statistics drift apart).
    `momentum` is torch's: running = (1 - momentum) * running + momentum * batch.
    Statistics and the normalization are computed in at least float32 whatever the input dtype;
    a bf16 output is rounded once.
    """

    def __init__(self, num_features: int, *, momentum: float = 0.1, epsilon: float = 1e-5,
                 use_running_average: bool = False):
        self.num_features = num_features
        self.momentum = momentum
        self.epsilon = epsilon
        self.use_running_average = use_running_average
        self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
        self.num_batches_tracked = nnx.BatchStat(jnp.zeros((), jnp.int32))

    def __call__(self, x):
        if self.use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            axes = tuple(range(x.ndim - 1))
            x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
            mean = jnp.mean(x32, axes)
            # Mean of squared deviations, not E[x^2] - E[x]^2: no cancellation.
            var = jnp.mean(jnp.square(x32 - mean), axes)
            count = x.size // x.shape[-1]
            unbiased_var = var * (count / max(count - 1, 1))
            m = self.momentum
            # set_value, not `[...] =`: an indexed set compares the value's sharding, and on a
            # tracer that builds an error message by scanning the whole trace so far, which made
            # tracing a deep net's train step quadratic in its depth.
            self.mean.set_value((1 - m) * self.mean[...] + m * mean)
            self.var.set_value((1 - m) * self.var[...] + m * unbiased_var)
            self.num_batches_tracked.set_value(self.num_batches_tracked[...] + 1)
        inv = lax.rsqrt(var + self.epsilon) * self.scale[...]
        return _affine(x, inv, self.bias[...] - mean * inv)


def max_pool(x, kernel_size: int, stride: int, padding: int = 0):
    """MaxPool2d: the padding is -inf, so it never wins (zero padding would, before a ReLU)."""
    if xla_cpu.enabled():
        return xla_cpu.max_pool(x, kernel_size, stride, padding)
    pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    # A Python -inf (not an array) lets JAX see a max-pool and use its gradient rule; an array
    # init value makes it a generic reduce_window, which jit(grad(...)) cannot differentiate.
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, kernel_size, kernel_size, 1), (1, stride, stride, 1), pad)


def relu(x):
    """nn.ReLU as a layer of an nnx.Sequential (the d2l net, the deep stem); looks jax.nn.relu up
    at each call, as the parity tests' ReLU pinning needs."""
    return jax.nn.relu(x)


def global_avg_pool(x):
    """AdaptiveAvgPool2d((1, 1)) followed by flatten: (N, H, W, C) -> (N, C)."""
    return jnp.mean(x, axis=(1, 2))


def _ceil_mode_size(size: int, kernel_size: int, stride: int) -> int:
    """torch's pooled size with ceil_mode=True and no padding: a last window that starts inside
    the input counts even when it hangs over the edge."""
    out = -(-(size - kernel_size) // stride) + 1
    return out - 1 if (out - 1) * stride >= size else out


def avg_pool(x, kernel_size: int, stride: int):
    """AvgPool2d(kernel_size, stride, ceil_mode=True, count_include_pad=False) over NHWC.

    At an odd size the last window hangs over the bottom/right edge; it averages only the pixels
    inside the input (torch divides by their count), so a 2x2/2 pool maps 7 rows to 4, the last
    row of the output being the input's last row.
    """
    height, width = x.shape[1:3]
    out_h = _ceil_mode_size(height, kernel_size, stride)
    out_w = _ceil_mode_size(width, kernel_size, stride)
    span_h, span_w = stride * (out_h - 1) + kernel_size, stride * (out_w - 1) + kernel_size
    padded = jnp.pad(x, ((0, 0), (0, span_h - height), (0, span_w - width), (0, 0)))
    total = None
    for i in range(kernel_size):
        for j in range(kernel_size):
            window = padded[:, i:i + stride * (out_h - 1) + 1:stride, j:j + stride * (out_w - 1) + 1:stride, :]
            total = window if total is None else total + window
    rows = np.minimum(np.arange(out_h) * stride + kernel_size, height) - np.arange(out_h) * stride
    cols = np.minimum(np.arange(out_w) * stride + kernel_size, width) - np.arange(out_w) * stride
    counts = np.outer(rows, cols)[None, :, :, None]
    return total / jnp.asarray(counts, total.dtype)


class AvgPool(nnx.Module):
    """nn.AvgPool2d(kernel_size, stride, ceil_mode=True, count_include_pad=False): see `avg_pool`."""

    def __init__(self, kernel_size: int, stride: int):
        self.kernel_size = kernel_size
        self.stride = stride

    def __call__(self, x):
        return avg_pool(x, self.kernel_size, self.stride)


def identity(x):
    """nn.Identity: a placeholder that keeps a Sequential's indices (and so its keys) as torch's."""
    return x


def drop_path_rates(drop_path_rate: float, num_blocks: int) -> list[float]:
    """Each residual block's stochastic-depth rate, rising linearly over the whole net from 0 at
    the first block to `drop_path_rate` at the last (timm's ResNet; Huang et al. 2016)."""
    return [drop_path_rate * index / max(num_blocks - 1, 1) for index in range(num_blocks)]


class DropPathError(ValueError):
    """A DropPath in train mode was called without the random streams to draw from."""


def draw_keep_mask(key, batch_size: int, keep_prob: float) -> jax.Array:
    """DropPath's random draw: for each sample, True (keep its branch) with probability keep_prob.

    Looked up at each call, so the masks can be given instead of drawn (`drop_path` applies them).
    """
    return jax.random.bernoulli(key, keep_prob, (batch_size,))


def drop_path(x, keep, keep_prob: float):
    """DropPath given its draw: sample i of `x` times keep[i] / keep_prob, so its expectation is
    `x` (timm's `scale_by_keep=True`)."""
    scale = keep.astype(x.dtype) / jnp.asarray(keep_prob, x.dtype)
    return x * scale.reshape((-1,) + (1,) * (x.ndim - 1))


class DropPath(nnx.Module):
    """Stochastic depth per sample, as timm's DropPath: in train mode each sample's residual
    branch is zeroed with probability `drop_prob`, else scaled by 1 / (1 - drop_prob); in eval mode
    it is the identity. Parameter-free.

    The masks come from the `rngs` given at call time: one key of its `rng_collection` stream
    ('dropout'; nnx.Rngs falls back to 'default') per call. `deterministic` is what
    `model.train()` / `model.eval()` set, as for nnx.Dropout.
    """

    def __init__(self, drop_prob: float, *, rng_collection: str = "dropout", deterministic: bool = False):
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob!r}")
        self.drop_prob = drop_prob
        self.rng_collection = rng_collection
        self.deterministic = deterministic

    def __call__(self, x, *, rngs: nnx.Rngs | None = None):
        if self.deterministic or self.drop_prob == 0.0:
            return x
        if rngs is None:
            raise DropPathError(f"stochastic depth in train mode draws from a {self.rng_collection!r} stream: "
                                f"call model(x, rngs=nnx.Rngs({self.rng_collection}=key)), or model.eval() first")
        keep_prob = 1.0 - self.drop_prob
        keep = draw_keep_mask(rngs[self.rng_collection](), x.shape[0], keep_prob)
        return drop_path(x, keep, keep_prob)
