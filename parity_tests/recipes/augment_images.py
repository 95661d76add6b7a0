"""Small random images for the augmentation tests: odd and even sizes, RGB and L."""

from __future__ import annotations

import numpy as np
from PIL import Image

SIZES = ((37, 53), (64, 48))  # (width, height): odd and portrait, even and landscape
MODES = ("RGB", "L")
FILLS = {"RGB": (10, 200, 77), "L": 99}  # a fill that differs per channel, where there are channels


def random_images(seed: int = 0) -> list[Image.Image]:
    """One image per (mode, size): noise in 30..219, so that AutoContrast stretches it, with a
    brighter block, so that the histogram (Equalize) and the edges (Sharpness) have some shape."""
    rng = np.random.default_rng(seed)
    images = []
    for mode in MODES:
        for width, height in SIZES:
            shape = (height, width, 3) if mode == "RGB" else (height, width)
            pixels = rng.integers(30, 220, shape, dtype=np.uint8)
            pixels[height // 4: height // 2, width // 3: width // 2] //= 4
            images.append(Image.fromarray(pixels, mode))
    return images


def max_diff(ours: Image.Image, reference: Image.Image) -> int:
    """max |ours - reference| over all pixels, in uint8 levels (the modes and sizes must agree)."""
    assert ours.mode == reference.mode and ours.size == reference.size, (ours, reference)
    return int(np.abs(np.asarray(ours, np.int16) - np.asarray(reference, np.int16)).max())
