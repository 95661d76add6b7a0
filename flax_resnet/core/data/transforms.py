"""Host-side image transforms with torchvision's semantics, in PIL and numpy (no torch).

    train: RandomResizedCrop(size, scale, ratio=(3/4, 4/3)), then RandomHorizontalFlip, then an
           optional auto-augment policy (flax_resnet.core.data.policies)
    eval:  Resize(round(size / crop_fraction)) of the shorter side, then CenterCrop(size)

Both resize with PIL's bilinear filter, which always antialiases: torchvision's PIL path calls the
same `Image.resize`, so the eval transform gives torchvision's pixels. Images are first converted
as torchvision's ImageFolder loader does (`convert("RGB")`), then to "L" for 1-channel models (as
its `Grayscale` transform would). The output is uint8 HWC; normalization happens on the device.

The random draws follow torchvision's algorithm (ten tries at a random area and log-uniform aspect
ratio, then a central fallback crop) with a numpy Generator in place of torch's, so a loader
worker needs no torch and the draws are a pure function of the generator's seed.
"""

from __future__ import annotations

import dataclasses
import io
import math

import numpy as np
from PIL import Image

from flax_resnet.core.data.policies import AugmentPolicy

__all__ = ["HostTransforms", "center_crop_box", "decode_image", "random_resized_crop_box", "to_mode"]

RATIO = (3 / 4, 4 / 3)  # torchvision's RandomResizedCrop default


def decode_image(source) -> Image.Image:
    """A PIL image from a path, encoded bytes or a decoded uint8 array (HW, HW1 or HWC).

    Raises whatever PIL raises for a file it cannot decode; the loader turns that into a skip.
    """
    if isinstance(source, np.ndarray):
        return Image.fromarray(source[..., 0] if source.ndim == 3 and source.shape[2] == 1 else source)
    image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    image.load()  # decode now: a truncated or corrupt file fails here, not later
    return image


def to_mode(image: Image.Image, channels: int) -> Image.Image:
    """RGB for 3-channel models, L for 1-channel ones, by torchvision's route: every mode (L, RGBA,
    P, CMYK, I;16, ...) is first converted to RGB as its ImageFolder loader does."""
    mode = "RGB" if channels == 3 else "L"
    if image.mode == mode:
        return image
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return rgb if mode == "RGB" else rgb.convert("L")


def random_resized_crop_box(rng: np.random.Generator, width: int, height: int,
                            scale=(0.08, 1.0), ratio=RATIO) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random crop, by torchvision's RandomResizedCrop.get_params."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    # Fallback: the whole image, cut to the nearest allowed aspect ratio, centred.
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resize_shorter_side(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) after torchvision's Resize(size) with an int: the shorter side becomes
    `size`, the longer one int(size * long / short) (truncated, as torchvision does)."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def center_crop_box(width: int, height: int, size: int) -> tuple[int, int]:
    """(top, left) of torchvision's CenterCrop(size) on an image at least `size` on each side."""
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))


@dataclasses.dataclass(frozen=True)
class HostTransforms:
    """The train and eval transforms of one run (picklable, for loader workers)."""

    size: int  # output height and width (of evaluation; of training too unless train_size says otherwise)
    channels: int  # 3 (RGB) or 1 (L)
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_fraction: float = 0.875  # eval: resize the shorter side to round(size / crop_fraction)
    flip: bool = True
    interpolation: str = "bilinear"  # or 'bicubic': PIL's filters, as torchvision's PIL path uses them
    train_size: int | None = None  # RandomResizedCrop's size, when it differs from evaluation's (FixRes)
    eval_resize: int | None = None  # eval: the shorter side's size before the crop (None: from crop_fraction)
    policy: AugmentPolicy | None = None  # train: an auto-augment policy after the crop and flip

    @property
    def train_crop(self) -> int:
        return self.train_size or self.size

    @property
    def _filter(self):
        return Image.BICUBIC if self.interpolation == "bicubic" else Image.BILINEAR

    @property
    def resize_size(self) -> int:
        return self.eval_resize or int(round(self.size / self.crop_fraction))

    def train(self, image: Image.Image, rng: np.random.Generator) -> np.ndarray:
        """RandomResizedCrop(size, crop_scale, 3/4..4/3), if `flip` a horizontal flip with p=1/2, then
        the `policy` if any (torchvision's and timm's order)."""
        image = to_mode(image, self.channels)
        top, left, h, w = random_resized_crop_box(rng, image.width, image.height, self.crop_scale)
        image = image.crop((left, top, left + w, top + h))
        if (w, h) != (self.train_crop, self.train_crop):
            image = image.resize((self.train_crop, self.train_crop), self._filter)
        if self.flip and rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if self.policy is not None:
            # A stream of its own, spawned from the example's: the crop and flip stay those of a run
            # without the policy.
            image = self.policy(image, rng.spawn(1)[0])
        return _hwc(image)

    def eval(self, image: Image.Image) -> np.ndarray:
        """Resize(round(size / crop_fraction)) of the shorter side, then CenterCrop(size)."""
        image = to_mode(image, self.channels)
        width, height = resize_shorter_side(image.width, image.height, self.resize_size)
        if (width, height) != image.size:
            image = image.resize((width, height), self._filter)
        top, left = center_crop_box(width, height, self.size)
        return _hwc(image.crop((left, top, left + self.size, top + self.size)))

    def describe(self) -> dict[str, str]:
        """The transforms in torchvision's words, for config.json."""
        low, high = self.crop_scale
        flip = " + RandomHorizontalFlip()" if self.flip else ""
        mode = "RGB" if self.channels == 3 else "L"
        policy = f" + {self.policy.describe()}" if self.policy is not None else ""
        return {"train": f"RandomResizedCrop({self.train_crop}, scale=({low}, {high}), ratio=(3/4, 4/3)){flip}{policy}",
                "eval": f"Resize({self.resize_size}) + CenterCrop({self.size})",
                "mode": mode, "interpolation": f"{self.interpolation}, antialiased (PIL)"}


def _hwc(image: Image.Image) -> np.ndarray:
    pixels = np.asarray(image, np.uint8)
    return pixels[..., None] if pixels.ndim == 2 else pixels
