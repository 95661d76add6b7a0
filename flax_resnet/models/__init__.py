"""The models in Flax NNX: layers, residual blocks, the generic ResNet and the study notes' nets."""

from __future__ import annotations

import jax
from flax import nnx

from flax_resnet.core.registry import full_kwargs, resnet_arguments, resolve
from flax_resnet.models.blocks import BLOCKS
from flax_resnet.models.resnet import ResNet
from flax_resnet.models.seeds import D2LResNet18, MnistResNet

__all__ = ["ResNet", "D2LResNet18", "MnistResNet", "create_model", "model_skeleton"]

# What `flax_resnet.save` needs to rebuild a model: `(name, ((key, value), ...))`, a tuple of
# tuples so the attribute stays hashable graph data.
RECIPE_ATTRIBUTE = "created_with"


def create_model(name: str, *, num_classes: int | None = None, in_channels: int | None = None,
                 rngs: nnx.Rngs | None = None, pretrained=None, **options) -> nnx.Module:
    """Build a registered variant. Input is NHWC float32.

    num_classes and in_channels default to the variant's own (1000 and 3 for the ImageNet nets,
    10 classes for the CIFAR nets, 10 classes and 1 channel for the seed nets). Options:
    stem ('imagenet' | 'cifar'), maxpool, zero_init_residual, and for CIFAR nets shortcut ('A' | 'B').
    pretrained: the catalog's weights for `name`, by tag ('IMAGENET1K_V2'; True: the default ones)
    or by whole name ('hf-hub:timm/resnet50.a1_in1k'), as `flax_resnet.from_pretrained` loads them;
    then no rngs are needed. Residual nets also take drop_path_rate (stochastic depth; see `ResNet`).
    Raises ValueError naming the valid choices for an unknown name or option.
    """
    if pretrained not in (None, False):
        from flax_resnet.pretrained import pretrained_model

        return pretrained_model(name, pretrained, num_classes=num_classes, in_channels=in_channels, **options)
    if rngs is None:
        raise TypeError("create_model() needs rngs= (an nnx.Rngs), or pretrained= to load weights")
    spec, num_classes, in_channels, options = resolve(name, num_classes, in_channels, options)
    model = _build(spec, num_classes, in_channels, options, rngs)
    attach_recipe(model, name, {"num_classes": num_classes, "in_channels": in_channels, **options})
    return model


def attach_recipe(model: nnx.Module, name: str, kwargs) -> None:
    """Record on the model how to build it again, so `save(model, path)` needs no arguments."""
    setattr(model, RECIPE_ATTRIBUTE, (name, tuple(kwargs.items())))


def model_recipe(model: nnx.Module):
    """`(name, kwargs)` recorded by `attach_recipe`, or None."""
    recipe = getattr(model, RECIPE_ATTRIBUTE, None)
    return None if recipe is None else (recipe[0], dict(recipe[1]))


def _build(spec, num_classes, in_channels, options, rngs) -> nnx.Module:
    if spec.family == "d2l":
        return D2LResNet18(num_classes=num_classes, in_channels=in_channels, rngs=rngs)
    if spec.family == "mnist":
        return MnistResNet(num_classes=num_classes, in_channels=in_channels, rngs=rngs)
    return ResNet(BLOCKS[spec.family, spec.block], spec.layers,
                  **resnet_arguments(spec, num_classes, in_channels, options), rngs=rngs)


class ShapesOnlyRngs:
    """nnx.Rngs's stand-in where only shapes are wanted: every draw of every stream is one fixed key.

    nnx.Rngs counts its draws in a Variable, and under a trace each count update (a Variable
    write) made JAX walk the whole trace built so far: a skeleton's cost grew with the square of
    its depth: 3.4 s for seresnet152, 1.1 s with this.
    """

    def __getattr__(self, stream: str):
        if stream.startswith("__"):
            raise AttributeError(stream)
        return lambda: jax.random.key(0)


def model_skeleton(name: str, **kwargs) -> nnx.Module:
    """The variant with shapes only (every value a jax.ShapeDtypeStruct), nothing initialized.

    Cheap even for the big nets; fill it with `porting.load_torch_state_dict` or a checkpoint.
    """
    kwargs = full_kwargs(name, kwargs)
    skeleton = nnx.eval_shape(lambda: create_model(name, rngs=ShapesOnlyRngs(), **kwargs))
    attach_recipe(skeleton, name, kwargs)
    return skeleton
