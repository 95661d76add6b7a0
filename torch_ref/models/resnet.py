"""The generic ResNet, the twin of `flax_resnet.models.resnet`."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from torch_ref.models.layers import BatchNorm, conv, drop_path_rates, global_avg_pool, linear, max_pool


class ResNet(nn.Module):
    """torchvision's ResNet layout, generalized over block, stage count, widths and stem.

    Arguments as `flax_resnet.models.resnet.ResNet`.
    """

    def __init__(self, block, layers, *, widths=(64, 128, 256, 512), num_classes=1000,
                 in_channels=3, stem="imagenet", maxpool=True, stem_width=64,
                 deep_stem_widths=(32, 32), shortcut="B", groups=1, base_width=64, attention=None,
                 preact=False, zero_init_residual=False, drop_path_rate=0.0):
        super().__init__()
        if stem == "imagenet":
            self.conv1 = conv(in_channels, stem_width, 7, stride=2)
        elif stem == "deep":
            first, second = deep_stem_widths
            self.conv1 = nn.Sequential(
                conv(in_channels, first, 3, stride=2), BatchNorm(first), nn.ReLU(),
                conv(first, second, 3), BatchNorm(second), nn.ReLU(),
                conv(second, stem_width, 3),
            )
        else:
            self.conv1 = conv(in_channels, stem_width, 3)
        self.bn1 = None if preact else BatchNorm(stem_width)
        self.maxpool = maxpool
        channels = stem_width
        if drop_path_rate and shortcut is None:
            raise ValueError("stochastic depth drops residual branches; a plain net (shortcut=None) has none")
        block_rates = iter(drop_path_rates(drop_path_rate, sum(layers)))
        self.stage_names = tuple(f"layer{i + 1}" for i in range(len(layers)))
        for index, (name, planes, depth) in enumerate(zip(self.stage_names, widths, layers)):
            blocks = []
            for block_index in range(depth):
                stride = 2 if index > 0 and block_index == 0 else 1
                blocks.append(block(channels, planes, stride, shortcut=shortcut, groups=groups,
                                    base_width=base_width, attention=attention,
                                    drop_path_rate=next(block_rates)))
                channels = planes * block.expansion
            setattr(self, name, nn.Sequential(*blocks))
        self.final_bn = BatchNorm(channels) if preact else None
        self.fc = linear(channels, num_classes)
        if zero_init_residual:
            for name in self.stage_names:
                for block in getattr(self, name):
                    nn.init.zeros_(block.last_bn().weight)

    def stages(self, x):
        """Every stage's output, in order, ending with 'logits'."""
        out = {}
        x = self.conv1(x)
        if self.bn1 is not None:
            x = F.relu(self.bn1(x))
        if self.maxpool:
            x = max_pool(x, 3, 2, padding=1)
        out["stem"] = x
        for name in self.stage_names:
            x = getattr(self, name)(x)
            out[name] = x
        if self.final_bn is not None:
            x = F.relu(self.final_bn(x))
        out["logits"] = self.fc(global_avg_pool(x))
        return out

    def forward(self, x):
        return self.stages(x)["logits"]
