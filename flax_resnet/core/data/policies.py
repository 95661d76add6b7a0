"""One entry point for the augmentation policies a recipe names: torchvision's or timm's.

    policy = make_policy("ta_wide", None, image_size=176)                      # torchvision
    policy = make_policy(None, "rand-m9-mstd0.5-inc1", image_size=224, mean=mean)  # timm
    image = policy(image, rng)    # a PIL image in, a PIL image out, draws from a numpy Generator

torchvision's names are its reference scripts' `--auto-augment` values
(references/classification/presets.py): 'ta_wide' TrivialAugmentWide, 'ra' RandAugment,
'imagenet' / 'cifar10' / 'svhn' AutoAugment with that policy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from flax_resnet.core.data.auto_augment import (AugmentPolicyError, AutoAugment, RandAugment, TrivialAugmentWide,
                                                unknown_name_error)
from flax_resnet.core.data.rand_augment import TimmRandAugment, parse_rand_augment, train_hparams

__all__ = ["AUTO_AUGMENT_NAMES", "AugmentPolicy", "AugmentPolicyError", "make_policy"]

AugmentPolicy = TrivialAugmentWide | RandAugment | AutoAugment | TimmRandAugment
AUTO_AUGMENT_NAMES = ("ta_wide", "ra", "imagenet", "cifar10", "svhn")


def make_policy(auto_augment: str | None = None, rand_augment: str | None = None, *, image_size,
                mean: Sequence[float] | None = None, interpolation: str | None = None,
                fill=None) -> AugmentPolicy | None:
    """The policy named by `auto_augment` (torchvision) or `rand_augment` (a timm string), or None.

    image_size: the side (or (height, width)) of the images the policy sees; timm's translations
        scale with it.
    mean: the per-channel mean in 0..1; timm fills with it (as its train transform does).
    interpolation: of the geometric ops; default torchvision's 'nearest', timm's random choice of
        bilinear and bicubic per op.
    fill: the colour outside a transformed image; default 0 for torchvision, the mean (else timm's
        grey 128) for timm.
    """
    if auto_augment and rand_augment:
        raise AugmentPolicyError(f"name one policy, not both auto_augment={auto_augment!r} and "
                                 f"rand_augment={rand_augment!r}")
    if auto_augment:
        options = {"interpolation": interpolation or "nearest", "fill": 0 if fill is None else fill}
        if auto_augment == "ta_wide":
            return TrivialAugmentWide(**options)
        if auto_augment == "ra":
            return RandAugment(**options)
        if auto_augment in AUTO_AUGMENT_NAMES:
            return AutoAugment(policy=auto_augment, **options)
        raise unknown_name_error("auto_augment policy", auto_augment, AUTO_AUGMENT_NAMES)
    if rand_augment:
        hparams = train_hparams(image_size, mean, interpolation)
        if fill is not None:
            hparams = dataclasses.replace(hparams, fill=fill)
        return parse_rand_augment(rand_augment, hparams)
    return None
