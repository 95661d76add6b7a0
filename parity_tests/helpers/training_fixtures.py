"""Shared by the training tests: tiny torchvision-format folders (written the way torchvision stores
them), a tiny run's settings, and a history comparison."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from flax_resnet.core.config import TrainConfig

TIMING = ("images_per_sec", "seconds")  # the only metrics that differ between identical runs


def write_idx(path, array: np.ndarray, compress=False) -> None:
    header = (0x800 + array.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.write_bytes(raw)


def make_mnist_folder(root, class_folder="MNIST", train=48, test=16, seed=0, compress=False):
    """root/<class_folder>/raw/ with the four idx files; returns the arrays written (NHWC)."""
    rng = np.random.default_rng(seed)
    raw = root / class_folder / "raw"
    raw.mkdir(parents=True)
    arrays = {}
    for prefix, count in (("train", train), ("t10k", test)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, count).astype(np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images, compress)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, compress)
        arrays[prefix] = (images[..., None], labels.astype(np.int32))
    return arrays


def make_cifar_folder(root, classes=10, per_file=8, seed=0):
    """root/cifar-10-batches-py or root/cifar-100-python as torchvision stores them (rows are CHW)."""
    rng = np.random.default_rng(seed)
    folder = root / ("cifar-10-batches-py" if classes == 10 else "cifar-100-python")
    folder.mkdir(parents=True)
    files = ([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]) if classes == 10 else ["train", "test"]
    label_key = "labels" if classes == 10 else "fine_labels"
    arrays = {}
    for name in files:
        images = rng.integers(0, 256, (per_file, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, classes, per_file).tolist()
        rows = images.transpose(0, 3, 1, 2).reshape(per_file, -1)
        with open(folder / name, "wb") as handle:
            pickle.dump({"data": rows, label_key: labels, "batch_label": "x"}, handle, protocol=2)
        arrays[name] = (images, np.array(labels, np.int32))
    return arrays




def tiny(mnist_dir, workdir, **overrides) -> TrainConfig:
    """mnist_resnet on the 64 images of `mnist_dir`, batch 16: four steps an epoch."""
    settings = dict(model="mnist_resnet", dataset="mnist", data_dir=str(mnist_dir), batch_size=16, epochs=3,
                    lr=0.02, crop_padding=2, workdir=str(workdir), progress=False, eval_batch_size=16)
    return TrainConfig(**{**settings, **overrides})


def assert_same_history(actual, expected, rtol=1e-6):
    """Every metric of every epoch equal (within rtol), timings aside."""
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected):
        assert got.keys() == want.keys()
        for key in want:
            if key not in TIMING:
                assert got[key] == pytest.approx(want[key], rel=rtol, abs=1e-7), (got["epoch"], key)


def exported_weights(workdir) -> dict[str, np.ndarray]:
    """A run folder's model.safetensors."""
    return load_file(Path(workdir) / "model.safetensors")


def read_events(workdir) -> list:
    """Every TensorBoard Event in a run folder's event files, file by file in the order written."""
    from tensorboardX.proto.event_pb2 import Event

    events = []
    for path in sorted(Path(workdir).glob("events.out.tfevents.*")):
        data, offset = path.read_bytes(), 0
        while offset + 12 <= len(data):  # records: length, its CRC, the bytes, their CRC
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            events.append(Event.FromString(data[offset + 12:offset + 12 + length]))
            offset += 12 + length + 4
    return events


def scalars(events, tag: str) -> dict[int, float]:
    """{step: value} of one tag (a later write of a step wins, as TensorBoard shows it)."""
    return {event.step: value.simple_value for event in events for value in event.summary.value if value.tag == tag}
