"""The ResNet family in Flax NNX, with an exact PyTorch twin in `torch_ref`."""

from __future__ import annotations

from flax import nnx

from flax_resnet.blocks import BLOCKS
from flax_resnet.registry import list_models, resolve
from flax_resnet.resnet import ResNet
from flax_resnet.seeds import D2LResNet18, MnistResNet
from flax_resnet.checkpoint import attach_recipe, load, save

__all__ = ["create_model", "list_models", "load", "save"]


def create_model(name: str, *, num_classes: int | None = None, in_channels: int | None = None,
                 rngs: nnx.Rngs, **options) -> nnx.Module:
    """Build a registered variant. Input is NHWC float32.

    num_classes and in_channels default to the variant's own (1000 and 3 for the ImageNet nets,
    10 classes for the CIFAR nets, 10 classes and 1 channel for the seed nets). Options:
    stem ('imagenet' | 'cifar'), maxpool, zero_init_residual, and for CIFAR nets shortcut ('A' | 'B').
    Raises ValueError naming the valid choices for an unknown name or option.
    """
    spec, num_classes, in_channels, options = resolve(name, num_classes, in_channels, options)
    model = _build(spec, num_classes, in_channels, options, rngs)
    # What `save` needs to rebuild it: the name and every argument, defaults filled in.
    attach_recipe(model, name, {"num_classes": num_classes, "in_channels": in_channels, **options})
    return model


def _build(spec, num_classes, in_channels, options, rngs) -> nnx.Module:
    if spec.family == "d2l":
        return D2LResNet18(num_classes=num_classes, in_channels=in_channels, rngs=rngs)
    if spec.family == "mnist":
        return MnistResNet(num_classes=num_classes, in_channels=in_channels, rngs=rngs)
    stem = options.get("stem", spec.stem)
    return ResNet(
        BLOCKS[spec.family, spec.block], spec.layers, widths=spec.widths, num_classes=num_classes,
        in_channels=in_channels, stem=stem, maxpool=options.get("maxpool", stem == "imagenet"),
        stem_width=spec.stem_width, shortcut=options.get("shortcut", "B") if spec.residual else None,
        groups=spec.groups, base_width=spec.base_width, preact=spec.family == "preact",
        zero_init_residual=options.get("zero_init_residual", False), rngs=rngs,
    )
