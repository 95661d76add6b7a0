"""The one list of model variants. Both `flax_resnet` and `torch_ref` build from it.

Plain Python only (no JAX, no torch), so either framework can import it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

IMAGENET_WIDTHS = (64, 128, 256, 512)
CIFAR_WIDTHS = (16, 32, 64)

# Options each family accepts, with their defaults.
# `maxpool=None` means "as the stem implies": on after the 'imagenet' stem, off after 'cifar'.
_IMAGENET_OPTIONS = {"stem": "imagenet", "maxpool": None, "zero_init_residual": False}
_PLAIN_OPTIONS = {"stem": "imagenet", "maxpool": None}
_PREACT_OPTIONS = {"stem": "imagenet", "maxpool": None}
_CIFAR_OPTIONS = {"shortcut": "A", "zero_init_residual": False}
# timm builds every ResNet with its blocks' last BatchNorm zeroed (`zero_init_last=True`).
_TIMM_OPTIONS = {"maxpool": None, "zero_init_residual": True}


@dataclasses.dataclass(frozen=True)
class Interval:
    """The valid values of a numeric option: low <= value < high."""

    low: float
    high: float

    def __contains__(self, value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value < self.high

    def __repr__(self) -> str:
        return f"a number in [{self.low:g}, {self.high:g})"


# Options that change how a residual net trains, never its parameters: every residual net of the
# 'resnet' and 'preact' families takes them, and they join the resolved options only when given,
# so a model built without them is recorded, saved and exported as before.
# drop_path_rate: stochastic depth as timm's ResNet (Huang et al. 2016): block i of n drops its
# residual branch with probability drop_path_rate * i / (n - 1) in train mode.
TRAINING_OPTIONS = {"drop_path_rate": 0.0}

OPTION_CHOICES = {
    "stem": ("imagenet", "cifar"),
    "maxpool": (True, False, None),
    "zero_init_residual": (True, False),
    "shortcut": ("A", "B"),
    "drop_path_rate": Interval(0.0, 1.0),
}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything that tells one variant from another.

    family: 'resnet' (torchvision layout, also plain and CIFAR nets and timm's ResNet-D and
        SE-ResNet), 'preact', 'd2l' or 'mnist'.
    block: 'basic' or 'bottleneck'.
    layers: blocks per stage.
    widths: `planes` of each stage (a bottleneck stage outputs 4x that).
    residual: False for the plain twins (no shortcut at all).
    groups, base_width: ResNeXt and wide nets, as in torchvision.
    stem_width: channels after the stem.
    stem: the stem when the variant has no `stem` option: 'imagenet' (7x7/2 conv), 'cifar' (3x3/1
        conv) or 'deep' (three 3x3 convs, the first with stride 2, BatchNorm and ReLU between them;
        timm's `stem_type='deep'`).
    deep_stem_widths: the widths of the deep stem's first two convs (the third is stem_width).
    shortcut: the projection when the variant has no `shortcut` option: 'B' (1x1 conv with the
        block's stride, + BatchNorm) or 'D' (ResNet-D, timm's `avg_down`: a 2x2 average-pool with
        the stride, then a 1x1 conv with stride 1, + BatchNorm).
    attention: None, or 'se' for squeeze-excitation after each block's last BatchNorm.
    options: the keyword options the variant accepts and their defaults.
    """

    family: str
    block: str = "basic"
    layers: tuple[int, ...] = ()
    widths: tuple[int, ...] = IMAGENET_WIDTHS
    residual: bool = True
    groups: int = 1
    base_width: int = 64
    stem_width: int = 64
    stem: str = "imagenet"
    deep_stem_widths: tuple[int, int] = (32, 32)
    shortcut: str = "B"
    attention: str | None = None
    num_classes: int = 1000
    in_channels: int = 3
    options: dict[str, Any] = dataclasses.field(default_factory=dict)


def _imagenet(block, layers, residual=True, **kwargs):
    options = dict(_IMAGENET_OPTIONS if residual else _PLAIN_OPTIONS)
    return ModelSpec("resnet", block, layers, residual=residual, options=options, **kwargs)


def _preact(block, layers):
    return ModelSpec("preact", block, layers, options=dict(_PREACT_OPTIONS))


def _timm(block, layers, **kwargs):
    return ModelSpec("resnet", block, layers, options=dict(_TIMM_OPTIONS), **kwargs)


# timm's '-d' nets (He et al. 2019, "Bag of Tricks"): ResNet-C's deep stem and ResNet-D's
# average-pool shortcuts.
_D = {"stem": "deep", "shortcut": "D"}
# timm's '-t' nets: the same with a tiered deep stem, 24 -> 32 -> 64 channels.
_T = {"stem": "deep", "deep_stem_widths": (24, 32), "shortcut": "D"}
# Squeeze-and-excitation (Hu et al. 2018) in every block.
_SE = {"attention": "se"}
_RESNEXT_32X4D = {"groups": 32, "base_width": 4}


def _cifar(n, residual=True):
    options = dict(_CIFAR_OPTIONS) if residual else {}
    return ModelSpec(
        "resnet", "basic", (n, n, n), CIFAR_WIDTHS, residual=residual,
        stem_width=16, stem="cifar", num_classes=10, options=options,
    )


MODELS: dict[str, ModelSpec] = {
    "resnet18": _imagenet("basic", (2, 2, 2, 2)),
    "resnet34": _imagenet("basic", (3, 4, 6, 3)),
    "resnet50": _imagenet("bottleneck", (3, 4, 6, 3)),
    "resnet101": _imagenet("bottleneck", (3, 4, 23, 3)),
    "resnet152": _imagenet("bottleneck", (3, 8, 36, 3)),
    "wide_resnet50_2": _imagenet("bottleneck", (3, 4, 6, 3), base_width=128),
    "wide_resnet101_2": _imagenet("bottleneck", (3, 4, 23, 3), base_width=128),
    "resnext50_32x4d": _imagenet("bottleneck", (3, 4, 6, 3), groups=32, base_width=4),
    "resnext101_32x8d": _imagenet("bottleneck", (3, 4, 23, 3), groups=32, base_width=8),
    "resnext101_64x4d": _imagenet("bottleneck", (3, 4, 23, 3), groups=64, base_width=4),
    "plain18": _imagenet("basic", (2, 2, 2, 2), residual=False),
    "plain34": _imagenet("basic", (3, 4, 6, 3), residual=False),
    "plain50": _imagenet("bottleneck", (3, 4, 6, 3), residual=False),
    "preact_resnet18": _preact("basic", (2, 2, 2, 2)),
    "preact_resnet34": _preact("basic", (3, 4, 6, 3)),
    "preact_resnet50": _preact("bottleneck", (3, 4, 6, 3)),
    "preact_resnet101": _preact("bottleneck", (3, 4, 23, 3)),
    "preact_resnet152": _preact("bottleneck", (3, 8, 36, 3)),
    **{f"resnet{6 * n + 2}": _cifar(n) for n in (3, 5, 7, 9, 18)},
    **{f"plain{6 * n + 2}": _cifar(n, residual=False) for n in (3, 5, 7, 9, 18)},
    "resnet18d": _timm("basic", (2, 2, 2, 2), **_D),
    "resnet26d": _timm("bottleneck", (2, 2, 2, 2), **_D),
    "resnet34d": _timm("basic", (3, 4, 6, 3), **_D),
    "resnet50d": _timm("bottleneck", (3, 4, 6, 3), **_D),
    "resnet101d": _timm("bottleneck", (3, 4, 23, 3), **_D),
    "resnet152d": _timm("bottleneck", (3, 8, 36, 3), **_D),
    "resnet200d": _timm("bottleneck", (3, 24, 36, 3), **_D),
    "resnet10t": _timm("basic", (1, 1, 1, 1), **_T),
    "resnet14t": _timm("bottleneck", (1, 1, 1, 1), **_T),
    "resnet26t": _timm("bottleneck", (2, 2, 2, 2), **_T),
    "seresnet18": _timm("basic", (2, 2, 2, 2), **_SE),
    "seresnet34": _timm("basic", (3, 4, 6, 3), **_SE),
    "seresnet50": _timm("bottleneck", (3, 4, 6, 3), **_SE),
    "seresnet101": _timm("bottleneck", (3, 4, 23, 3), **_SE),
    "seresnet152": _timm("bottleneck", (3, 8, 36, 3), **_SE),
    "seresnext26d_32x4d": _timm("bottleneck", (2, 2, 2, 2), **_RESNEXT_32X4D, **_D, **_SE),
    "seresnext26t_32x4d": _timm("bottleneck", (2, 2, 2, 2), **_RESNEXT_32X4D, **_T, **_SE),
    "seresnext50_32x4d": _timm("bottleneck", (3, 4, 6, 3), **_RESNEXT_32X4D, **_SE),
    "seresnext101_32x4d": _timm("bottleneck", (3, 4, 23, 3), **_RESNEXT_32X4D, **_SE),
    "d2l_resnet18": ModelSpec("d2l", "basic", (2, 2, 2, 2), num_classes=10, in_channels=1),
    "mnist_resnet": ModelSpec("mnist", num_classes=10, in_channels=1),
}

# The variants timm ships under the same name and key layout: torchvision's, ResNet-D, SE-ResNet.
TIMM_MODELS = tuple(
    name for name, spec in MODELS.items() if spec.family == "resnet" and spec.residual
    and spec.widths == IMAGENET_WIDTHS and spec.stem != "cifar"
)
# The variants torchvision ships under the same name and key layout.
TORCHVISION_MODELS = tuple(
    name for name in TIMM_MODELS if MODELS[name].stem == "imagenet"
    and MODELS[name].shortcut == "B" and MODELS[name].attention is None
)


def list_models() -> list[str]:
    """Names of every variant, in registry order."""
    return list(MODELS)


def resolve(name: str, num_classes: int | None, in_channels: int | None, options: dict[str, Any]):
    """Look a variant up and check its options.

    Returns `(spec, num_classes, in_channels, options)` with defaults filled in. Raises ValueError
    naming the valid choices for an unknown name, option or option value.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}")
    spec = MODELS[name]
    accepted = accepted_options(spec)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        valid = ", ".join(accepted) or "none"
        raise ValueError(f"{name} does not take option(s) {', '.join(unknown)}; valid options: {valid}")
    resolved = {**spec.options, **options}
    for key, value in resolved.items():
        choices = OPTION_CHOICES[key]
        if isinstance(choices, Interval):
            if value not in choices:
                raise ValueError(f"option {key}={value!r} is not valid for {name}; choose {choices!r}")
        elif not any(value is c or (type(value) is type(c) and value == c) for c in choices):
            listed = ", ".join(repr(c) for c in choices)
            raise ValueError(f"option {key}={value!r} is not valid for {name}; choose from {listed}")
    if "maxpool" in resolved and resolved["maxpool"] is None:
        resolved["maxpool"] = resolved.get("stem", spec.stem) != "cifar"
    num_classes = spec.num_classes if num_classes is None else num_classes
    in_channels = spec.in_channels if in_channels is None else in_channels
    for label, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{label} must be a positive integer, got {value!r}")
    return spec, num_classes, in_channels, resolved


def accepted_options(spec: ModelSpec) -> dict[str, Any]:
    """The keyword options a variant takes, with their defaults: its own and, for a residual net
    of the 'resnet' or 'preact' family, TRAINING_OPTIONS."""
    residual = spec.family in ("resnet", "preact") and spec.residual
    return {**spec.options, **(TRAINING_OPTIONS if residual else {})}


def resnet_arguments(spec: ModelSpec, num_classes: int, in_channels: int, options: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of the generic `ResNet` (both frameworks') for a resolved variant.

    `BLOCKS[spec.family, spec.block]` is the block class; the seed nets ('d2l', 'mnist') have
    classes of their own and no such arguments.
    """
    stem = options.get("stem", spec.stem)
    return {
        "widths": spec.widths, "num_classes": num_classes, "in_channels": in_channels, "stem": stem,
        "maxpool": options.get("maxpool", stem != "cifar"), "stem_width": spec.stem_width,
        "deep_stem_widths": spec.deep_stem_widths,
        "shortcut": options.get("shortcut", spec.shortcut) if spec.residual else None,
        "groups": spec.groups, "base_width": spec.base_width, "attention": spec.attention,
        "preact": spec.family == "preact",
        "zero_init_residual": options.get("zero_init_residual", False),
        "drop_path_rate": options.get("drop_path_rate", 0.0),
    }


def full_kwargs(name: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """`create_model` keyword arguments with every default filled in; ValueError if invalid."""
    kwargs = dict(kwargs)
    num_classes, in_channels = kwargs.pop("num_classes", None), kwargs.pop("in_channels", None)
    _, num_classes, in_channels, options = resolve(name, num_classes, in_channels, kwargs)
    return {"num_classes": num_classes, "in_channels": in_channels, **options}


# The classifier's key prefix: the last layer of d2l's nn.Sequential; every other family calls it fc.
CLASSIFIER_PREFIXES = {"d2l": "7."}


def classifier_prefix(name: str) -> str:
    """The key prefix of the variant's classifier ('fc.'), the layer fine-tuning may replace."""
    return CLASSIFIER_PREFIXES.get(MODELS[name].family, "fc.")
