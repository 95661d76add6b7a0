"""The repeated-augmentation order in the data both trainers read: each process's batches are what
timm's RepeatAugSampler (torchvision's RASampler) deals its rank, given the same permutation, in
memory and streamed; copies of an image are augmented apart; a mid-epoch position resumes it and
refuses another process count."""

from __future__ import annotations

import numpy as np
import pytest

from flax_resnet.core.config import TrainConfig
from flax_resnet.core.data import DataError, Dataset, ProcessShard, load_data
from flax_resnet.core.data.loader import StreamedDataset
from flax_resnet.core.data.repeated_augmentation import epoch_permutation
from flax_resnet.core.data.sampling import epoch_order, steps_per_epoch
from parity_tests.helpers.image_trees import write_digit_tree
from parity_tests.recipes.test_repeated_augmentation import timm_indices

SEED, EPOCH = 5, 3


def in_memory(count: int, *, shard=ProcessShard(), ra_reps=2) -> Dataset:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count + 4, 3, 3, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, count + 4).astype(np.int32)
    return Dataset("random", "test", images[:count], labels[:count], images[count:], labels[count:], 10, shard=shard,
                   ra_reps=ra_reps)


def read(batches) -> list[np.ndarray]:
    """The dataset indices of every batch an iterator yields."""
    indices = []
    with batches:
        for _ in batches:
            indices.append(np.array(batches.last_indices))
    return indices


@pytest.mark.parametrize("count, batch_size, world_size, ra_reps", [
    (256, 8, 1, 3), (300, 12, 2, 2), (700, 9, 3, 3), (513, 16, 4, 4),
])
def test_each_process_reads_its_ranks_share_of_timms_sampler(count, batch_size, world_size, ra_reps, monkeypatch):
    """Process r of n, batch after batch, reads the indices timm's RepeatAugSampler (torchvision's
    count: selected_round 256) yields on rank r of n for this epoch's permutation, up to the
    partial last batch; the global batches hold every process's part."""
    permutation = epoch_permutation(count, seed=SEED, epoch=EPOCH)
    local = batch_size // world_size
    steps = steps_per_epoch(count, batch_size, ra_reps=ra_reps, world_size=world_size)
    order = epoch_order(SEED, EPOCH, count, batch_size, ra_reps=ra_reps, world_size=world_size)
    assert order.shape == (steps, batch_size) and steps >= 1
    for rank in range(world_size):
        theirs = timm_indices(permutation, monkeypatch, rank=rank, world_size=world_size, num_repeats=ra_reps,
                              selected_round=256)
        assert len(theirs) - steps * local < local  # only the partial last batch is left out
        data = in_memory(count, shard=ProcessShard(rank, world_size), ra_reps=ra_reps)
        ours = read(data.train_batches(EPOCH, seed=SEED, batch_size=batch_size))
        assert np.concatenate(ours).tolist() == theirs[: steps * local], rank
        assert all(np.array_equal(got, row[ProcessShard(rank, world_size).part(batch_size)])
                   for got, row in zip(ours, order))


def test_without_the_sampler_the_order_is_the_plain_shuffle():
    """The same permutation, cut into batches: repeated augmentation only adds the copies."""
    plain = epoch_order(SEED, EPOCH, 300, 12)
    assert np.array_equal(plain.ravel(), epoch_permutation(300, seed=SEED, epoch=EPOCH)[:300])
    repeated = epoch_order(SEED, EPOCH, 300, 12, ra_reps=3)
    assert np.array_equal(repeated.ravel(), np.repeat(plain.ravel(), 3)[:256 // 12 * 12])


def test_a_mid_epoch_position_resumes_the_order_and_refuses_another_process_count():
    data = in_memory(300, shard=ProcessShard(1, 2))
    whole = read(data.train_batches(EPOCH, seed=SEED, batch_size=12))
    batches = data.train_batches(EPOCH, seed=SEED, batch_size=12)
    with batches:
        for _ in range(4):
            next(batches)
        state = batches.state()
    assert state == {"epoch": EPOCH, "step": 4, "seed": SEED, "batch_size": 12, "train_count": 300, "ra_reps": 2,
                     "world_size": 2}
    rest = read(data.resume(state))
    assert len(rest) == len(whole) - 4 and all(np.array_equal(a, b) for a, b in zip(rest, whole[4:]))
    with pytest.raises(DataError, match=r"ordered by repeated augmentation x2 over 2 process\(es\), and this run "
                                        r"orders it by repeated augmentation x2 over 4 process\(es\)"):
        in_memory(300, shard=ProcessShard(1, 4)).check_position(state)
    with pytest.raises(DataError, match="and this run orders it by a plain shuffle"):
        in_memory(300, ra_reps=None).check_position(state)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """26 real digits per class to train on (260, just over the sampler's 256), one to evaluate."""
    return write_digit_tree(tmp_path_factory.mktemp("digits"), train_per_class=26, val_per_class=1)


def test_streamed_batches_follow_the_same_order_and_augment_each_copy_apart(digits):
    """An ImageFolder run with --ra-sampler reads the in-memory order's indices; the two copies
    of an image in a batch get their own random crops; a resumed stream gives the same pixels."""
    config = TrainConfig(model="resnet20", dataset="imagefolder", data_dir=str(digits), image_size=12, workers=0,
                         ra_sampler=True, ra_reps=2)
    data = load_data(config)
    assert isinstance(data, StreamedDataset) and data.steps_per_epoch(16) == 256 // 16
    order = epoch_order(config.seed, 0, data.train_count, 16, ra_reps=2)
    batches = data.train_batches(0, seed=config.seed, batch_size=16)
    with batches:
        first = next(batches)
        assert np.array_equal(batches.last_indices, order[0])
        second = next(batches)
        state = batches.state()
        third = next(batches)
    # ra_reps 2: places 2k and 2k + 1 hold one image, each copy cropped and flipped by its own draw
    pairs = first["image"].reshape(8, 2, -1)
    assert all(order[0][2 * k] == order[0][2 * k + 1] for k in range(8))
    assert sum(not np.array_equal(a, b) for a, b in pairs) >= 7
    assert not np.array_equal(first["image"], second["image"])
    with data.resume(state) as resumed:
        again = next(resumed)
    assert np.array_equal(again["image"], third["image"]) and np.array_equal(resumed.last_indices, order[2])
    data.close()
