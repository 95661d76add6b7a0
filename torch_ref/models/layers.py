"""Conv, BatchNorm, Linear and pooling as the Flax twin builds them, in NCHW."""

from __future__ import annotations

import torch
from torch import nn


def conv(in_channels, out_channels, kernel_size, *, stride=1, padding=None, groups=1, bias=False,
         init="kaiming"):
    """An nn.Conv2d padded k // 2 on every side. `init` is 'kaiming' (torchvision) or 'torch'."""
    pad = kernel_size // 2 if padding is None else padding
    layer = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=pad,
                      groups=groups, bias=bias)
    if init == "kaiming":
        nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
    return layer


def linear(in_features, out_features):
    """nn.Linear with torch's default initialization."""
    return nn.Linear(in_features, out_features)


def BatchNorm(num_features):  # noqa: N802 - mirrors the Flax class
    """nn.BatchNorm2d with weight 1 and bias 0: eps 1e-5, momentum 0.1, unbiased running_var."""
    return nn.BatchNorm2d(num_features, eps=1e-5, momentum=0.1)


def max_pool(x, kernel_size: int, stride: int, padding: int = 0):
    """F.max_pool2d: torch pads with -inf."""
    return nn.functional.max_pool2d(x, kernel_size, stride, padding)


def global_avg_pool(x):
    """AdaptiveAvgPool2d((1, 1)) followed by flatten: (N, C, H, W) -> (N, C)."""
    return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


def AvgPool(kernel_size: int, stride: int):  # noqa: N802 - mirrors the Flax class
    """nn.AvgPool2d with ceil_mode=True and count_include_pad=False, as timm's ResNet-D shortcut."""
    return nn.AvgPool2d(kernel_size, stride, ceil_mode=True, count_include_pad=False)

