"""Repeated augmentation's indices, against timm's RepeatAugSampler (DeiT's sampler, which
torchvision's references/classification/sampler.py RASampler also is), given the same permutation:
timm's `torch.randperm` call is replaced by one returning ours.

timm's `selected_round` / `selected_ratio` reproduce torchvision's per-rank count,
floor(len // 256 * 256 / world_size), for a dataset of at least `selected_round` images; with
`selected_round=0` and a tiny ratio, timm keeps every index a rank is dealt, before the cut.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from timm.data.distributed_sampler import RepeatAugSampler

from flax_resnet.core.data.repeated_augmentation import (
    TORCHVISION_ROUND_TO,
    RepeatedAugmentationError,
    epoch_permutation,
    images_per_rank,
    rank_indices,
    rank_order,
    repeated_augmentation_indices,
)

SIZES = (1, 5, 37, 255, 256, 257, 600, 1000)
WORLD_SIZES = (1, 2, 3)
REPEATS = (1, 2, 3)


def timm_indices(permutation, monkeypatch, *, rank, world_size, num_repeats, selected_round, selected_ratio=0):
    """What timm's sampler yields for this epoch when its torch.randperm returns `permutation`."""
    calls = []

    def randperm(n, generator=None):
        calls.append(n)
        return torch.from_numpy(np.asarray(permutation, np.int64))

    monkeypatch.setattr(torch, "randperm", randperm)
    sampler = RepeatAugSampler(range(len(permutation)), num_replicas=world_size, rank=rank, shuffle=True,
                               num_repeats=num_repeats, selected_round=selected_round, selected_ratio=selected_ratio)
    indices = list(sampler)
    assert calls == [len(permutation)] and len(indices) == len(sampler)
    return indices


def test_every_rank_is_dealt_what_timm_deals_it(monkeypatch):
    """Before the per-epoch cut, for every size (tiny ones wrap around more than once), world size,
    rank and repeat count: the same indices in the same order."""
    for size in SIZES:
        permutation = np.random.default_rng(size).permutation(size)
        for world_size in WORLD_SIZES:
            for num_repeats in REPEATS:
                for rank in range(world_size):
                    ours = rank_order(permutation, rank=rank, world_size=world_size, num_repeats=num_repeats)
                    theirs = timm_indices(permutation, monkeypatch, rank=rank, world_size=world_size,
                                          num_repeats=num_repeats, selected_round=0, selected_ratio=1e-9)
                    assert len(ours) == math.ceil(size * num_repeats / world_size)
                    assert ours.tolist() == theirs, (size, world_size, num_repeats, rank)


@pytest.mark.parametrize("round_to", [TORCHVISION_ROUND_TO, 8, 1])
def test_each_epochs_indices_and_counts_are_timms(round_to, monkeypatch):
    """After the cut: the same indices as timm with selected_round=round_to (torchvision's count at
    256), for every size of at least round_to images; every rank gets the same number."""
    tested = 0
    for size in (s for s in SIZES if s >= round_to):
        permutation = np.random.default_rng(size + 1).permutation(size)
        for world_size in (w for w in WORLD_SIZES if w <= size):
            counts = set()
            for rank in range(world_size):
                ours = rank_indices(permutation, rank=rank, world_size=world_size, num_repeats=3, round_to=round_to)
                theirs = timm_indices(permutation, monkeypatch, rank=rank, world_size=world_size, num_repeats=3,
                                      selected_round=round_to)
                assert ours.tolist() == theirs, (size, world_size, rank)
                counts.add(len(ours))
                tested += 1
            assert counts == {images_per_rank(size, world_size, round_to)}
    assert tested >= 9


@pytest.mark.parametrize(("world_size", "num_repeats"), [(1, 3), (2, 2), (3, 3), (3, 2), (2, 3)])
def test_across_ranks_each_image_is_seen_about_num_repeats_times(world_size, num_repeats):
    """An epoch over 1000 images: the ranks together read world_size * per-rank count images,
    num_repeats copies of each chosen image (the last one chosen may be cut short), and when there
    are at least as many ranks as copies, every copy on another rank."""
    size = 1000
    per_rank = [repeated_augmentation_indices(size, epoch=4, rank=rank, world_size=world_size, seed=7,
                                              num_repeats=num_repeats) for rank in range(world_size)]
    assert {len(indices) for indices in per_rank} == {size // 256 * 256 // world_size}
    copies = Counter(int(i) for indices in per_rank for i in indices)
    total = sum(copies.values())
    assert total == world_size * len(per_rank[0])
    assert len(copies) == math.ceil(total / num_repeats)
    assert sorted(copies.values())[1:] == [num_repeats] * (len(copies) - 1)
    assert min(copies.values()) >= 1
    if num_repeats <= world_size:
        for image in copies:
            ranks = [rank for rank, indices in enumerate(per_rank) if image in indices]
            assert len(ranks) == copies[image], image


def test_the_epoch_permutation_is_seeded_by_seed_and_epoch():
    """A permutation of the dataset from numpy's Generator, the same for the same (seed, epoch),
    another for another epoch or seed; the indices of an epoch are `rank_indices` of it."""
    first = epoch_permutation(600, seed=3, epoch=0)
    assert sorted(first.tolist()) == list(range(600))
    assert np.array_equal(first, epoch_permutation(600, seed=3, epoch=0))
    assert not np.array_equal(first, epoch_permutation(600, seed=3, epoch=1))
    assert not np.array_equal(first, epoch_permutation(600, seed=4, epoch=0))
    assert np.array_equal(repeated_augmentation_indices(600, epoch=0, rank=1, world_size=2, seed=3),
                          rank_indices(first, rank=1, world_size=2))


def test_bad_arguments_get_one_line_errors():
    cases = {
        "fewer than 256 images": (dict(num_images=37, rank=0, world_size=1), "round_to of at most 37"),
        "fewer images than ranks": (dict(num_images=2, rank=0, world_size=3, round_to=1),
                                    "at least as many images as ranks"),
        "a rank out of range": (dict(num_images=600, rank=2, world_size=2), "rank must be one of 0 .. 1"),
        "no ranks": (dict(num_images=600, rank=0, world_size=0), "world_size must be a positive integer"),
        "fractional repeats": (dict(num_images=600, rank=0, world_size=1, num_repeats=1.5),
                               "num_repeats must be a positive integer"),
        "round_to 0": (dict(num_images=600, rank=0, world_size=1, round_to=0), "round_to must be a positive"),
        "no images": (dict(num_images=0, rank=0, world_size=1), "at least one image"),
    }
    for label, (kwargs, message) in cases.items():
        with pytest.raises(RepeatedAugmentationError, match=message) as raised:
            repeated_augmentation_indices(kwargs.pop("num_images"), epoch=0, **kwargs)
        assert isinstance(raised.value, ValueError) and "\n" not in str(raised.value), label


def test_the_module_imports_neither_jax_nor_torch():
    code = ("import sys, flax_resnet.core.data.repeated_augmentation; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'jax', 'jaxlib', 'flax', 'torch'}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.stdout.strip() == "[]"
