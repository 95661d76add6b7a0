"""torchvision's ImageFolder layout: `DIR/train/<class>/<image>` and `DIR/val/<class>/<image>`.

Classes are the sorted names of train's subfolders and their indices are their positions, as
`torchvision.datasets.ImageFolder` gives them. Files are found as torchvision finds them: every
class folder is walked recursively (following links) in sorted order, and a file counts if its
name ends, in any case, with one of torchvision's IMG_EXTENSIONS; anything else is ignored.

The held-out split is `val/`, `validation/` or `test/` (the first that exists), labelled with
train's class indices, so a held-out folder that lacks a class does not shift the others (as
building a second ImageFolder on it would). Without one, a fixed 10 % of each training class is
held out, the same files for every --seed.

Plain Python and numpy. A table of relative paths stored as one byte string keeps a 1.28 M-image
tree at about 50 MB, cheap to send to loader workers.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from flax_resnet.core.data.memory import DataError
from flax_resnet.core.files import summarize

__all__ = ["HELD_OUT_FOLDERS", "HOLDOUT_FRACTION", "IMG_EXTENSIONS", "ImageFolderSplits", "PathTable",
           "find_classes", "scan_image_folder"]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's
HELD_OUT_FOLDERS = ("val", "validation", "test")
HOLDOUT_FRACTION = 0.1
HOLDOUT_SEED = 20240601  # the held-out files never depend on --seed


@dataclasses.dataclass(frozen=True)
class PathTable:
    """Paths relative to `root`, packed into one UTF-8 byte string, with int32 labels."""

    root: str
    blob: bytes
    offsets: np.ndarray  # int64, len + 1
    labels: np.ndarray  # int32

    @classmethod
    def build(cls, root: Path, samples: list[tuple[str, int]]) -> PathTable:
        encoded = [os.path.relpath(path, root).encode() for path, _ in samples]
        offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        return cls(str(root), b"".join(encoded), offsets, np.array([label for _, label in samples], np.int32))

    def __len__(self) -> int:
        return len(self.labels)

    def relative(self, index: int) -> str:
        return self.blob[self.offsets[index]:self.offsets[index + 1]].decode()

    def path(self, index: int) -> str:
        return os.path.join(self.root, self.relative(index))

    def describe(self, index: int) -> str:
        return self.path(index)

    def read(self, index: int) -> tuple[str, int]:
        """(path, label): what `transforms.decode_image` opens."""
        return self.path(index), int(self.labels[index])

    def subset(self, indices: np.ndarray) -> PathTable:
        return PathTable.build(Path(self.root), [(self.path(i), int(self.labels[i])) for i in indices])


@dataclasses.dataclass(frozen=True)
class ImageFolderSplits:
    """A scanned tree: class names, the train and held-out files, and where the held-out ones came from."""

    root: Path
    classes: tuple[str, ...]
    train: PathTable
    test: PathTable
    test_source: str  # the held-out folder, or 'held out of train'
    notice: str | None  # printed when the held-out images come out of train


def find_classes(folder: Path) -> list[str]:
    """Sorted subfolder names (links to folders count), as torchvision's `find_classes`."""
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())


def is_image_file(path: str) -> bool:
    return path.lower().endswith(IMG_EXTENSIONS)


def _samples(folder: Path, class_to_index: dict[str, int], classes: list[str]) -> tuple[list, list[str]]:
    """(path, class index) of every image under folder/<class>, in torchvision's order; and the
    classes that hold none."""
    samples, empty = [], []
    for name in sorted(classes):
        found = [(os.path.join(root, file), class_to_index[name])
                 for root, _, files in sorted(os.walk(folder / name, followlinks=True))
                 for file in sorted(files) if is_image_file(os.path.join(root, file))]
        if not found:
            empty.append(name)
        samples.extend(found)
    return samples, empty


def _no_classes(folder: Path) -> DataError:
    return DataError(f"{folder} holds no class folders; an ImageFolder is DIR/train/<class>/<image> (with "
                     f"DIR/val/<class>/<image> held out) or DIR/<class>/<image>")


def _empty_classes(folder: Path, empty: list[str]) -> DataError:
    return DataError(f"{folder}: class folder(s) {summarize(empty)} hold no images (image files end in "
                     f"{', '.join(IMG_EXTENSIONS)}, in any case; other files are ignored)")


def scan_image_folder(root, holdout_fraction: float = HOLDOUT_FRACTION) -> ImageFolderSplits:
    """Find the classes and files of an ImageFolder tree. Raises DataError, before any image is
    read, for a missing folder, a folder without class folders, an empty class folder, or a
    held-out folder with classes that train lacks."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (--data-dir must be an ImageFolder tree: "
                        f"DIR/train/<class>/<image>)")
    train_dir = root / "train" if (root / "train").is_dir() else root
    held_out = None
    if train_dir != root:
        held_out = next((root / name for name in HELD_OUT_FOLDERS if (root / name).is_dir()), None)
    classes = find_classes(train_dir)
    if not classes:
        raise _no_classes(train_dir)
    class_to_index = {name: index for index, name in enumerate(classes)}
    train, empty = _samples(train_dir, class_to_index, classes)
    if empty:
        raise _empty_classes(train_dir, empty)

    if held_out is not None:
        test_classes = find_classes(held_out)
        if not test_classes:
            raise _no_classes(held_out)
        unknown = sorted(set(test_classes) - set(classes))
        if unknown:
            raise DataError(f"{held_out} has class folder(s) {summarize(unknown)} that {train_dir} lacks; "
                            f"both splits need the same class folders")
        test, empty = _samples(held_out, class_to_index, test_classes)
        if empty:
            raise _empty_classes(held_out, empty)
        return ImageFolderSplits(root, tuple(classes), PathTable.build(train_dir, train),
                                 PathTable.build(held_out, test), held_out.name, None)

    labels = np.array([label for _, label in train], np.int32)
    generator = np.random.default_rng(HOLDOUT_SEED)
    test_mask = np.zeros(len(labels), bool)
    for label in range(len(classes)):
        members = generator.permutation(np.flatnonzero(labels == label))
        test_mask[members[: round(len(members) * holdout_fraction)]] = True
    if not test_mask.any() or test_mask.all():
        raise DataError(f"{train_dir}: {len(labels)} images are too few to hold out {holdout_fraction:.0%} of "
                        f"each class; add DIR/val/<class>/<image>")
    table = PathTable.build(train_dir, train)
    notice = (f"{root} has no {'/, '.join(HELD_OUT_FOLDERS)}/ folder: holding out {holdout_fraction:.0%} of each "
              f"class of {train_dir} ({int(test_mask.sum())} of {len(labels)} images, the same for every --seed) "
              f"for evaluation")
    return ImageFolderSplits(root, tuple(classes), table.subset(np.flatnonzero(~test_mask)),
                             table.subset(np.flatnonzero(test_mask)), "held out of train", notice)
