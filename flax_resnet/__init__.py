"""The ResNet family in Flax NNX, with an exact PyTorch twin in `torch_ref`.

    flax_resnet.create_model(name, rngs=nnx.Rngs(0))   a registered variant, NHWC
    flax_resnet.list_models()                          every variant name
    flax_resnet.save(model, path) / load(path)         Flax checkpoints that know their variant
    flax_resnet.from_pretrained(name)                  pretrained weights by name (docs/pretrained.md)
    flax_resnet.pretrained_transform(name)             the eval transform those weights expect

The framework-neutral core (`flax_resnet.core`: registry, config, data, the run) imports without JAX; the
names above load Flax on first use.
"""

from __future__ import annotations

import importlib

from flax_resnet.core.registry import list_models

__all__ = ["create_model", "from_pretrained", "list_models", "load", "pretrained_transform", "save"]

# name -> the module that defines it, imported when the name is first used.
_LAZY = {
    "create_model": "flax_resnet.models",
    "save": "flax_resnet.porting.checkpoint",
    "load": "flax_resnet.porting.checkpoint",
    "from_pretrained": "flax_resnet.pretrained",
    "pretrained_transform": "flax_resnet.pretrained",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'flax_resnet' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY])
