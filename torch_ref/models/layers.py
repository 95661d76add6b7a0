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


def drop_path_rates(drop_path_rate: float, num_blocks: int) -> list[float]:
    """Each residual block's stochastic-depth rate, rising linearly over the whole net from 0 at
    the first block to `drop_path_rate` at the last (timm's ResNet; Huang et al. 2016)."""
    return [drop_path_rate * index / max(num_blocks - 1, 1) for index in range(num_blocks)]


def draw_keep_mask(batch_size: int, keep_prob: float, like: torch.Tensor) -> torch.Tensor:
    """DropPath's random draw: for each sample, 1 (keep its branch) with probability keep_prob, else
    0, in `like`'s dtype and device, from torch's generator as timm's `drop_path` draws it.

    Looked up at each call, so the masks can be given instead of drawn (`drop_path` applies them).
    """
    return like.new_empty(batch_size).bernoulli_(keep_prob)


def drop_path(x, keep, keep_prob: float):
    """DropPath given its draw: sample i of `x` times keep[i] / keep_prob (timm's `scale_by_keep`)."""
    return x * (keep / keep_prob).view(-1, *([1] * (x.ndim - 1)))


class DropPath(nn.Module):
    """Stochastic depth per sample, as timm's DropPath; see the Flax twin. Parameter-free.

    `keep`: a mask (one value per sample) to apply at the next train-mode call instead of drawing
    one, then forgotten; the trainer gives the Flax step's draws this way
    (`torch_ref.training.step.given_keep_masks`).
    """

    def __init__(self, drop_prob: float):
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob!r}")
        self.drop_prob = drop_prob
        self.keep: torch.Tensor | None = None

    def forward(self, x):
        if not self.training or self.drop_prob == 0.0:
            return x
        keep_prob = 1.0 - self.drop_prob
        keep, self.keep = self.keep, None
        if keep is None:
            keep = draw_keep_mask(x.shape[0], keep_prob, x)
        return drop_path(x, keep.to(x.dtype), keep_prob)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"
