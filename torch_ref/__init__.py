"""The PyTorch reference twin of `flax_resnet`: same registry, same names, NCHW. Needs no JAX."""

from __future__ import annotations

from torch_ref.models import create_model
from torch_ref.pretrained import from_pretrained, pretrained_transform
from torch_ref.registry import list_models

__all__ = ["create_model", "from_pretrained", "list_models", "pretrained_transform"]
