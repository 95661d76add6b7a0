"""Residual blocks, the twins of `flax_resnet.models.blocks`; keys equal torchvision's."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from torch_ref.models.layers import AvgPool, BatchNorm, DropPath, conv


class ZeroPadShortcut(nn.Module):
    """He et al.'s CIFAR option A: subsample by the stride, zero-pad the new channels evenly."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.pad_before = (out_channels - in_channels) // 2
        self.pad_after = out_channels - in_channels - self.pad_before

    def forward(self, x):
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))


def make_shortcut(kind, in_channels, out_channels, stride, *, norm=True):
    """The shortcut branch: None (identity) when shapes already agree; see the Flax twin."""
    if kind is None or (stride == 1 and in_channels == out_channels):
        return None
    if kind == "A":
        return ZeroPadShortcut(in_channels, out_channels, stride)
    if kind == "D":
        pool = AvgPool(2, stride) if stride > 1 else nn.Identity()
        return nn.Sequential(pool, conv(in_channels, out_channels, 1, padding=0),
                             BatchNorm(out_channels))
    projection = conv(in_channels, out_channels, 1, stride=stride, padding=0)
    if not norm:
        return nn.Sequential(projection)
    return nn.Sequential(projection, BatchNorm(out_channels))


def squeeze_channels(channels: int) -> int:
    """The squeeze width of timm's SEModule (rd_ratio 1/16, rd_divisor 8): channels / 16 to the
    nearest multiple of 8, at least 8."""
    return max(8, int(channels / 16 + 4) // 8 * 8)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation as timm's `SEModule` builds it; see the Flax twin."""

    def __init__(self, channels: int):
        super().__init__()
        squeezed = squeeze_channels(channels)
        self.fc1 = conv(channels, squeezed, 1, padding=0, bias=True)
        self.fc2 = conv(squeezed, channels, 1, padding=0, bias=True)

    def forward(self, x):
        scale = x.mean((2, 3), keepdim=True)
        scale = self.fc2(F.relu(self.fc1(scale)))
        return x * torch.sigmoid(scale)


def make_attention(kind, channels):
    """The block's attention after its last BatchNorm: None, or 'se' for `SqueezeExcite`."""
    if kind is None:
        return None
    if kind == "se":
        return SqueezeExcite(channels)
    raise ValueError(f"unknown attention {kind!r}; choose None or 'se'")


def make_drop_path(drop_prob: float):
    """The block's stochastic depth on its residual branch, before the add: None at rate 0 (as timm)."""
    return DropPath(drop_prob) if drop_prob > 0.0 else None


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34 and the CIFAR nets). `shortcut=None` makes it a plain block.

    attention: None or 'se' (squeeze-excitation on the residual branch, before the add).
    """

    expansion = 1

    def __init__(self, in_channels, planes, stride=1, *, shortcut="B", groups=1, base_width=64,
                 attention=None, drop_path_rate=0.0):
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock supports only groups=1 and base_width=64")
        self.residual = shortcut is not None
        self.conv1 = conv(in_channels, planes, 3, stride=stride)
        self.bn1 = BatchNorm(planes)
        self.conv2 = conv(planes, planes, 3)
        self.bn2 = BatchNorm(planes)
        self.se = make_attention(attention, planes)
        self.drop_path = make_drop_path(drop_path_rate)
        self.downsample = make_shortcut(shortcut, in_channels, planes, stride)

    def last_bn(self):
        return self.bn2

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.se is not None:
            out = self.se(out)
        if self.drop_path is not None:
            out = self.drop_path(out)
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return F.relu(out)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1, stride on the 3x3 (ResNet v1.5); grouped and widened as torchvision.

    attention: as `BasicBlock`'s.
    """

    expansion = 4

    def __init__(self, in_channels, planes, stride=1, *, shortcut="B", groups=1, base_width=64,
                 attention=None, drop_path_rate=0.0):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        out_channels = planes * self.expansion
        self.residual = shortcut is not None
        self.conv1 = conv(in_channels, width, 1, padding=0)
        self.bn1 = BatchNorm(width)
        self.conv2 = conv(width, width, 3, stride=stride, groups=groups)
        self.bn2 = BatchNorm(width)
        self.conv3 = conv(width, out_channels, 1, padding=0)
        self.bn3 = BatchNorm(out_channels)
        self.se = make_attention(attention, out_channels)
        self.drop_path = make_drop_path(drop_path_rate)
        self.downsample = make_shortcut(shortcut, in_channels, out_channels, stride)

    def last_bn(self):
        return self.bn3

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.se is not None:
            out = self.se(out)
        if self.drop_path is not None:
            out = self.drop_path(out)
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return F.relu(out)


class PreActBasicBlock(nn.Module):
    """BN -> ReLU -> conv, twice (He et al. 2016). The projection sees the pre-activated input."""

    expansion = 1

    def __init__(self, in_channels, planes, stride=1, *, shortcut="B", groups=1, base_width=64,
                 attention=None, drop_path_rate=0.0):
        super().__init__()
        if groups != 1 or base_width != 64 or attention is not None:
            raise ValueError("PreActBasicBlock supports only groups=1, base_width=64, no attention")
        self.bn1 = BatchNorm(in_channels)
        self.conv1 = conv(in_channels, planes, 3, stride=stride)
        self.bn2 = BatchNorm(planes)
        self.conv2 = conv(planes, planes, 3)
        self.downsample = make_shortcut(shortcut, in_channels, planes, stride, norm=False)
        self.drop_path = make_drop_path(drop_path_rate)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        identity = x if self.downsample is None else self.downsample(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        if self.drop_path is not None:
            out = self.drop_path(out)
        return out + identity


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck, stride on the 3x3."""

    expansion = 4

    def __init__(self, in_channels, planes, stride=1, *, shortcut="B", groups=1, base_width=64,
                 attention=None, drop_path_rate=0.0):
        super().__init__()
        if attention is not None:
            raise ValueError("PreActBottleneck has no attention")
        width = int(planes * (base_width / 64.0)) * groups
        out_channels = planes * self.expansion
        self.bn1 = BatchNorm(in_channels)
        self.conv1 = conv(in_channels, width, 1, padding=0)
        self.bn2 = BatchNorm(width)
        self.conv2 = conv(width, width, 3, stride=stride, groups=groups)
        self.bn3 = BatchNorm(width)
        self.conv3 = conv(width, out_channels, 1, padding=0)
        self.downsample = make_shortcut(shortcut, in_channels, out_channels, stride, norm=False)
        self.drop_path = make_drop_path(drop_path_rate)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        identity = x if self.downsample is None else self.downsample(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.conv3(F.relu(self.bn3(out)))
        if self.drop_path is not None:
            out = self.drop_path(out)
        return out + identity


BLOCKS = {
    ("resnet", "basic"): BasicBlock,
    ("resnet", "bottleneck"): Bottleneck,
    ("preact", "basic"): PreActBasicBlock,
    ("preact", "bottleneck"): PreActBottleneck,
}
