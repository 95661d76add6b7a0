"""The generic ResNet: stem, stages of blocks, global pooling, classifier."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from flax_resnet.models.layers import BatchNorm, conv, drop_path_rates, global_avg_pool, linear, max_pool, relu


class ResNet(nnx.Module):
    """torchvision's ResNet layout, generalized over block, stage count, widths and stem.

    block: a class from `flax_resnet.models.blocks`; layers: blocks per stage; widths: each stage's planes.
    stem: 'imagenet' (7x7/2 conv), 'cifar' (3x3/1 conv) or 'deep' (3x3/2, 3x3, 3x3 convs of widths
    `deep_stem_widths` and `stem_width`, BatchNorm + ReLU between; timm's `conv1.0` ... `conv1.6`);
    maxpool: 3x3/2 max-pool after the stem.
    shortcut: 'B' (1x1 projection), 'D' (average-pool, then 1x1 projection), 'A' (zero-pad) or
    None (plain net, no shortcuts). attention: None or 'se' in every block.
    preact: pre-activation layout: the stem has no BatchNorm/ReLU, and a final BN + ReLU precede
    the pooling.
    drop_path_rate: stochastic depth, as timm's ResNet: block i of n drops its residual branch with
    probability drop_path_rate * i / (n - 1) in train mode (`layers.DropPath`), drawn from the
    'dropout' stream of the `rngs` given to the call. 0: no DropPath at all.
    """

    def __init__(self, block, layers, *, widths=(64, 128, 256, 512), num_classes=1000,
                 in_channels=3, stem="imagenet", maxpool=True, stem_width=64,
                 deep_stem_widths=(32, 32), shortcut="B", groups=1, base_width=64, attention=None,
                 preact=False, zero_init_residual=False, drop_path_rate=0.0, rngs: nnx.Rngs):
        if stem == "imagenet":
            self.conv1 = conv(in_channels, stem_width, 7, stride=2, rngs=rngs)
        elif stem == "deep":
            first, second = deep_stem_widths
            self.conv1 = nnx.Sequential(
                conv(in_channels, first, 3, stride=2, rngs=rngs), BatchNorm(first), relu,
                conv(first, second, 3, rngs=rngs), BatchNorm(second), relu,
                conv(second, stem_width, 3, rngs=rngs),
            )
        else:
            self.conv1 = conv(in_channels, stem_width, 3, rngs=rngs)
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
                                    drop_path_rate=next(block_rates), rngs=rngs))
                channels = planes * block.expansion
            setattr(self, name, nnx.Sequential(*blocks))
        self.final_bn = BatchNorm(channels) if preact else None
        self.fc = linear(channels, num_classes, rngs=rngs)
        if zero_init_residual:
            for name in self.stage_names:
                for block in getattr(self, name).layers:
                    block.last_bn().scale[...] = jnp.zeros_like(block.last_bn().scale[...])

    def stages(self, x, *, rngs: nnx.Rngs | None = None):
        """Every stage's output, in order, ending with 'logits'."""
        out = {}
        x = self.conv1(x)
        if self.bn1 is not None:
            x = jax.nn.relu(self.bn1(x))
        if self.maxpool:
            x = max_pool(x, 3, 2, padding=1)
        out["stem"] = x
        for name in self.stage_names:
            x = getattr(self, name)(x, rngs=rngs)
            out[name] = x
        if self.final_bn is not None:
            x = jax.nn.relu(self.final_bn(x))
        out["logits"] = self.fc(global_avg_pool(x))
        return out

    def __call__(self, x, *, rngs: nnx.Rngs | None = None):
        return self.stages(x, rngs=rngs)["logits"]
