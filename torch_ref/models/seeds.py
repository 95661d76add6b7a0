"""The study notes' own models, the twins of `flax_resnet.models.seeds`, with the notes' key names."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from torch_ref.models.layers import BatchNorm, conv, global_avg_pool, linear, max_pool


class D2LResidual(nn.Module):
    """d2l's `Residual`: biased 3x3 convs, an optional biased 1x1 conv (`conv3`) on the shortcut."""

    def __init__(self, in_channels, out_channels, *, use_1x1conv=False, stride=1):
        super().__init__()
        self.conv1 = conv(in_channels, out_channels, 3, stride=stride, bias=True, init="torch")
        self.conv2 = conv(out_channels, out_channels, 3, bias=True, init="torch")
        self.conv3 = (conv(in_channels, out_channels, 1, stride=stride, padding=0, bias=True,
                           init="torch") if use_1x1conv else None)
        self.bn1 = BatchNorm(out_channels)
        self.bn2 = BatchNorm(out_channels)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.conv3 is not None:
            x = self.conv3(x)
        return F.relu(y + x)


def _d2l_stage(in_channels, out_channels, depth, *, first):
    blocks = []
    for index in range(depth):
        if index == 0 and not first:
            blocks.append(D2LResidual(in_channels, out_channels, use_1x1conv=True, stride=2))
        else:
            blocks.append(D2LResidual(out_channels, out_channels))
    return nn.Sequential(*blocks)


class D2LResNet18(nn.Sequential):
    """`nn.Sequential(b1, b2, b3, b4, b5, AdaptiveAvgPool2d, Flatten, Linear)`, index for index."""

    stage_names = ("b1", "b2", "b3", "b4", "b5")

    def __init__(self, *, num_classes=10, in_channels=1):
        b1 = nn.Sequential(
            conv(in_channels, 64, 7, stride=2, bias=True, init="torch"),
            BatchNorm(64),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        b2 = _d2l_stage(64, 64, 2, first=True)
        b3 = _d2l_stage(64, 128, 2, first=False)
        b4 = _d2l_stage(128, 256, 2, first=False)
        b5 = _d2l_stage(256, 512, 2, first=False)
        super().__init__(b1, b2, b3, b4, b5, nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(),
                         linear(512, num_classes))

    def stages(self, x):
        """Every stage's output, in order, ending with 'logits'."""
        out = {}
        for name, layer in zip(self.stage_names, self):
            x = layer(x)
            out[name] = x
        out["logits"] = self[7](global_avg_pool(x))
        return out


class MnistResidualBlock(nn.Module):
    """Two biased 3x3 convs and an identity shortcut, no BatchNorm."""

    def __init__(self, channels):
        super().__init__()
        self.conv1 = conv(channels, channels, 3, bias=True, init="torch")
        self.conv2 = conv(channels, channels, 3, bias=True, init="torch")

    def forward(self, x):
        y = F.relu(self.conv1(x))
        y = self.conv2(y)
        return F.relu(x + y)


class MnistResNet(nn.Module):
    """5x5 conv -> pool -> residual block -> 5x5 conv -> pool -> residual block -> fc, on 28x28."""

    stage_names = ("rblock1", "rblock2")

    def __init__(self, *, num_classes=10, in_channels=1):
        super().__init__()
        self.conv1 = conv(in_channels, 16, 5, padding=0, bias=True, init="torch")
        self.conv2 = conv(16, 32, 5, padding=0, bias=True, init="torch")
        self.rblock1 = MnistResidualBlock(16)
        self.rblock2 = MnistResidualBlock(32)
        self.fc = linear(512, num_classes)

    def stages(self, x):
        """Every stage's output, in order, ending with 'logits'."""
        out = {}
        x = self.rblock1(max_pool(F.relu(self.conv1(x)), 2, 2))
        out["rblock1"] = x
        x = self.rblock2(max_pool(F.relu(self.conv2(x)), 2, 2))
        out["rblock2"] = x
        out["logits"] = self.fc(torch.flatten(x, 1))
        return out

    def forward(self, x):
        return self.stages(x)["logits"]
