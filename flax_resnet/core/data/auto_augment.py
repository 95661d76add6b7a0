"""torchvision's automatic augmentation policies for PIL images, in PIL and numpy (no torch).

    TrivialAugmentWide()                      one op, a random magnitude of 31 bins
    RandAugment(num_ops=2, magnitude=9)       two ops at bin 9 of 31
    AutoAugment("imagenet")                   one of 25 learned two-op sub-policies (or cifar10, svhn)

They follow `torchvision.transforms.v2` on a PIL image: the same ops in the same order, its
magnitude tables (float32, to the bit), signed ops negated with probability 1/2, nearest
interpolation and fill 0 by default, and each op as the PIL call its PIL kernels make. Inputs are
"L" or "RGB" images, as torchvision requires.

Each policy is two steps, so that the random part can be handed to a reference as it is:

    draws = policy.draw(rng, width, height)   # [(op name, signed magnitude), ...], the ops applied
    image = policy.apply(image, draws)

and `policy(image, rng)` does both. `draw` is torchvision's algorithm with a numpy Generator in
place of torch's random numbers, call for call: `rng.integers(n)` where torchvision calls
`torch.randint(n, ())` and `rng.random()` where it calls `torch.rand(())`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
from fractions import Fraction

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

__all__ = ["AUTO_AUGMENT_POLICIES", "OPS", "RANDOM_OPS", "AugmentPolicyError", "AutoAugment", "RandAugment",
           "TrivialAugmentWide", "apply_op", "magnitude_bins", "pil_fill", "posterize", "sub_policies"]


class AugmentPolicyError(ValueError):
    """An unknown augmentation policy, op or option."""


def unknown_name_error(kind: str, name: str, valid) -> AugmentPolicyError:
    """'unknown {kind} {name!r}; valid: ...', the closest valid names first."""
    valid = list(valid)
    close = difflib.get_close_matches(str(name), valid, n=len(valid), cutoff=0.0)
    return AugmentPolicyError(f"unknown {kind} {name!r}; valid: {', '.join(close)}")


RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC}


def resample_filter(interpolation: str) -> Image.Resampling:
    """PIL's filter for an interpolation name ('nearest', 'bilinear' or 'bicubic')."""
    if interpolation not in RESAMPLE:
        raise unknown_name_error("interpolation", interpolation, RESAMPLE)
    return RESAMPLE[interpolation]


def pil_fill(fill, image: Image.Image) -> int | tuple[int, ...]:
    """The `fillcolor` PIL takes for `image`: one int per band, from a number or a sequence of one
    value per band (or a single value), truncated to int as torchvision's PIL kernels do."""
    bands = len(image.getbands())
    if fill is None:
        fill = 0
    if isinstance(fill, (int, float)):
        return int(fill) if bands == 1 else (int(fill),) * bands
    fill = tuple(fill)
    if len(fill) == 1:
        fill = fill * bands
    if len(fill) != bands:
        raise AugmentPolicyError(f"fill {fill} has {len(fill)} values for a {bands}-band {image.mode} image")
    return tuple(int(value) for value in fill)


# ---------------------------------------------------------------------------------------------
# Ops: what torchvision.transforms.v2's auto-augment policies do to a PIL image for (op, magnitude)
# ---------------------------------------------------------------------------------------------

GEOMETRIC_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
_ENHANCERS = {"Brightness": ImageEnhance.Brightness, "Color": ImageEnhance.Color,
              "Contrast": ImageEnhance.Contrast, "Sharpness": ImageEnhance.Sharpness}
# The ops without a magnitude, the same in torchvision's and timm's policies.
PLAIN_OPS = {"AutoContrast": ImageOps.autocontrast, "Equalize": ImageOps.equalize, "Invert": ImageOps.invert}
OPS = ("Identity", *GEOMETRIC_OPS, *_ENHANCERS, "Posterize", "Solarize", *PLAIN_OPS)


def apply_op(image: Image.Image, op: str, magnitude: float, *, interpolation: str = "nearest",
             fill=0) -> Image.Image:
    """One op of torchvision's policies at a signed magnitude, as its PIL kernels compute it."""
    if op in GEOMETRIC_OPS:
        resample, fillcolor = resample_filter(interpolation), pil_fill(fill, image)
        if op == "Rotate":  # about the centre, same size
            return image.rotate(magnitude, resample, fillcolor=fillcolor)
        return image.transform(image.size, Image.Transform.AFFINE, _inverse_affine(op, magnitude, image.size),
                               resample, fillcolor=fillcolor)
    if op in _ENHANCERS:
        return _ENHANCERS[op](image).enhance(1.0 + magnitude)
    if op == "Posterize":
        return posterize(image, int(magnitude))
    if op == "Solarize":  # the magnitude is the threshold as a fraction of 255
        return ImageOps.solarize(image, 255.0 * magnitude)
    if op in PLAIN_OPS:
        return PLAIN_OPS[op](image)
    if op == "Identity":
        return image
    raise unknown_name_error("op", op, OPS)


def posterize(image: Image.Image, bits: int) -> Image.Image:
    """Keep the `bits` highest bits of each channel, as ImageOps.posterize does. 0 bits (or fewer:
    timm's PosterizeIncreasing past magnitude 10) give black, as its formula and torchvision's
    tensor kernel do, where Pillow 13 raises."""
    if bits > 8:
        raise AugmentPolicyError(f"posterize keeps at most 8 bits, not {bits}")
    mask = ~(2 ** (8 - max(bits, 0)) - 1)
    return image.point([value & mask for value in range(256)] * len(image.getbands()))


def _inverse_affine(op: str, magnitude: float, size: tuple[int, int]) -> tuple[float, ...]:
    """The output-to-input matrix torchvision's affine kernel hands PIL for a shear or translation.

    Its general formula (rotation, scale and shear about a centre) reduces to these entries; they
    are computed with the same float operations so that nearest sampling picks the same pixels.
    A shear is by the angle atan(magnitude), which torchvision passes in degrees and converts back,
    about the top-left corner; a translation is by whole pixels (`int(magnitude)`).
    """
    if op in ("ShearX", "ShearY"):
        angle = math.radians(math.degrees(math.atan(magnitude)))
        if op == "ShearX":
            return 1.0, math.tan(angle), 0.0, 0.0, 1.0, 0.0
        return 1.0, 0.0, 0.0, -(math.sin(-angle) / math.cos(angle)), 1.0, 0.0
    pixels = float(int(magnitude))
    width, height = size
    if op == "TranslateX":
        centre = width * 0.5
        return 1.0, 0.0, centre - (centre + pixels), 0.0, 1.0, 0.0
    centre = height * 0.5
    return 1.0, 0.0, 0.0, 0.0, 1.0, centre - (centre + pixels)


# ---------------------------------------------------------------------------------------------
# Magnitude tables
# ---------------------------------------------------------------------------------------------

# An op's largest magnitude (its last bin); the bins run linearly from 0. RandAugment and
# AutoAugment share one table, TrivialAugmentWide has a wider one (torchvision.transforms.v2).
_TRANSLATE_FRACTION = 150.0 / 331.0  # AutoAugment's 150 pixels of a 331-pixel image
_LARGEST = {"ShearX": 0.3, "ShearY": 0.3, "Rotate": 30.0,
            "Brightness": 0.9, "Color": 0.9, "Contrast": 0.9, "Sharpness": 0.9}
_LARGEST_WIDE = {"ShearX": 0.99, "ShearY": 0.99, "TranslateX": 32.0, "TranslateY": 32.0, "Rotate": 135.0,
                 "Brightness": 0.99, "Color": 0.99, "Contrast": 0.99, "Sharpness": 0.99}
_POSTERIZE_FEWEST_BITS = {False: 4, True: 2}  # posterize keeps 8 bits at bin 0, this many at the last
_SIGNED = frozenset(GEOMETRIC_OPS) | frozenset(_ENHANCERS)
_NO_MAGNITUDE = frozenset({"Identity", "AutoContrast", "Equalize", "Invert"})


@functools.lru_cache(maxsize=4096)  # a loader asks for the same few tables at one image size
def magnitude_bins(op: str, num_bins: int, width: int, height: int, *, wide: bool = False) -> tuple[float, ...] | None:
    """The op's magnitudes, bin by bin, as torchvision tabulates them (None for an op without one)."""
    if op in _NO_MAGNITUDE:
        return None
    if op == "Posterize":
        spacing = (num_bins - 1) / (8 - _POSTERIZE_FEWEST_BITS[wide])
        return tuple(float(round(8 - i / spacing)) for i in range(num_bins))
    if op == "Solarize":
        return _linspace_float32(1.0, 0.0, num_bins)
    if op in ("TranslateX", "TranslateY") and not wide:
        largest = _TRANSLATE_FRACTION * (width if op == "TranslateX" else height)
    elif op in _LARGEST_WIDE:
        largest = (_LARGEST_WIDE if wide else _LARGEST)[op]
    else:
        raise unknown_name_error("op", op, OPS)
    return _linspace_float32(0.0, largest, num_bins)


def _linspace_float32(start: float, end: float, steps: int) -> tuple[float, ...]:
    """torch.linspace(start, end, steps) in float32, to the bit.

    Its CPU kernel computes step = (end - start) / (steps - 1) in float32, then each value as one
    fused multiply-add, rounded once: start + step * i in the first half, end - step * (steps-1-i)
    in the second. numpy's float32 arithmetic would round twice, so the sums are exact fractions here.
    """
    start32, end32 = np.float32(start), np.float32(end)
    if steps == 1:
        return (float(start32),)
    step = Fraction(float((end32 - start32) / np.float32(steps - 1)))
    values = []
    for i in range(steps):
        exact = Fraction(float(start32)) + step * i if i < steps // 2 else Fraction(float(end32)) - step * (steps - 1 - i)
        values.append(_nearest_float32(exact))
    return tuple(values)


def _nearest_float32(value: Fraction) -> float:
    """`value` rounded to the nearest float32 (ties to even), once."""
    guess = np.float32(float(value))
    candidates = (np.nextafter(guess, np.float32(-np.inf)), guess, np.nextafter(guess, np.float32(np.inf)))
    return float(min(candidates, key=lambda c: (abs(Fraction(float(c)) - value), int(c.view(np.uint32)) & 1)))


def _signed_magnitude(rng: np.random.Generator, op: str, bins: tuple[float, ...], index: int) -> float:
    magnitude = bins[index]
    if op in _SIGNED and rng.random() <= 0.5:
        magnitude = -magnitude
    return magnitude


# ---------------------------------------------------------------------------------------------
# Policies
# ---------------------------------------------------------------------------------------------

# The ops TrivialAugmentWide and RandAugment pick from, in torchvision's order (an index picks one).
RANDOM_OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
              "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize")


@dataclasses.dataclass(frozen=True)
class _Policy:
    interpolation: str = "nearest"  # of the geometric ops
    fill: int | tuple[int, ...] = 0  # outside the image after a geometric op

    def __post_init__(self):
        resample_filter(self.interpolation)

    def draw(self, rng: np.random.Generator, width: int, height: int) -> list[tuple[str, float]]:
        raise NotImplementedError

    def apply(self, image: Image.Image, draws) -> Image.Image:
        """The drawn ops, in order."""
        for op, magnitude in draws:
            image = apply_op(image, op, magnitude, interpolation=self.interpolation, fill=self.fill)
        return image

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        return self.apply(image, self.draw(rng, image.width, image.height))

    def describe(self) -> str:
        """The policy in torchvision's words, for config.json."""
        fields = ", ".join(f"{field.name}={getattr(self, field.name)!r}" for field in dataclasses.fields(self))
        return f"{type(self).__name__}({fields})"


@dataclasses.dataclass(frozen=True)
class TrivialAugmentWide(_Policy):
    """TrivialAugment Wide (Müller & Hutter, 2021): one op, a uniformly random bin of its wide table."""

    num_magnitude_bins: int = 31

    def draw(self, rng: np.random.Generator, width: int, height: int) -> list[tuple[str, float]]:
        """[(op, signed magnitude)]: one op of `RANDOM_OPS`, then a bin, then a sign if it has one."""
        op = RANDOM_OPS[int(rng.integers(len(RANDOM_OPS)))]
        bins = magnitude_bins(op, self.num_magnitude_bins, width, height, wide=True)
        if bins is None:
            return [(op, 0.0)]
        return [(op, _signed_magnitude(rng, op, bins, int(rng.integers(self.num_magnitude_bins))))]


@dataclasses.dataclass(frozen=True)
class RandAugment(_Policy):
    """RandAugment (Cubuk et al., 2020): `num_ops` ops, drawn with replacement, all at bin `magnitude`."""

    num_ops: int = 2
    magnitude: int = 9
    num_magnitude_bins: int = 31

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.magnitude < self.num_magnitude_bins or self.num_ops < 0:
            raise AugmentPolicyError(f"RandAugment needs num_ops >= 0 and 0 <= magnitude < num_magnitude_bins "
                                     f"({self.num_magnitude_bins}), not num_ops={self.num_ops}, "
                                     f"magnitude={self.magnitude}")

    def draw(self, rng: np.random.Generator, width: int, height: int) -> list[tuple[str, float]]:
        """[(op, signed magnitude)] * num_ops: each an op of `RANDOM_OPS`, then a sign if it has one."""
        draws = []
        for _ in range(self.num_ops):
            op = RANDOM_OPS[int(rng.integers(len(RANDOM_OPS)))]
            bins = magnitude_bins(op, self.num_magnitude_bins, width, height)
            draws.append((op, 0.0 if bins is None else _signed_magnitude(rng, op, bins, self.magnitude)))
        return draws


# The learned sub-policies of AutoAugment (Cubuk et al., 2019, appendix; torchvision's
# AutoAugmentPolicy tables): each line is two ops, each as name, probability, magnitude bin of 10.
_SUB_POLICY_TABLES = {
    "imagenet": """
        Posterize 0.4 8     Rotate 0.6 9
        Solarize 0.6 5      AutoContrast 0.6 -
        Equalize 0.8 -      Equalize 0.6 -
        Posterize 0.6 7     Posterize 0.6 6
        Equalize 0.4 -      Solarize 0.2 4
        Equalize 0.4 -      Rotate 0.8 8
        Solarize 0.6 3      Equalize 0.6 -
        Posterize 0.8 5     Equalize 1.0 -
        Rotate 0.2 3        Solarize 0.6 8
        Equalize 0.6 -      Posterize 0.4 6
        Rotate 0.8 8        Color 0.4 0
        Rotate 0.4 9        Equalize 0.6 -
        Equalize 0.0 -      Equalize 0.8 -
        Invert 0.6 -        Equalize 1.0 -
        Color 0.6 4         Contrast 1.0 8
        Rotate 0.8 8        Color 1.0 2
        Color 0.8 8         Solarize 0.8 7
        Sharpness 0.4 7     Invert 0.6 -
        ShearX 0.6 5        Equalize 1.0 -
        Color 0.4 0         Equalize 0.6 -
        Equalize 0.4 -      Solarize 0.2 4
        Solarize 0.6 5      AutoContrast 0.6 -
        Invert 0.6 -        Equalize 1.0 -
        Color 0.6 4         Contrast 1.0 8
        Equalize 0.8 -      Equalize 0.6 -
    """,
    "cifar10": """
        Invert 0.1 -        Contrast 0.2 6
        Rotate 0.7 2        TranslateX 0.3 9
        Sharpness 0.8 1     Sharpness 0.9 3
        ShearY 0.5 8        TranslateY 0.7 9
        AutoContrast 0.5 -  Equalize 0.9 -
        ShearY 0.2 7        Posterize 0.3 7
        Color 0.4 3         Brightness 0.6 7
        Sharpness 0.3 9     Brightness 0.7 9
        Equalize 0.6 -      Equalize 0.5 -
        Contrast 0.6 7      Sharpness 0.6 5
        Color 0.7 7         TranslateX 0.5 8
        Equalize 0.3 -      AutoContrast 0.4 -
        TranslateY 0.4 3    Sharpness 0.2 6
        Brightness 0.9 6    Color 0.2 8
        Solarize 0.5 2      Invert 0.0 -
        Equalize 0.2 -      AutoContrast 0.6 -
        Equalize 0.2 -      Equalize 0.6 -
        Color 0.9 9         Equalize 0.6 -
        AutoContrast 0.8 -  Solarize 0.2 8
        Brightness 0.1 3    Color 0.7 0
        Solarize 0.4 5      AutoContrast 0.9 -
        TranslateY 0.9 9    TranslateY 0.7 9
        AutoContrast 0.9 -  Solarize 0.8 3
        Equalize 0.8 -      Invert 0.1 -
        TranslateY 0.7 9    AutoContrast 0.9 -
    """,
    "svhn": """
        ShearX 0.9 4        Invert 0.2 -
        ShearY 0.9 8        Invert 0.7 -
        Equalize 0.6 -      Solarize 0.6 6
        Invert 0.9 -        Equalize 0.6 -
        Equalize 0.6 -      Rotate 0.9 3
        ShearX 0.9 4        AutoContrast 0.8 -
        ShearY 0.9 8        Invert 0.4 -
        ShearY 0.9 5        Solarize 0.2 6
        Invert 0.9 -        AutoContrast 0.8 -
        Equalize 0.6 -      Rotate 0.9 3
        ShearX 0.9 4        Solarize 0.3 3
        ShearY 0.8 8        Invert 0.7 -
        Equalize 0.9 -      TranslateY 0.6 6
        Invert 0.9 -        Equalize 0.6 -
        Contrast 0.3 3      Rotate 0.8 4
        Invert 0.8 -        TranslateY 0.0 2
        ShearY 0.7 6        Solarize 0.4 8
        Invert 0.6 -        Rotate 0.8 4
        ShearY 0.3 7        TranslateX 0.9 3
        ShearX 0.1 6        Invert 0.6 -
        Solarize 0.7 2      TranslateY 0.6 7
        ShearY 0.8 4        Invert 0.8 -
        ShearX 0.7 9        TranslateY 0.8 3
        ShearY 0.8 5        AutoContrast 0.7 -
        ShearX 0.7 2        Invert 0.1 -
    """,
}
AUTO_AUGMENT_POLICIES = tuple(_SUB_POLICY_TABLES)

SubPolicy = tuple[tuple[str, float, "int | None"], ...]


@functools.lru_cache(maxsize=None)
def sub_policies(policy: str) -> tuple[SubPolicy, ...]:
    """The named AutoAugment policy's sub-policies: ((op, probability, magnitude bin or None), ...)."""
    if policy not in _SUB_POLICY_TABLES:
        raise unknown_name_error("AutoAugment policy", policy, AUTO_AUGMENT_POLICIES)
    table = []
    for line in _SUB_POLICY_TABLES[policy].strip().splitlines():
        words = line.split()
        table.append(tuple((op, float(probability), None if bin_ == "-" else int(bin_))
                           for op, probability, bin_ in zip(words[0::3], words[1::3], words[2::3])))
    return tuple(table)


@dataclasses.dataclass(frozen=True)
class AutoAugment(_Policy):
    """AutoAugment (Cubuk et al., 2019): a random sub-policy of the named policy, each of its ops
    applied with its probability at its bin of 10."""

    policy: str = "imagenet"

    def __post_init__(self):
        super().__post_init__()
        sub_policies(self.policy)

    def draw(self, rng: np.random.Generator, width: int, height: int) -> list[tuple[str, float]]:
        """[(op, signed magnitude), ...] for the ops of a random sub-policy that pass their coin."""
        table = sub_policies(self.policy)
        draws = []
        for op, probability, index in table[int(rng.integers(len(table)))]:
            if not rng.random() <= probability:
                continue
            bins = magnitude_bins(op, 10, width, height)
            draws.append((op, 0.0 if bins is None else _signed_magnitude(rng, op, bins, index)))
        return draws
