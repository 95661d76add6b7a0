"""Which images each step sees: the shuffled training batches and the fixed evaluation batches.

Plain numpy, shared by both trainers, so a Flax run and its torch twin see the same batches.

An epoch's order is a shuffle of the training set, or, with `ra_reps`, repeated augmentation
(`repeated_augmentation`: torchvision's RASampler, each image `ra_reps` times, sharded across
`world_size` processes). Either way it is a matrix of global batches: process i of n takes the
contiguous part i of each (`base.ProcessShard.part`).
"""

from __future__ import annotations

import numpy as np

from flax_resnet.core.data.repeated_augmentation import epoch_permutation, images_per_rank, rank_indices


def steps_per_epoch(count: int, batch_size: int, *, ra_reps: int | None = None, world_size: int = 1) -> int:
    """Global batches an epoch of `count` images holds, the partial last batch dropped: count //
    batch_size; with repeated augmentation, what each process's share (`images_per_rank`) fills
    with its batch_size / world_size images a step (0 when the share is empty)."""
    if ra_reps is None:
        return count // batch_size
    return images_per_rank(count, world_size) // (batch_size // world_size)


def epoch_order(seed: int, epoch: int, count: int, batch_size: int, *, ra_reps: int | None = None,
                world_size: int = 1) -> np.ndarray:
    """This epoch's global batches of indices (steps x batch); the partial last batch is dropped.

    ra_reps None: the shuffle of the `count` images by numpy's Generator seeded with (seed, epoch).
    Otherwise repeated augmentation over that same permutation: the part of each global batch that
    process r of `world_size` reads holds the next batch_size / world_size of the indices
    torchvision's RASampler deals rank r (`repeated_augmentation.rank_indices`, ra_reps copies).
    """
    order = epoch_permutation(count, seed=seed, epoch=epoch)
    steps = steps_per_epoch(count, batch_size, ra_reps=ra_reps, world_size=world_size)
    if ra_reps is None:
        return order[: steps * batch_size].reshape(steps, batch_size)
    local = batch_size // world_size
    parts = [rank_indices(order, rank=rank, world_size=world_size, num_repeats=ra_reps)[: steps * local]
             for rank in range(world_size)]
    return np.concatenate([part.reshape(steps, local) for part in parts], axis=1)


def sampler_identity(ra_reps: int | None, world_size: int) -> dict[str, int]:
    """What a resumable position records about the order beyond (seed, batch_size, train_count):
    nothing for a shuffle; the copies and the process count for repeated augmentation, whose
    order depends on both."""
    return {} if ra_reps is None else {"ra_reps": ra_reps, "world_size": world_size}


def eval_batches(images: np.ndarray, labels: np.ndarray, batch_size: int):
    """Fixed-size batches over the whole set; the last is zero-padded with mask 0."""
    for start in range(0, len(labels), batch_size):
        end = min(start + batch_size, len(labels))
        pad = batch_size - (end - start)
        yield {
            "image": np.concatenate([images[start:end], np.zeros((pad, *images.shape[1:]), images.dtype)]),
            "label": np.concatenate([labels[start:end], np.zeros((pad,), labels.dtype)]),
            "mask": np.concatenate([np.ones(end - start, np.float32), np.zeros(pad, np.float32)]),
        }
