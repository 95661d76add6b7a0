"""timm's RandAugment config strings for PIL images, in PIL and numpy (no torch, no timm).

    parse_rand_augment("rand-m9-mstd0.5-inc1", train_hparams(224, mean))

A string is 'rand' and dash-separated sections, as `timm.data.auto_augment.rand_augment_transform`
reads them: m magnitude (0..10, default 10), n ops per image (2), p each op's probability (0.5),
mstd the std of gaussian noise on the magnitude (above 100: uniform in [0, m]), mmax its upper
clip (10), inc1 the op set whose severity increases with the magnitude. The hparams are those of
timm's train transform: TranslateX/Y's pixels at magnitude 10, the fill colour (the dataset mean)
and the interpolation of the geometric ops (by default bilinear or bicubic, drawn per op).

As in `auto_augment`, a policy is `draw(rng, width, height)` -> [(op, op arguments, interpolation),
...] for the ops applied, then `apply(image, draws)`. `draw` is timm's algorithm with a numpy
Generator in place of its random numbers, call for call: `rng.integers(len(ops), size=n)` for
`np.random.choice(ops, n)`, `rng.random()` for `random.random()`, `rng.normal(m, std)` for
`random.gauss(m, std)`, `rng.uniform(a, b)` for `random.uniform(a, b)` and
`choices[rng.integers(len(choices))]` for `random.choice(choices)`.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from flax_resnet.core.data.auto_augment import (PLAIN_OPS, AugmentPolicyError, pil_fill, posterize, resample_filter,
                                                unknown_name_error)

__all__ = ["INCREASING_OPS", "RAND_OPS", "TimmHparams", "TimmRandAugment", "apply_timm_op", "op_arguments",
           "parse_rand_augment", "train_hparams"]

_MAGNITUDE_SCALE = 10.0  # timm's magnitudes run 0..10; an op's argument is linear in magnitude / 10
RANDOM_INTERPOLATIONS = ("bilinear", "bicubic")  # timm's choice when the train interpolation is 'random'


@dataclasses.dataclass(frozen=True)
class TimmHparams:
    """What timm's ops take besides the magnitude (its `hparams` dict)."""

    translate_const: int = 250  # TranslateX/Y's pixels at magnitude 10
    translate_pct: float = 0.45  # TranslateXRel/YRel's fraction of the image at magnitude 10
    fill: int | tuple[int, ...] = (128, 128, 128)  # timm's img_mean
    interpolation: str | None = None  # of the geometric ops; None: bilinear or bicubic, drawn per op


def train_hparams(image_size, mean=None, interpolation: str | None = None) -> TimmHparams:
    """The hparams timm's `transforms_imagenet_train` hands RandAugment: translate_const 45% of the
    shorter side, the fill colour the mean (in 0..1 per channel) in 0..255, rounded; without a
    mean, timm's grey 128."""
    shorter = min(image_size) if isinstance(image_size, (tuple, list)) else image_size
    fill = 128 if mean is None else tuple(min(255, round(255 * value)) for value in mean)
    return TimmHparams(translate_const=int(shorter * 0.45), fill=fill, interpolation=interpolation)


# ---------------------------------------------------------------------------------------------
# Ops and their arguments
# ---------------------------------------------------------------------------------------------

# The op sets of a 'rand' string, in timm's order (an index picks one): the original one, and the
# one (inc1) where every op grows more severe with the magnitude.
RAND_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
            "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
INCREASING_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
                  "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
                  "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
_TRANSLATES = ("TranslateX", "TranslateY", "TranslateXRel", "TranslateYRel")
GEOMETRIC_OPS = ("Rotate", "ShearX", "ShearY", *_TRANSLATES)
_ENHANCERS = {"Color": ImageEnhance.Color, "Contrast": ImageEnhance.Contrast,
              "Brightness": ImageEnhance.Brightness, "Sharpness": ImageEnhance.Sharpness}
_INCREASING_ENHANCERS = tuple(f"{name}Increasing" for name in _ENHANCERS)
# The ops whose argument gets a random sign.
SIGNED_OPS = frozenset(GEOMETRIC_OPS) | frozenset(_INCREASING_ENHANCERS)
OPS = (*dict.fromkeys(RAND_OPS + INCREASING_OPS), "PosterizeOriginal", "TranslateX", "TranslateY")


def op_arguments(op: str, magnitude: float, negate: bool, hparams: TimmHparams) -> tuple:
    """The op's arguments at a magnitude (already clipped), with the sign drawn for a signed op;
    the formulas of timm's `LEVEL_TO_ARG`, in its order of float operations."""
    level = magnitude / _MAGNITUDE_SCALE
    sign = -1.0 if negate else 1.0
    if op == "Rotate":
        return (sign * (level * 30.0),)  # degrees
    if op in ("ShearX", "ShearY"):
        return (sign * (level * 0.3),)
    if op in ("TranslateX", "TranslateY"):
        return (sign * (level * float(hparams.translate_const)),)  # pixels
    if op in ("TranslateXRel", "TranslateYRel"):
        return (sign * (level * hparams.translate_pct),)  # a fraction of the width or height
    if op in _ENHANCERS:
        return (level * 1.8 + 0.1,)  # enhancement factor in [0.1, 1.9]; 1 is no change
    if op in _INCREASING_ENHANCERS:
        return (max(0.1, 1.0 + sign * (level * 0.9)),)  # 1 -+ up to 0.9
    if op == "Posterize":
        return (int(level * 4),)  # bits kept
    if op == "PosterizeIncreasing":
        return (4 - int(level * 4),)
    if op == "PosterizeOriginal":
        return (int(level * 4) + 4,)
    if op == "Solarize":
        return (min(256, int(level * 256)),)  # threshold
    if op == "SolarizeIncreasing":
        return (256 - min(256, int(level * 256)),)
    if op == "SolarizeAdd":
        return (min(128, int(level * 110)),)  # added below 128
    if op in ("AutoContrast", "Equalize", "Invert"):
        return ()
    raise unknown_name_error("timm op", op, OPS)


def apply_timm_op(image: Image.Image, op: str, arguments: tuple, interpolation: str | None = None,
                  fill=(128, 128, 128)) -> Image.Image:
    """One of timm's ops with its arguments, as timm's PIL functions compute it."""
    if op in GEOMETRIC_OPS:
        resample, fillcolor = resample_filter(interpolation), pil_fill(fill, image)
        (value,) = arguments
        if op == "Rotate":
            return image.rotate(value, resample=resample, fillcolor=fillcolor)
        if op == "TranslateXRel":
            value = value * image.size[0]
        elif op == "TranslateYRel":
            value = value * image.size[1]
        if op == "ShearX":
            matrix = (1, value, 0, 0, 1, 0)
        elif op == "ShearY":
            matrix = (1, 0, 0, value, 1, 0)
        elif op.startswith("TranslateX"):
            matrix = (1, 0, value, 0, 1, 0)
        else:
            matrix = (1, 0, 0, 0, 1, value)
        return image.transform(image.size, Image.Transform.AFFINE, matrix, resample=resample, fillcolor=fillcolor)
    base = op.removesuffix("Increasing").removesuffix("Original")
    if base in _ENHANCERS:
        return _ENHANCERS[base](image).enhance(arguments[0])
    if base == "Posterize":
        return image if arguments[0] >= 8 else posterize(image, arguments[0])
    if base == "Solarize":
        return ImageOps.solarize(image, arguments[0])
    if op == "SolarizeAdd":
        if image.mode not in ("L", "RGB"):
            return image
        added = arguments[0]
        table = [min(255, value + added) if value < 128 else value for value in range(256)]
        return image.point(table * len(image.getbands()))
    if op in PLAIN_OPS:
        return PLAIN_OPS[op](image)
    raise unknown_name_error("timm op", op, OPS)


# ---------------------------------------------------------------------------------------------
# The policy
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TimmRandAugment:
    """timm's RandAugment: `num_layers` ops drawn with replacement, each applied with probability
    `prob` at `magnitude` (plus noise of std `magnitude_std`, clipped to [0, magnitude_max])."""

    ops: tuple[str, ...] = RAND_OPS
    num_layers: int = 2
    magnitude: float = 10
    prob: float = 0.5
    magnitude_std: float = 0.0  # inf: uniform in [0, magnitude]
    magnitude_max: float | None = None  # None (or 0): 10
    hparams: TimmHparams = TimmHparams()
    config: str = ""  # the string it was parsed from

    def draw(self, rng: np.random.Generator, width: int, height: int) -> list[tuple[str, tuple, str | None]]:
        """[(op, arguments, interpolation), ...] for the chosen ops that pass their coin; the
        interpolation is None for an op that does not resample."""
        draws = []
        for index in rng.integers(len(self.ops), size=self.num_layers):
            op = self.ops[int(index)]
            if self.prob < 1.0 and rng.random() > self.prob:
                continue
            magnitude = self.magnitude
            if self.magnitude_std == math.inf:
                magnitude = rng.uniform(0, magnitude)
            elif self.magnitude_std > 0:
                magnitude = rng.normal(magnitude, self.magnitude_std)
            magnitude = max(0.0, min(float(magnitude), self.magnitude_max or _MAGNITUDE_SCALE))
            negate = op in SIGNED_OPS and rng.random() > 0.5
            interpolation = None
            if op in GEOMETRIC_OPS:
                interpolation = self.hparams.interpolation or RANDOM_INTERPOLATIONS[
                    int(rng.integers(len(RANDOM_INTERPOLATIONS)))]
            draws.append((op, op_arguments(op, magnitude, negate, self.hparams), interpolation))
        return draws

    def apply(self, image: Image.Image, draws) -> Image.Image:
        """The drawn ops, in order."""
        for op, arguments, interpolation in draws:
            image = apply_timm_op(image, op, arguments, interpolation, self.hparams.fill)
        return image

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        return self.apply(image, self.draw(rng, image.width, image.height))

    def describe(self) -> str:
        """The string and hparams, in timm's words, for config.json."""
        hparams = self.hparams
        interpolation = hparams.interpolation or "random"
        return (f"rand_augment_transform({self.config!r}, translate_const={hparams.translate_const}, "
                f"img_mean={hparams.fill}, interpolation={interpolation})")


_SECTIONS = {"m": "magnitude", "n": "ops per image", "p": "probability of each op", "mstd": "magnitude noise std",
             "mmax": "magnitude upper clip", "inc": "increasing op set (0 or 1)"}


def parse_rand_augment(config: str, hparams: TimmHparams = TimmHparams()) -> TimmRandAugment:
    """The policy a timm 'rand-...' string names (see the module docstring); a malformed string
    raises AugmentPolicyError naming the sections that exist."""
    sections = config.split("-")
    valid = ", ".join(f"{key}<{meaning}>" for key, meaning in _SECTIONS.items())
    if sections[0] != "rand":
        raise AugmentPolicyError(f"a RandAugment string starts with 'rand-', not {config!r}; sections: {valid}")
    options = {"magnitude": 10, "num_layers": 2, "prob": 0.5, "magnitude_std": 0.0, "magnitude_max": None}
    increasing = False
    for section in sections[1:]:
        key, value = _split(section)
        if key.startswith("t"):
            raise AugmentPolicyError(f"op-set sections ({section!r} in {config!r}) are not supported; "
                                     f"sections: {valid}")
        if key not in _SECTIONS:
            raise AugmentPolicyError(f"unknown section {section!r} in RandAugment string {config!r}; "
                                     f"sections: {valid}")
        try:
            if key == "m":
                options["magnitude"] = int(value)
            elif key == "n":
                options["num_layers"] = int(value)
            elif key == "p":
                options["prob"] = float(value)
            elif key == "mstd":
                options["magnitude_std"] = math.inf if float(value) > 100 else float(value)
            elif key == "mmax":
                options["magnitude_max"] = int(value)
            else:
                increasing = bool(int(value))
        except ValueError:
            kind = "a number" if key in ("p", "mstd") else "an integer"
            raise AugmentPolicyError(f"section {section!r} of RandAugment string {config!r} needs {kind}: "
                                     f"{key}<{_SECTIONS[key]}>") from None
    return TimmRandAugment(ops=INCREASING_OPS if increasing else RAND_OPS, hparams=hparams, config=config, **options)


def _split(section: str) -> tuple[str, str]:
    """'mstd0.5' -> ('mstd', '0.5'): what comes before the first digit, and the rest."""
    parts = re.split(r"(\d.*)", section, maxsplit=1)
    return parts[0], parts[1] if len(parts) > 1 else ""
