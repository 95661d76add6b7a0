"""Image preprocessing on the device: resize, pad-and-random-crop, horizontal flip, normalize,
random erasing.

Pure jittable functions of a uint8 NHWC batch, following an `AugmentSpec`; the train step calls
them inside its own jit, so decoded images stay uint8 until they reach the device. The torch
trainer runs the same functions, so both frameworks see the very same pixels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from flax_resnet.core.augment import AugmentSpec
from flax_resnet.training.random_erasing import ERASING_STREAM, random_erase


def to_unit_range(images):
    """uint8 -> float32 in [0, 1], as torchvision's ToTensor."""
    return images.astype(jnp.float32) / 255.0


INTERPOLATIONS = {"bilinear": "linear", "bicubic": "cubic"}  # name -> jax.image.resize's method


def resize(images, size: int, interpolation: str = "bilinear"):
    """Bilinear (or bicubic) resize of a float NHWC batch to size x size (half-pixel centres, like
    torch's `interpolate(..., align_corners=False)`; anti-aliased when shrinking)."""
    n, _, _, c = images.shape
    return jax.image.resize(images, (n, size, size, c), method=INTERPOLATIONS[interpolation])


def center_crop(images, size: int):
    """The central size x size window (torchvision's CenterCrop: offsets rounded half to even)."""
    _, h, w, _ = images.shape
    top, left = int(round((h - size) / 2)), int(round((w - size) / 2))
    return images[:, top:top + size, left:left + size, :]


def random_crop(rng, images, padding: int):
    """Zero-pad every side by `padding`, then cut each image back to its size at a random offset."""
    n, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(rng, (n, 2), 0, 2 * padding + 1)

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

    return jax.vmap(crop)(padded, offsets)


def random_flip(rng, images):
    """Mirror each image left-right with probability 1/2."""
    flips = jax.random.bernoulli(rng, 0.5, (images.shape[0], 1, 1, 1))
    return jnp.where(flips, images[:, :, ::-1, :], images)


def normalize(images, mean, std):
    """(x - mean) / std per channel."""
    return (images - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def train_transform(rng, images, spec: AugmentSpec, dtype=jnp.float32):
    """uint8 batch -> augmented, normalized float batch in `dtype`."""
    x = to_unit_range(images)
    if spec.image_size is not None and spec.image_size != x.shape[1]:
        x = resize(x, spec.image_size, spec.interpolation)
    crop_rng, flip_rng = jax.random.split(rng)
    if spec.crop_padding:
        x = random_crop(crop_rng, x, spec.crop_padding)
    if spec.flip:
        x = random_flip(flip_rng, x)
    x = normalize(x, spec.mean, spec.std)
    if spec.random_erase:  # its own key: the crop and flip draw what they drew without it
        x = random_erase(jax.random.fold_in(rng, ERASING_STREAM), x, spec.random_erase)
    return x.astype(dtype)


def eval_transform(images, spec: AugmentSpec, dtype=jnp.float32):
    """uint8 batch -> resized, normalized float batch in `dtype` (no randomness).

    With `spec.crop_pct`, as timm and transformers evaluate: resize to floor(size / crop_pct),
    then the central size x size (size: `spec.image_size`, else the images' own).
    """
    x = to_unit_range(images)
    if spec.crop_pct is not None:
        size = spec.image_size or x.shape[1]
        x = center_crop(resize(x, int(size / spec.crop_pct), spec.interpolation), size)
    elif spec.image_size is not None and spec.image_size != x.shape[1]:
        x = resize(x, spec.image_size, spec.interpolation)
    return normalize(x, spec.mean, spec.std).astype(dtype)
