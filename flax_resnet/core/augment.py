"""What happens to a batch of images before the model sees it: the augmentation spec. Plain Python.

`flax_resnet.training.device_transforms` applies it on the device, inside the jitted step.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class MixSpec:
    """Batch mixing (`flax_resnet.training.mixing`): MixUp and/or CutMix, one of them per batch."""

    mode: str  # 'torchvision' or 'timm'
    mixup_alpha: float
    cutmix_alpha: float
    num_classes: int
    label_smoothing: float = 0.0  # timm: inside the mixed targets (torchvision: in the loss)


@dataclasses.dataclass(frozen=True)
class AugmentSpec:
    """What happens to a batch. Hashable, so it can be a static argument of a jitted function."""

    mean: tuple[float, ...]  # per channel, in [0, 1] pixel units
    std: tuple[float, ...]
    crop_padding: int = 0  # 0: no random crop
    flip: bool = False  # random horizontal flip
    image_size: int | None = None  # resize to this square size first; None: keep
    crop_pct: float | None = None  # evaluation: resize to image_size / crop_pct, then cut out the centre
    interpolation: str = "bilinear"  # of every resize: 'bilinear' or 'bicubic'
    random_erase: float = 0.0  # training: torchvision's RandomErasing probability, after normalizing
    mixing: MixSpec | None = None  # train batches only


def channel_statistics(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 NHWC images, in [0, 1] units (what `normalize` expects)."""
    pixels = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    return tuple(float(v) for v in pixels.mean(0)), tuple(float(v) for v in pixels.std(0))


def default_augment(image_shape, *, crop_padding=None, flip=None, image_size=None, mean, std,
                    interpolation: str = "bilinear") -> AugmentSpec:
    """Fill in the automatic choices: colour images get a size // 8 crop padding and flips (the
    CIFAR recipe: 4 pixels at 32); grayscale digits and clothing get size // 14 (2 pixels at 28)
    and no flips, which would turn some digits into others."""
    height, _, channels = image_shape
    colour = channels == 3
    size = image_size or height
    if crop_padding is None:
        crop_padding = size // 8 if colour else size // 14
    if flip is None:
        flip = colour
    return AugmentSpec(tuple(mean), tuple(std), crop_padding, flip, image_size, interpolation=interpolation)
