"""The variant registry, shared with `flax_resnet` (it is plain Python: one list for both)."""

from flax_resnet.core.registry import MODELS, TIMM_MODELS, TORCHVISION_MODELS, ModelSpec, list_models, resolve

__all__ = ["MODELS", "TIMM_MODELS", "TORCHVISION_MODELS", "ModelSpec", "list_models", "resolve"]
