"""Repeated augmentation (Hoffer et al. 2020, Berman et al. 2019): each image of an epoch is shown
`num_repeats` times in a row of the dealing order, so its copies go to different processes and one
global batch holds several augmentations of it. The sampler of DeiT, torchvision's classification
references (`references/classification/sampler.py`, RASampler) and timm (RepeatAugSampler).

Plain numpy. Per epoch: a permutation of the dataset; each index repeated `num_repeats` times in
place; padded by wrapping around to a multiple of the world size; rank r takes every
world_size-th index from r; and only the first `images_per_rank` of those are used, so an epoch
holds about as many images as the dataset, not num_repeats times as many.
"""

from __future__ import annotations

import numpy as np

# torchvision's RASampler keeps floor(len(dataset) // 256 * 256 / world_size) indices per rank.
TORCHVISION_ROUND_TO = 256


class RepeatedAugmentationError(ValueError):
    """Arguments the sampler cannot serve; the message says which and why."""


def epoch_permutation(num_images: int, *, seed: int, epoch: int) -> np.ndarray:
    """This epoch's order of the dataset: a permutation from numpy's Generator seeded by (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(num_images)


def images_per_rank(num_images: int, world_size: int, round_to: int = TORCHVISION_ROUND_TO) -> int:
    """Indices each rank uses per epoch: the dataset's size rounded down to a multiple of
    `round_to`, shared among the ranks, rounded down (torchvision's RASampler with round_to=256)."""
    return num_images // round_to * round_to // world_size


def rank_order(permutation: np.ndarray, *, rank: int, world_size: int, num_repeats: int = 3) -> np.ndarray:
    """Every index rank `rank` is dealt from this permutation, before the per-epoch cut: each index
    repeated num_repeats times in place, wrapped around to a multiple of world_size, then every
    world_size-th from `rank`. ceil(len(permutation) * num_repeats / world_size) indices."""
    _check(len(permutation), rank, world_size, num_repeats)
    repeated = np.repeat(np.asarray(permutation), num_repeats)
    per_rank = -(-len(repeated) // world_size)
    return np.resize(repeated, per_rank * world_size)[rank::world_size]


def rank_indices(permutation: np.ndarray, *, rank: int, world_size: int, num_repeats: int = 3,
                 round_to: int = TORCHVISION_ROUND_TO) -> np.ndarray:
    """The indices rank `rank` reads this epoch, given the epoch's permutation: the first
    `images_per_rank` of its `rank_order`. Raises RepeatedAugmentationError when that is none:
    fewer than round_to images, or fewer than world_size."""
    _check(len(permutation), rank, world_size, num_repeats, round_to)
    count = images_per_rank(len(permutation), world_size, round_to)
    if count == 0:
        size = len(permutation)
        cure = (f"a round_to of at most {size - world_size + 1}" if size >= world_size
                else "at least as many images as ranks")
        raise RepeatedAugmentationError(
            f"repeated augmentation keeps {size} // {round_to} * {round_to} // {world_size} = 0 of {size} "
            f"images per rank, an empty epoch (as torchvision's sampler would make); it needs {cure}")
    return rank_order(permutation, rank=rank, world_size=world_size, num_repeats=num_repeats)[:count]


def repeated_augmentation_indices(num_images: int, *, epoch: int, rank: int, world_size: int, seed: int = 0,
                                  num_repeats: int = 3, round_to: int = TORCHVISION_ROUND_TO) -> np.ndarray:
    """The dataset indices rank `rank` of `world_size` reads in `epoch`, in order (int64).

    Every rank computes its own share from the same (seed, epoch), so nothing is communicated.
    num_repeats: copies of each image per epoch (torchvision's `ra_reps`, default 3). round_to:
    see `images_per_rank`; 256 as torchvision, smaller for a dataset of fewer images.
    """
    _check(num_images, rank, world_size, num_repeats, round_to)
    return rank_indices(epoch_permutation(num_images, seed=seed, epoch=epoch), rank=rank,
                        world_size=world_size, num_repeats=num_repeats, round_to=round_to)


def _check(num_images, rank, world_size, num_repeats, round_to=1) -> None:
    def is_int(value):
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

    if not is_int(num_images) or num_images < 1:
        raise RepeatedAugmentationError(f"the dataset must hold at least one image, got {num_images!r}")
    if not is_int(world_size) or world_size < 1:
        raise RepeatedAugmentationError(f"world_size must be a positive integer, got {world_size!r}")
    if not is_int(rank) or not 0 <= rank < world_size:
        raise RepeatedAugmentationError(f"rank must be one of 0 .. {world_size - 1}, got {rank!r}")
    if not is_int(num_repeats) or num_repeats < 1:
        raise RepeatedAugmentationError(f"num_repeats must be a positive integer, got {num_repeats!r}")
    if not is_int(round_to) or round_to < 1:
        raise RepeatedAugmentationError(f"round_to must be a positive integer, got {round_to!r}")
