"""Host augmentation of the in-memory sets, for the policies that need decoded images on the host.

A device transform cannot run TrivialAugment, RandAugment or AutoAugment (PIL ops), so with
--auto-augment or --rand-augment an in-memory set (CIFAR, the digits) is augmented on the host, in
torchvision's CIFAR order: RandomCrop(size, padding) with zero padding, RandomHorizontalFlip, then
the policy. The device then only normalizes (and erases, and mixes). Example `i`, copy at place `p`
of epoch `e`, draws from `default_rng([seed, HOST_AUGMENT_STREAM, e, i(, p)])`, as a streamed
example does, and the policy from the stream spawned from it: given the same image, the policy's
pixels are those the streamed loader's workers make.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from flax_resnet.core.data.policies import AugmentPolicy


@dataclasses.dataclass(frozen=True)
class HostAugment:
    """Pad-and-random-crop, flip, then an auto-augment policy, on one uint8 HWC image."""

    policy: AugmentPolicy
    crop_padding: int
    flip: bool

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        height, width, channels = image.shape
        if self.crop_padding:
            pad = self.crop_padding
            padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
            top, left = rng.integers(0, 2 * pad + 1, size=2)
            image = padded[top:top + height, left:left + width]
        if self.flip and rng.random() < 0.5:
            image = image[:, ::-1]
        pil = Image.fromarray(np.ascontiguousarray(image[..., 0] if channels == 1 else image))
        # A stream of its own, spawned from the example's, as the streamed loader's policy draws.
        augmented = self.policy(pil, rng.spawn(1)[0])
        return np.asarray(augmented, np.uint8).reshape(height, width, channels)

    def describe(self) -> str:
        crop = f"RandomCrop(padding={self.crop_padding})" if self.crop_padding else ""
        parts = [crop, "RandomHorizontalFlip" if self.flip else "", self.policy.describe()]
        return " + ".join(part for part in parts if part) + " (host)"
