"""The PyTorch reference twin of `flax_resnet`: same registry, same names, NCHW."""

from __future__ import annotations

from torch import nn

from torch_ref.blocks import BLOCKS
from torch_ref.registry import list_models, resolve
from torch_ref.resnet import ResNet
from torch_ref.seeds import D2LResNet18, MnistResNet

__all__ = ["create_model", "list_models"]


def create_model(name: str, *, num_classes: int | None = None, in_channels: int | None = None,
                 **options) -> nn.Module:
    """Build a registered variant. Input is NCHW float32. Arguments as `flax_resnet.create_model`."""
    spec, num_classes, in_channels, options = resolve(name, num_classes, in_channels, options)
    if spec.family == "d2l":
        return D2LResNet18(num_classes=num_classes, in_channels=in_channels)
    if spec.family == "mnist":
        return MnistResNet(num_classes=num_classes, in_channels=in_channels)
    stem = options.get("stem", spec.stem)
    return ResNet(
        BLOCKS[spec.family, spec.block], spec.layers, widths=spec.widths, num_classes=num_classes,
        in_channels=in_channels, stem=stem, maxpool=options.get("maxpool", stem == "imagenet"),
        stem_width=spec.stem_width, shortcut=options.get("shortcut", "B") if spec.residual else None,
        groups=spec.groups, base_width=spec.base_width, preact=spec.family == "preact",
        zero_init_residual=options.get("zero_init_residual", False),
    )
