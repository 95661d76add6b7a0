"""Residual blocks. Attribute names are torchvision's, so they are the checkpoint keys."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from flax_resnet.models.layers import AvgPool, BatchNorm, DropPath, conv, identity


class ZeroPadShortcut(nnx.Module):
    """He et al.'s CIFAR option A: subsample by the stride, zero-pad the new channels.

    Parameter-free. The padding is split evenly before and after the existing channels, as the
    widely used CIFAR ResNet checkpoints do.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        self.stride = stride
        self.pad_before = (out_channels - in_channels) // 2
        self.pad_after = out_channels - in_channels - self.pad_before

    def __call__(self, x):
        x = x[:, :: self.stride, :: self.stride, :]
        return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (self.pad_before, self.pad_after)))


def make_shortcut(kind, in_channels, out_channels, stride, *, rngs, norm=True):
    """The shortcut branch: None (identity) when shapes already agree.

    kind 'B' is a 1x1 projection (+ BatchNorm unless `norm` is False, as in pre-activation nets);
    kind 'D' (ResNet-D) average-pools 2x2 with the stride first, then projects with stride 1, so
    the projection sees every pixel; kind 'A' is `ZeroPadShortcut`; kind None means no shortcut
    at all (plain nets).
    """
    if kind is None or (stride == 1 and in_channels == out_channels):
        return None
    if kind == "A":
        return ZeroPadShortcut(in_channels, out_channels, stride)
    if kind == "D":
        # timm's `downsample_avg`: at stride 1 an identity keeps the conv at index 1 (its key).
        pool = AvgPool(2, stride) if stride > 1 else identity
        return nnx.Sequential(pool, conv(in_channels, out_channels, 1, padding=0, rngs=rngs),
                              BatchNorm(out_channels))
    projection = conv(in_channels, out_channels, 1, stride=stride, padding=0, rngs=rngs)
    if not norm:
        return nnx.Sequential(projection)
    return nnx.Sequential(projection, BatchNorm(out_channels))


def squeeze_channels(channels: int) -> int:
    """The squeeze width of timm's SEModule (rd_ratio 1/16, rd_divisor 8): channels / 16 to the
    nearest multiple of 8, at least 8."""
    return max(8, int(channels / 16 + 4) // 8 * 8)


class SqueezeExcite(nnx.Module):
    """Squeeze-and-excitation (Hu et al. 2018) as timm's `SEModule` builds it.

    Global average -> 1x1 conv (bias) -> ReLU -> 1x1 conv (bias) -> sigmoid, which rescales each
    channel of the input. `fc1`, `fc2` are timm's keys.
    """

    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        squeezed = squeeze_channels(channels)
        self.fc1 = conv(channels, squeezed, 1, padding=0, bias=True, rngs=rngs)
        self.fc2 = conv(squeezed, channels, 1, padding=0, bias=True, rngs=rngs)

    def __call__(self, x):
        scale = jnp.mean(x, axis=(1, 2), keepdims=True)
        scale = self.fc2(jax.nn.relu(self.fc1(scale)))
        return x * jax.nn.sigmoid(scale)


def make_attention(kind, channels, *, rngs):
    """The block's attention after its last BatchNorm: None, or 'se' for `SqueezeExcite`."""
    if kind is None:
        return None
    if kind == "se":
        return SqueezeExcite(channels, rngs=rngs)
    raise ValueError(f"unknown attention {kind!r}; choose None or 'se'")


def make_drop_path(drop_prob: float):
    """The block's stochastic depth on its residual branch, before the add: None at rate 0 (as timm)."""
    return DropPath(drop_prob) if drop_prob > 0.0 else None


class BasicBlock(nnx.Module):
    """Two 3x3 convs (ResNet-18/34 and the CIFAR nets). `shortcut=None` makes it a plain block.

    attention: None or 'se' (squeeze-excitation on the residual branch, before the add).
    """

    expansion = 1

    def __init__(self, in_channels, planes, stride=1, *, shortcut="B", groups=1, base_width=64,
                 attention=None, drop_path_rate=0.0, rngs: nnx.Rngs):
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock supports only groups=1 and base_width=64")
        self.residual = shortcut is not None
        self.conv1 = conv(in_channels, planes, 3, stride=stride, rngs=rngs)
        self.bn1 = BatchNorm(planes)
        self.conv2 = conv(planes, planes, 3, rngs=rngs)
        self.bn2 = BatchNorm(planes)
        self.se = make_attention(attention, planes, rngs=rngs)
        self.drop_path = make_drop_path(drop_path_rate)
        self.downsample = make_shortcut(shortcut, in_channels, planes, stride, rngs=rngs)

    def last_bn(self):
        return self.bn2

    def __call__(self, x, *, rngs: nnx.Rngs | None = None):
        out = jax.nn.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.se is not None:
            out = self.se(out)
        if self.drop_path is not None:
            out = self.drop_path(out, rngs=rngs)
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return jax.nn.relu(out)


class Bottleneck(nnx.Module):
    """1x1 -> 3x3 -> 1x1, stride on the 3x3 (ResNet v1.5, as torchvision).

    The 3x3 conv is `int(planes * base_width / 64) * groups` wide and grouped, which gives the wide
    ResNets and ResNeXt without another class. attention: as `BasicBlock`'s.
    """

    expansion = 4

    def __init__(self, in_channels, planes, stride=1, *, shortcut="B", groups=1, base_width=64,
                 attention=None, drop_path_rate=0.0, rngs: nnx.Rngs):
        width = int(planes * (base_width / 64.0)) * groups
        out_channels = planes * self.expansion
        self.residual = shortcut is not None
        self.conv1 = conv(in_channels, width, 1, padding=0, rngs=rngs)
        self.bn1 = BatchNorm(width)
        self.conv2 = conv(width, width, 3, stride=stride, groups=groups, rngs=rngs)
        self.bn2 = BatchNorm(width)
        self.conv3 = conv(width, out_channels, 1, padding=0, rngs=rngs)
        self.bn3 = BatchNorm(out_channels)
        self.se = make_attention(attention, out_channels, rngs=rngs)
        self.drop_path = make_drop_path(drop_path_rate)
        self.downsample = make_shortcut(shortcut, in_channels, out_channels, stride, rngs=rngs)

    def last_bn(self):
        return self.bn3

    def __call__(self, x, *, rngs: nnx.Rngs | None = None):
        out = jax.nn.relu(self.bn1(self.conv1(x)))
        out = jax.nn.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.se is not None:
            out = self.se(out)
        if self.drop_path is not None:
            out = self.drop_path(out, rngs=rngs)
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return jax.nn.relu(out)


class PreActBasicBlock(nnx.Module):
    """BN -> ReLU -> conv, twice (He et al. 2016). The projection sees the pre-activated input."""

    expansion = 1

    def __init__(self, in_channels, planes, stride=1, *, shortcut="B", groups=1, base_width=64,
                 attention=None, drop_path_rate=0.0, rngs: nnx.Rngs):
        if groups != 1 or base_width != 64 or attention is not None:
            raise ValueError("PreActBasicBlock supports only groups=1, base_width=64, no attention")
        self.bn1 = BatchNorm(in_channels)
        self.conv1 = conv(in_channels, planes, 3, stride=stride, rngs=rngs)
        self.bn2 = BatchNorm(planes)
        self.conv2 = conv(planes, planes, 3, rngs=rngs)
        self.downsample = make_shortcut(shortcut, in_channels, planes, stride, rngs=rngs, norm=False)
        self.drop_path = make_drop_path(drop_path_rate)

    def __call__(self, x, *, rngs: nnx.Rngs | None = None):
        out = jax.nn.relu(self.bn1(x))
        identity = x if self.downsample is None else self.downsample(out)
        out = self.conv1(out)
        out = self.conv2(jax.nn.relu(self.bn2(out)))
        if self.drop_path is not None:
            out = self.drop_path(out, rngs=rngs)
        return out + identity


class PreActBottleneck(nnx.Module):
    """Pre-activation bottleneck, stride on the 3x3."""

    expansion = 4

    def __init__(self, in_channels, planes, stride=1, *, shortcut="B", groups=1, base_width=64,
                 attention=None, drop_path_rate=0.0, rngs: nnx.Rngs):
        if attention is not None:
            raise ValueError("PreActBottleneck has no attention")
        width = int(planes * (base_width / 64.0)) * groups
        out_channels = planes * self.expansion
        self.bn1 = BatchNorm(in_channels)
        self.conv1 = conv(in_channels, width, 1, padding=0, rngs=rngs)
        self.bn2 = BatchNorm(width)
        self.conv2 = conv(width, width, 3, stride=stride, groups=groups, rngs=rngs)
        self.bn3 = BatchNorm(width)
        self.conv3 = conv(width, out_channels, 1, padding=0, rngs=rngs)
        self.downsample = make_shortcut(
            shortcut, in_channels, out_channels, stride, rngs=rngs, norm=False)
        self.drop_path = make_drop_path(drop_path_rate)

    def __call__(self, x, *, rngs: nnx.Rngs | None = None):
        out = jax.nn.relu(self.bn1(x))
        identity = x if self.downsample is None else self.downsample(out)
        out = self.conv1(out)
        out = self.conv2(jax.nn.relu(self.bn2(out)))
        out = self.conv3(jax.nn.relu(self.bn3(out)))
        if self.drop_path is not None:
            out = self.drop_path(out, rngs=rngs)
        return out + identity


BLOCKS = {
    ("resnet", "basic"): BasicBlock,
    ("resnet", "bottleneck"): Bottleneck,
    ("preact", "basic"): PreActBasicBlock,
    ("preact", "bottleneck"): PreActBottleneck,
}
