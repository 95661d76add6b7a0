"""The models in PyTorch, the twins of `flax_resnet.models`, file for file and class for class."""

from __future__ import annotations

from torch import nn

from flax_resnet.core.registry import resnet_arguments, resolve
from torch_ref.models.blocks import BLOCKS
from torch_ref.models.resnet import ResNet
from torch_ref.models.seeds import D2LResNet18, MnistResNet

__all__ = ["ResNet", "D2LResNet18", "MnistResNet", "create_model"]


def create_model(name: str, *, num_classes: int | None = None, in_channels: int | None = None,
                 pretrained=None, **options) -> nn.Module:
    """Build a registered variant. Input is NCHW float32. Arguments as `flax_resnet.create_model`."""
    if pretrained not in (None, False):
        from torch_ref.pretrained import pretrained_model

        return pretrained_model(name, pretrained, num_classes=num_classes, in_channels=in_channels, **options)
    spec, num_classes, in_channels, options = resolve(name, num_classes, in_channels, options)
    if spec.family == "d2l":
        return D2LResNet18(num_classes=num_classes, in_channels=in_channels)
    if spec.family == "mnist":
        return MnistResNet(num_classes=num_classes, in_channels=in_channels)
    return ResNet(BLOCKS[spec.family, spec.block], spec.layers,
                  **resnet_arguments(spec, num_classes, in_channels, options))
