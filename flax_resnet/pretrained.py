"""Pretrained weights by name in Flax. Its twin is `torch_ref.pretrained`.

    flax_resnet.from_pretrained("torchvision:resnet50.IMAGENET1K_V2")   a Flax model holding those weights
    flax_resnet.create_model("resnet50", pretrained="IMAGENET1K_V2")    the same
    flax_resnet.pretrained_transform(name)                              the weights' eval transform (NHWC)

Each source file is converted once: the Flax checkpoint is kept under $FLAX_RESNET_CACHE/pretrained,
keyed by the file's sha256 (the catalog's prefix for URL weights, the blob's name for hub weights),
so a later call reads that checkpoint and imports no torch. Only a first call downloads and
converts, through porting (`flax_resnet.porting.named`), which reads the file with torch anyway and
so downloads URL weights with torch.hub. Every expected failure is an InputError: a PretrainedError
for a name, a download or a kept file, porting's errors for a file that does not fit.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flax_resnet.core.pretrained import Entry, PretrainedError, cache, default_catalog, hub
from flax_resnet.porting import checkpoint
from flax_resnet.porting.checkpoint import CheckpointError


def from_pretrained(name: str, *, catalog=None) -> nnx.Module:
    """The Flax model of the weights called `name`, in training mode like `create_model`'s (call
    `.eval()` to predict). Converts them the first time. Raises InputError."""
    return _load((catalog or default_catalog()).find(name))


def pretrained_model(model: str, pretrained, *, num_classes=None, in_channels=None, **options) -> nnx.Module:
    """`create_model(model, pretrained=...)`: a tag of the model's weights ('IMAGENET1K_V2'; True:
    the default ones) or a whole name. The other arguments may repeat the weights' own, not change them."""
    entry = default_catalog().for_model(model, pretrained)
    entry.check_arguments(num_classes, in_channels, options)
    return _load(entry)


def pretrained_transform(name: str):
    """The weights' eval transform: image (path, bytes, PIL image or uint8 array) -> normalized
    float32 HWC array, as the weights were evaluated (the catalog's `EvalTransform`)."""
    return default_catalog().find(name).eval_transform()


def logits(model: nnx.Module, pixels: np.ndarray) -> np.ndarray:
    """float32 logits of `model` in eval mode for NHWC float32 pixels (what `EvalTransform` makes)."""
    model.eval()
    graphdef, state = nnx.split(model)
    # One compiled forward: op-by-op dispatch would compile every layer's ops separately.
    forward = jax.jit(lambda state, images: nnx.merge(graphdef, state)(images))
    with jax.default_matmul_precision("highest"):
        return np.asarray(forward(state, jnp.asarray(pixels)))


def _load(entry: Entry) -> nnx.Module:
    source_hash = entry.sha256 if entry.hub_id is None else cache.blob_hash(hub.hub_weights(entry))
    path = cache.converted_path(entry, source_hash)
    if checkpoint.is_checkpoint(path):
        try:
            model = checkpoint.load(path)
        except CheckpointError as error:
            raise PretrainedError(path, f"{error.problem}; delete it to convert {entry.name} again") from None
        name, kwargs = checkpoint.model_recipe(model)
        if (name, kwargs["num_classes"], kwargs["in_channels"]) != (entry.model, entry.num_classes, entry.in_channels):
            raise PretrainedError(path, f"holds a {checkpoint.describe(name, kwargs)}, not {entry.name}'s "
                                        f"{entry.model}; delete it to convert {entry.name} again")
        return model
    from flax_resnet.porting.named import build_entry  # downloads and reads the source file with torch

    model, source = build_entry(entry)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # Replacing a complete checkpoint is harmless: another process converted the same file.
    checkpoint.save(model, path, source=source.record(), overwrite=True)
    return model
