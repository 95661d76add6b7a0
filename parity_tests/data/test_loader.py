"""The batches both trainers read: a pure function of (seed, epoch, step), resumable mid-epoch,
split over processes exactly once, the same with any worker count; undecodable images skipped."""

from __future__ import annotations

import dataclasses
import json
import pickle

import numpy as np
import pytest

from flax_resnet.core.config import TrainConfig
from flax_resnet.core.data import Dataset, ProcessShard, load_data
from flax_resnet.core.data.loader import StreamedDataset
from flax_resnet.core.data.sampling import epoch_order
from parity_tests.helpers.image_trees import write_mixed_tree

BATCH = 6


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """3 classes x 8 training images (mixed modes and sizes) and 3 x 4 held out."""
    return write_mixed_tree(tmp_path_factory.mktemp("tree"), per_class=8)


def streamed(tree, workers=0, shard=ProcessShard(), **overrides) -> StreamedDataset:
    config = TrainConfig(model="resnet18", dataset="imagefolder", data_dir=str(tree), image_size=16,
                         workers=workers, **overrides)
    data = load_data(config, shard=shard)
    assert isinstance(data, StreamedDataset)
    return data


def in_memory(count=40, test=13, shard=ProcessShard()) -> Dataset:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count + test, 4, 4, 1), dtype=np.uint8)
    labels = rng.integers(0, 3, count + test).astype(np.int32)
    return Dataset("random", "test", images[:count], labels[:count], images[count:], labels[count:], 3, shard=shard)


def collect(batches):
    """[(image, label, indices)] of every batch an iterator yields."""
    out = []
    with batches:
        for batch in batches:
            out.append((np.array(batch["image"]), np.array(batch["label"]), np.array(batches.last_indices),
                        np.array(batch["mask"]) if "mask" in batch else None))
    return out


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            assert (u is None and v is None) or np.array_equal(u, v)


@pytest.mark.parametrize("kind", ["memory", "streamed"])
def test_an_epoch_is_a_pure_function_of_seed_and_epoch(tree, kind):
    data = in_memory() if kind == "memory" else streamed(tree)
    first = collect(data.train_batches(3, seed=7, batch_size=BATCH))
    assert_same(first, collect(data.train_batches(3, seed=7, batch_size=BATCH)))
    steps = data.train_count // BATCH
    assert len(first) == steps and all(image.shape == (BATCH, *data.image_shape) for image, *_ in first)
    order = epoch_order(7, 3, data.train_count, BATCH)
    assert np.array_equal(np.stack([indices for *_, indices, _ in first]), order)  # sampling's order
    labels = data.train_labels if kind == "memory" else data.train.labels
    assert all(np.array_equal(label, labels[indices]) for _, label, indices, _ in first)
    other_epoch = collect(data.train_batches(4, seed=7, batch_size=BATCH))
    other_seed = collect(data.train_batches(3, seed=8, batch_size=BATCH))
    for other in (other_epoch, other_seed):
        assert not np.array_equal(np.stack([b[2] for b in other]), order)


@pytest.mark.parametrize("kind", ["memory", "streamed"])
def test_a_saved_position_resumes_with_exactly_the_remaining_batches(tree, kind):
    data = in_memory() if kind == "memory" else streamed(tree)
    whole = collect(data.train_batches(2, seed=1, batch_size=BATCH))
    batches = data.train_batches(2, seed=1, batch_size=BATCH)
    assert batches.state() == {"epoch": 2, "step": 0, "seed": 1, "batch_size": BATCH, "train_count": data.train_count}
    taken = [next(batches) for _ in range(2)]
    state = json.loads(json.dumps(batches.state()))  # what a checkpoint stores
    batches.close()
    assert state["step"] == 2 and len(taken) == 2
    resumed = data.resume(state)
    assert len(resumed) == len(whole) - 2 and resumed.state() == state
    rest = collect(resumed)
    assert_same(rest, whole[2:])
    assert collect(data.train_batches(2, seed=1, batch_size=BATCH, start_step=len(whole))) == []
    with pytest.raises(ValueError, match="training images"):
        in_memory(count=41).resume(state)


@pytest.mark.parametrize("kind", ["memory", "streamed"])
def test_two_processes_read_each_example_of_an_epoch_exactly_once(tree, kind):
    def data_for(index):
        shard = ProcessShard(index, 2)
        return in_memory(shard=shard) if kind == "memory" else streamed(tree, shard=shard)

    whole = collect((in_memory() if kind == "memory" else streamed(tree)).train_batches(5, seed=2, batch_size=BATCH))
    parts = [collect(data_for(i).train_batches(5, seed=2, batch_size=BATCH)) for i in range(2)]
    seen = np.concatenate([indices for part in parts for *_, indices, _ in part])
    steps = len(whole)
    assert len(seen) == len(set(seen.tolist())) == steps * BATCH  # no example twice, none missing
    for step in range(steps):  # each process holds the contiguous half of every global batch
        for key in (0, 1, 2):
            assert np.array_equal(np.concatenate([parts[0][step][key], parts[1][step][key]]), whole[step][key])

    # Evaluation: every held-out example exactly once over the processes, padding masked.
    test_count = data_for(0).test_count
    evals = [collect(data_for(i).eval_batches(BATCH)) for i in range(2)]
    indices = np.concatenate([b[2] for part in evals for b in part])
    masks = np.concatenate([b[3] for part in evals for b in part])
    assert sorted(indices[indices >= 0].tolist()) == list(range(test_count))
    assert np.array_equal(masks, (indices >= 0).astype(np.float32))
    assert all(len(b[1]) == BATCH // 2 for part in evals for b in part)


def test_the_number_of_workers_changes_nothing(tree):
    """Two worker processes give the very batches that decoding in this process gives, also as
    their streams run on into the next epoch and the next evaluation pass."""
    pooled = streamed(tree, workers=2)
    passes = [(collect(pooled.train_batches(epoch, seed=0, batch_size=BATCH)), collect(pooled.eval_batches(5)))
              for epoch in (1, 2)]
    pooled.close()
    for epoch, (train, evaluation) in zip((1, 2), passes):
        fresh = streamed(tree, workers=0)  # a new stream, started at this epoch
        assert_same(train, collect(fresh.train_batches(epoch, seed=0, batch_size=BATCH)))
        assert_same(evaluation, collect(fresh.eval_batches(5)))
    assert not np.array_equal(passes[0][0][0][0], passes[1][0][0][0])


def test_host_transforms_follow_the_config(tree):
    data = streamed(tree, crop_scale=(0.5, 0.9), eval_crop_fraction=1.0, flip=False)
    assert data.image_shape == (16, 16, 3) and data.transforms.flip is False
    assert data.transforms.crop_scale == (0.5, 0.9) and data.transforms.resize_size == 16
    gray = load_data(TrainConfig(model="mnist_resnet", dataset="imagefolder", data_dir=str(tree), image_size=12,
                                 workers=0))
    assert gray.image_shape == (12, 12, 1) and gray.transforms.flip is False  # no flips for 1-channel data
    mean, std, how = gray.normalization()
    assert len(mean) == 1 and 0 < mean[0] < 1 and "measured" in how
    assert data.normalization() == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                                    "ImageNet's mean and std (torchvision's)")
    batch = next(iter(gray.train_batches(0, seed=0, batch_size=4)))
    assert batch["image"].shape == (4, 12, 12, 1) and batch["image"].dtype == np.uint8
    assert batch["label"].dtype == np.int32


def test_an_undecodable_image_is_named_replaced_and_counted(tmp_path):
    root = write_mixed_tree(tmp_path / "tree", per_class=4)
    data = streamed(root)
    broken = next(i for i in range(data.train_count) if data.train.path(i).endswith(".png"))
    path = data.train.path(broken)
    with open(path, "r+b") as handle:  # a PNG header and garbage: PIL cannot decode it
        handle.truncate(40)
    data = streamed(root)
    with pytest.warns(UserWarning, match=f"skipping undecodable image {path}"):
        batches = data.train_batches(0, seed=0, batch_size=data.train_count)
        batch = next(batches)
    assert batches.skipped_images == 1 and batch["image"].shape[0] == data.train_count
    position = list(batches.last_indices).index(broken)
    following = (broken + 1) % data.train_count  # its replacement: the next decodable image
    assert batch["label"][position] == data.train.labels[following]
    data.close()  # its stream would go on reading the next epoch, and warn again

    broken_test = data.test.path(0)
    with open(broken_test, "wb") as handle:
        handle.write(b"not an image at all")
    evaluation = streamed(root)
    with pytest.warns(UserWarning, match=f"skipping undecodable image {broken_test}") as record:
        batches = evaluation.eval_batches(data.test_count)
        batch = next(batches)
        evaluation.close()
    assert len(record) == 1  # the other images decode without a word
    assert batches.skipped_images == 1 and batch["mask"][0] == 0 and batch["mask"][1:].all()
    assert not batch["image"][0].any() and batch["image"][1:].any()


def test_tfds_with_images_of_varying_size_is_streamed():
    import tensorflow_datasets as tfds

    config = TrainConfig(model="resnet18", dataset="imagenette", image_size=24, workers=0)
    with tfds.testing.mock_data(num_examples=14):
        data = load_data(config)
        reference = tfds.data_source("imagenette", split="train")
        labels = np.array([reference[i]["label"] for i in range(len(reference))])
        sizes = {reference[i]["image"].shape for i in range(len(reference))}
        batches = collect(data.train_batches(0, seed=0, batch_size=4))
        evaluation = collect(data.eval_batches(5))
        fixed = load_data(dataclasses.replace(config, dataset="cifar10"))
    assert isinstance(data, StreamedDataset) and data.source == "tfds" and len(sizes) > 1
    assert data.num_classes == 10 and len(data.class_names) == 10 and data.train_count == 14
    assert len(batches) == 3 and all(image.shape == (4, 24, 24, 3) for image, *_ in batches)
    assert all(np.array_equal(label, labels[indices]) for _, label, indices, _ in batches)
    assert sum(int(mask.sum()) for *_, mask in evaluation) == data.test_count
    assert isinstance(fixed, Dataset) and fixed.image_shape == (32, 32, 3)  # fixed-size: held in memory
    # Workers get the source by name and open the prepared files themselves.
    copy = pickle.loads(pickle.dumps(data.train))
    assert (copy.name, copy.split, len(copy), copy._source) == ("imagenette", "train", 14, None)


def test_an_unprepared_dataset_says_how_to_prepare_it(tmp_path):
    from flax_resnet.core.data import DataError

    for name, hint in (("imagenet2012", "ILSVRC2012_img_train.tar"), ("imagenette", "tfds build imagenette")):
        with pytest.raises(DataError, match="not prepared") as error:
            load_data(TrainConfig(model="resnet18", dataset=name, data_dir=str(tmp_path)))
        assert hint in str(error.value) and "--file_format array_record" in str(error.value)
