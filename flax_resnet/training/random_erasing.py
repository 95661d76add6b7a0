"""Random erasing on the device: torchvision's `RandomErasing`, one box per image, after normalization.

As `torchvision.transforms.v2.RandomErasing` with its defaults (Zhong et al., "Random Erasing Data
Augmentation", arXiv:1708.04896), which torchvision's reference recipe applies to each training
image after `Normalize` (`--random-erase 0.1` in its ResNet-50 V2 recipe):

- the image is erased with probability p (torchvision skips it when `torch.rand(1) >= p`);
- up to 10 attempts: an area fraction ~ U(0.02, 0.33) and a log aspect ratio ~ U(log 0.3, log 3.3);
  h = round(sqrt(area * fraction * aspect)), w = round(sqrt(area * fraction / aspect)), rounded half
  to even as Python's `round`; the first attempt with h < H and w < W gives the box;
- the box's top-left corner is uniform over the positions that keep it inside the image, and its
  pixels become 0 in every channel;
- no attempt fits: the image stays as it is.

Each image draws its own box, as in torchvision's reference, where the transform runs per sample
(v2 `RandomErasing` handed a whole batch tensor would put one box on every image).

torchvision computes h and w in float64; here they come from float32, so the two can differ only
where the square root lies within a few float32 ulps of a half-integer.

The random draws (`draw_erase_boxes`) are split from their use (`erase`), so a test can hand the
very same draws to torchvision.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

ATTEMPTS = 10
SCALE = (0.02, 0.33)  # the erased area's share of the image
RATIO = (0.3, 3.3)  # the box's height / width
ERASING_STREAM = 3  # a step's erasing key is fold_in(that step's augmentation key, 3)


class EraseBox(NamedTuple):
    """Each image's box: rows top..top+height-1, columns left..left+width-1. int32 [n], bool [n]."""

    top: jax.Array
    left: jax.Array
    height: jax.Array
    width: jax.Array
    erases: jax.Array  # False: the image is left as it is (not picked, or no attempt fitted)


class EraseDraws(NamedTuple):
    """A batch's random choices, and the boxes that follow from them."""

    coin: jax.Array  # float32 [n] ~ U[0, 1): the image is picked when coin < p
    area_fraction: jax.Array  # float32 [n, ATTEMPTS] ~ U(SCALE)
    log_aspect: jax.Array  # float32 [n, ATTEMPTS] ~ U(log RATIO)
    found: jax.Array  # bool [n]: some attempt fitted inside the image
    box: EraseBox  # (0, 0, H, W) where nothing fitted, as torchvision's get_params returns


def _unit_floats(bits):
    """uint32 words -> float32 in [0, 1) from their top 24 bits (as torch's CPU generator makes floats)."""
    return (bits >> 8).astype(jnp.float32) * (2.0 ** -24)


def _below(bits, bound):
    """uint32 words -> int32 uniform in [0, bound), bound <= 2**16: floor(bits * bound / 2**32), exact
    in 32-bit arithmetic by taking the words 16 bits at a time."""
    bound = bound.astype(jnp.uint32)
    high, low = bits >> 16, bits & 0xFFFF
    return ((high * bound + ((low * bound) >> 16)) >> 16).astype(jnp.int32)


def draw_erase_boxes(rng, count: int, image_size: tuple[int, int], probability: float,
                     scale: tuple[float, float] = SCALE, ratio: tuple[float, float] = RATIO) -> EraseDraws:
    """Draw `count` images' erasing boxes for images of `image_size` (height, width)."""
    height, width = image_size
    # One call for every word: each call of the generator costs the train step a second of compilation.
    bits = jax.random.bits(rng, (count, 1 + 2 * ATTEMPTS + 2))
    coin = _unit_floats(bits[:, 0])
    area_fraction = scale[0] + (scale[1] - scale[0]) * _unit_floats(bits[:, 1:1 + ATTEMPTS])
    # float32 bounds, as torchvision's torch.log(torch.tensor(ratio))
    log_low, log_high = (float(v) for v in np.log(np.asarray(ratio, np.float32)))
    log_aspect = log_low + (log_high - log_low) * _unit_floats(bits[:, 1 + ATTEMPTS:1 + 2 * ATTEMPTS])

    erase_area = (height * width) * area_fraction
    aspect = jnp.exp(log_aspect)
    heights = jnp.round(jnp.sqrt(erase_area * aspect)).astype(jnp.int32)  # jnp.round: half to even
    widths = jnp.round(jnp.sqrt(erase_area / aspect)).astype(jnp.int32)
    fits = (heights < height) & (widths < width)
    found = fits.any(axis=1)
    first = jnp.argmax(fits, axis=1)[:, None]
    box_height = jnp.where(found, jnp.take_along_axis(heights, first, axis=1)[:, 0], height)
    box_width = jnp.where(found, jnp.take_along_axis(widths, first, axis=1)[:, 0], width)
    top = _below(bits[:, -2], height - box_height + 1)
    left = _below(bits[:, -1], width - box_width + 1)
    box = EraseBox(top, left, box_height, box_width, (coin < probability) & found)
    return EraseDraws(coin, area_fraction, log_aspect, found, box)


def erase(images, box: EraseBox, value: float = 0.0):
    """Set each NHWC image's box to `value` in every channel, where `box.erases`."""
    _, height, width, _ = images.shape
    rows = jnp.arange(height)[None, :, None]
    columns = jnp.arange(width)[None, None, :]

    def within(index, start, size):
        return (index >= start[:, None, None]) & (index < (start + size)[:, None, None])

    inside = within(rows, box.top, box.height) & within(columns, box.left, box.width)
    inside = inside & box.erases[:, None, None]
    return jnp.where(inside[..., None], jnp.asarray(value, images.dtype), images)


def random_erase(rng, images, probability: float):
    """torchvision's RandomErasing(p=probability) on each image of a normalized NHWC batch."""
    n, height, width, _ = images.shape
    return erase(images, draw_erase_boxes(rng, n, (height, width), probability).box)
