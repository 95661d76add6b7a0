"""The study notes' own models: d2l's ResNet-18 and the small MNIST residual net.

Both keep torch's default initialization (the notes never re-initialize) and their own key names.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from flax_resnet.models.layers import BatchNorm, conv, global_avg_pool, linear, max_pool, relu


class D2LResidual(nnx.Module):
    """d2l's `Residual`: biased 3x3 convs, an optional biased 1x1 conv (`conv3`) on the shortcut."""

    def __init__(self, in_channels, out_channels, *, use_1x1conv=False, stride=1, rngs: nnx.Rngs):
        self.conv1 = conv(in_channels, out_channels, 3, stride=stride, bias=True, init="torch",
                          rngs=rngs)
        self.conv2 = conv(out_channels, out_channels, 3, bias=True, init="torch", rngs=rngs)
        self.conv3 = (conv(in_channels, out_channels, 1, stride=stride, padding=0, bias=True,
                           init="torch", rngs=rngs) if use_1x1conv else None)
        self.bn1 = BatchNorm(out_channels)
        self.bn2 = BatchNorm(out_channels)

    def __call__(self, x):
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.conv3 is not None:
            x = self.conv3(x)
        return jax.nn.relu(y + x)


def _d2l_stage(in_channels, out_channels, depth, *, first, rngs):
    blocks = []
    for index in range(depth):
        if index == 0 and not first:
            blocks.append(D2LResidual(in_channels, out_channels, use_1x1conv=True, stride=2,
                                      rngs=rngs))
        else:
            blocks.append(D2LResidual(out_channels, out_channels, rngs=rngs))
    return nnx.Sequential(*blocks)


def _adaptive_avg_pool(x):
    return jnp.mean(x, axis=(1, 2), keepdims=True)


def _flatten(x):
    return x.reshape(x.shape[0], -1)


class D2LResNet18(nnx.Sequential):
    """`nn.Sequential(b1, b2, b3, b4, b5, AdaptiveAvgPool2d, Flatten, Linear)`, index for index."""

    stage_names = ("b1", "b2", "b3", "b4", "b5")

    def __init__(self, *, num_classes=10, in_channels=1, rngs: nnx.Rngs):
        b1 = nnx.Sequential(
            conv(in_channels, 64, 7, stride=2, bias=True, init="torch", rngs=rngs),
            BatchNorm(64),
            relu,
            functools.partial(max_pool, kernel_size=3, stride=2, padding=1),
        )
        b2 = _d2l_stage(64, 64, 2, first=True, rngs=rngs)
        b3 = _d2l_stage(64, 128, 2, first=False, rngs=rngs)
        b4 = _d2l_stage(128, 256, 2, first=False, rngs=rngs)
        b5 = _d2l_stage(256, 512, 2, first=False, rngs=rngs)
        super().__init__(b1, b2, b3, b4, b5, _adaptive_avg_pool, _flatten,
                         linear(512, num_classes, rngs=rngs))

    def stages(self, x):
        """Every stage's output, in order, ending with 'logits'."""
        out = {}
        for name, layer in zip(self.stage_names, self.layers):
            x = layer(x)
            out[name] = x
        out["logits"] = self.layers[7](global_avg_pool(x))
        return out


class MnistResidualBlock(nnx.Module):
    """Two biased 3x3 convs and an identity shortcut, no BatchNorm."""

    def __init__(self, channels, *, rngs: nnx.Rngs):
        self.conv1 = conv(channels, channels, 3, bias=True, init="torch", rngs=rngs)
        self.conv2 = conv(channels, channels, 3, bias=True, init="torch", rngs=rngs)

    def __call__(self, x):
        y = jax.nn.relu(self.conv1(x))
        y = self.conv2(y)
        return jax.nn.relu(x + y)


class MnistResNet(nnx.Module):
    """5x5 conv -> pool -> residual block -> 5x5 conv -> pool -> residual block -> fc, on 28x28."""

    stage_names = ("rblock1", "rblock2")

    def __init__(self, *, num_classes=10, in_channels=1, rngs: nnx.Rngs):
        self.conv1 = conv(in_channels, 16, 5, padding=0, bias=True, init="torch", rngs=rngs)
        self.conv2 = conv(16, 32, 5, padding=0, bias=True, init="torch", rngs=rngs)
        self.rblock1 = MnistResidualBlock(16, rngs=rngs)
        self.rblock2 = MnistResidualBlock(32, rngs=rngs)
        self.fc = linear(512, num_classes, rngs=rngs)

    def stages(self, x):
        """Every stage's output, in order, ending with 'logits'."""
        out = {}
        x = self.rblock1(max_pool(jax.nn.relu(self.conv1(x)), 2, 2))
        out["rblock1"] = x
        x = self.rblock2(max_pool(jax.nn.relu(self.conv2(x)), 2, 2))
        out["rblock2"] = x
        # torch flattens NCHW channel-major: go back to that order before the fc.
        out["logits"] = self.fc(jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1))
        return out

    def __call__(self, x):
        return self.stages(x)["logits"]
