"""Batch mixing: MixUp and CutMix on the device, as torchvision's and timm's references do them.

Two semantics (`MODES`), both one mix per batch:

- 'torchvision': `torchvision.transforms.v2.MixUp` / `CutMix`, one of them picked per batch as
  `RandomChoice([MixUp, CutMix])` in torchvision's references/classification. Each image is mixed
  with the batch rolled by one (`roll(1, 0)`); the CutMix box is 2 * floor(0.5 * sqrt(1 - lam) * size)
  on a side around a uniform centre. Targets are mixed one-hots; label smoothing belongs to the loss
  (torchvision's recipe: `CrossEntropyLoss(label_smoothing=0.1)`, `--mixup-alpha 0.2 --cutmix-alpha 1.0`).
- 'timm': `timm.data.Mixup` in its 'batch' mode. Each image is mixed with the flipped batch
  (`flip(0)`); the CutMix box is floor(sqrt(1 - lam) * size) on a side (`rand_bbox`), split
  size // 2 before the centre and the rest after it. Label smoothing is inside the mixed targets
  (`mixup_target`: off = smoothing / classes, on = 1 - smoothing + off).

In both the CutMix box is clipped to the image and lam recomputed as 1 - box area / image area.

Both references mix normalized float images: torchvision's recipe mixes in its collate function,
after `Normalize`; timm's `Mixup` mixes the normalized batch in its train loop (`--no-prefetcher`).
timm's default prefetching loader instead mixes uint8 pixels while collating (`FastCollateMixup`)
and normalizes afterwards; normalization is affine per channel, so that is the same mix, except
that it rounds blended pixels back to uint8. Here the mix follows `train_transform`, on its float
NHWC output.

The random draws (`draw_mixing`) are split from their use (`mix_batch`), so a test can hand the
very same draws to the references.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from flax_resnet.core.config import ConfigError
from flax_resnet.core.plan import MIXING_STREAM

MODES = ("torchvision", "timm")


class MixDraws(NamedTuple):
    """One batch's random choices, and what follows from them. 0-d arrays except `box`."""

    mixes: jax.Array  # bool: the batch is mixed at all
    use_cutmix: jax.Array  # bool: CutMix, else MixUp (False when the batch is not mixed)
    sample: jax.Array  # float32 ~ Beta(alpha, alpha) of the chosen one: MixUp's lam, CutMix's box size
    centre: jax.Array  # int32 [2]: (row, column) of the CutMix box's centre, uniform over the image
    box: jax.Array  # int32 [4]: (top, bottom, left, right), clipped: rows top..bottom-1, columns left..right-1
    lam: jax.Array  # float32: each image's own share of the mix (1 when the batch is not mixed)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ConfigError(f"mixing mode {mode!r} is not one of {', '.join(MODES)}")


def _reference_side(lam: np.ndarray, size: int, mode: str) -> np.ndarray:
    """The reference's own integer box extent at float64 lam: torchvision's half side
    `int(0.5 * math.sqrt(1.0 - lam) * W)`, timm's side `int(W * np.sqrt(1 - lam))`."""
    if mode == "torchvision":
        return np.floor(0.5 * np.sqrt(1.0 - lam) * size).astype(np.int64)
    return np.floor(size * np.sqrt(1.0 - lam)).astype(np.int64)


@functools.lru_cache(maxsize=None)
def _side_steps(size: int, mode: str) -> np.ndarray:
    """float32 thresholds t_1 >= t_2 >= ...: the box extent at lam is #{k : lam <= t_k}.

    The extent is a step function of lam, computed by the references in float64. Computed in
    float32 it would round differently near the steps (for a tiny lam, 1 - lam rounds to 1 in
    float32: a few percent of draws at alpha 0.2), so the steps are found here, on the host, by
    bisecting over the float32 numbers in [0, 1] with the references' own float64 formula:
    t_k is the largest float32 lam whose extent is still >= k.
    """
    steps = np.arange(1, _reference_side(np.zeros(1), size, mode)[0] + 1)
    low = np.zeros(len(steps), np.uint32)  # bit patterns: lam = 0 has every extent >= k ...
    high = np.full(len(steps), np.float32(1.0).view(np.uint32))  # ... lam = 1 none
    while np.any(high - low > 1):
        middle = (low + high) // 2
        reached = _reference_side(middle.view(np.float32).astype(np.float64), size, mode) >= steps
        low, high = np.where(reached, middle, low), np.where(reached, high, middle)
    return low.view(np.float32)


def _box_extent(lam, size: int, mode: str):
    return jnp.sum(lam <= jnp.asarray(_side_steps(size, mode))).astype(jnp.int32)


@functools.lru_cache(maxsize=None)
def _uncovered_shares(height: int, width: int) -> np.ndarray:
    """float32 [height * width + 1]: 1 - area / (height * width) for every box area, computed in
    float64 as both references do, then rounded once. (XLA turns a division by a constant, or by
    one number broadcast, into a multiplication by its reciprocal, which can round differently.)"""
    return (1.0 - np.arange(height * width + 1) / (height * width)).astype(np.float32)


def cutmix_box(lam, centre, image_size: tuple[int, int], mode: str):
    """(top, bottom, left, right) int32 of the CutMix box for Beta draw `lam` at `centre` (row,
    column), clipped to the image, as torchvision's `CutMix.make_params` or timm's `rand_bbox`."""
    _check_mode(mode)
    edges = []
    for centre_coordinate, size in zip((centre[0], centre[1]), image_size):
        extent = _box_extent(lam, size, mode)
        before, after = (extent, extent) if mode == "torchvision" else (extent // 2, (extent + 1) // 2)
        edges += [jnp.clip(centre_coordinate - before, 0, size), jnp.clip(centre_coordinate + after, 0, size)]
    return jnp.stack(edges).astype(jnp.int32)


def draw_mixing(key, image_size: tuple[int, int], *, mode: str, mixup_alpha: float, cutmix_alpha: float,
                switch_prob: float = 0.5, mix_prob: float = 1.0) -> MixDraws:
    """Draw one batch's mix for images of `image_size` (height, width).

    With probability `mix_prob` the batch is mixed (timm's `prob`; torchvision's recipe always
    mixes); then CutMix with probability `switch_prob` (timm's `switch_prob`; torchvision's
    `RandomChoice` picks uniformly, 0.5), else MixUp, each with its own Beta(alpha, alpha).
    An alpha of 0 turns that one off, as in both references.
    """
    _check_mode(mode)
    if min(mixup_alpha, cutmix_alpha) < 0 or max(mixup_alpha, cutmix_alpha) <= 0:
        raise ConfigError(f"mixup_alpha {mixup_alpha} and cutmix_alpha {cutmix_alpha}: both >= 0, one > 0")
    if not (0 <= switch_prob <= 1 and 0 <= mix_prob <= 1):
        raise ConfigError(f"switch_prob {switch_prob} and mix_prob {mix_prob} must lie in [0, 1]")
    height, width = image_size
    mix_key, switch_key, sample_key, row_key, column_key = jax.random.split(key, 5)
    if not (mixup_alpha > 0 and cutmix_alpha > 0):
        switch_prob = float(cutmix_alpha > 0)  # the one that is on, always
    mixes = jax.random.uniform(mix_key) < mix_prob
    use_cutmix = jax.random.uniform(switch_key) < switch_prob
    alpha = jnp.where(use_cutmix, cutmix_alpha, mixup_alpha)
    sample = jax.random.beta(sample_key, alpha, alpha)
    centre = jnp.stack([jax.random.randint(row_key, (), 0, height), jax.random.randint(column_key, (), 0, width)])
    box = cutmix_box(sample, centre, image_size, mode)
    box_area = (box[1] - box[0]) * (box[3] - box[2])
    cutmix_lam = jnp.asarray(_uncovered_shares(height, width))[box_area]
    lam = jnp.where(mixes, jnp.where(use_cutmix, cutmix_lam, sample), 1.0).astype(jnp.float32)
    return MixDraws(mixes, use_cutmix & mixes, sample, centre.astype(jnp.int32), box, lam)


def _partner(x, mode: str):
    """The batch each image is mixed with: rolled by one (torchvision) or reversed (timm)."""
    return jnp.roll(x, 1, axis=0) if mode == "torchvision" else x[::-1]


def mix_batch(images, labels, draws: MixDraws, mode: str, *, num_classes: int, label_smoothing: float = 0.0):
    """(mixed images, soft targets float32 [batch, classes]) from float NHWC images and int labels.

    MixUp: lam * image + (1 - lam) * partner; CutMix: the partner's pixels inside `draws.box`.
    The targets are the labels' one-hots, smoothed by `label_smoothing` (timm's `mixup_target`;
    0 for torchvision's recipe, whose loss smooths) and mixed with the partner's by the same lam.
    The images keep their dtype; the mix is computed in float32.
    """
    _check_mode(mode)
    if mode == "timm" and images.shape[0] % 2:
        raise ConfigError(f"mixing mode 'timm' needs an even batch (timm's Mixup asserts it), got {images.shape[0]}")
    x = images.astype(jnp.float32)
    partner = _partner(x, mode)
    blended = x * draws.lam + partner * (1.0 - draws.lam)
    top, bottom, left, right = draws.box
    rows = jnp.arange(x.shape[1])[:, None]
    columns = jnp.arange(x.shape[2])[None, :]
    inside = (rows >= top) & (rows < bottom) & (columns >= left) & (columns < right)
    pasted = jnp.where(inside[None, :, :, None], partner, x)
    mixed = jnp.where(draws.use_cutmix, pasted, blended).astype(images.dtype)

    off_value = label_smoothing / num_classes
    on_value = 1.0 - label_smoothing + off_value
    own = jnp.where(labels[:, None] == jnp.arange(num_classes), on_value, off_value).astype(jnp.float32)
    targets = own * draws.lam + _partner(own, mode) * (1.0 - draws.lam)
    return mixed, targets


def mix_for_step(rng, step, images, labels, spec):
    """(mixed images, soft targets [batch, classes]) for train step `step`, as `spec` (a MixSpec)
    says. Its key comes from its own stream of the run's augmentation key, folded with the step,
    so a resumed run mixes as the uninterrupted one did and the augmentation's draws stay as they were."""
    key = jax.random.fold_in(jax.random.fold_in(rng, MIXING_STREAM), step)
    draws = draw_mixing(key, images.shape[1:3], mode=spec.mode, mixup_alpha=spec.mixup_alpha,
                        cutmix_alpha=spec.cutmix_alpha)
    return mix_batch(images, labels, draws, spec.mode, num_classes=spec.num_classes,
                     label_smoothing=spec.label_smoothing)
