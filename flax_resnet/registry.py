"""The one list of model variants. Both `flax_resnet` and `torch_ref` build from it.

Plain Python only (no JAX, no torch), so either framework can import it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

IMAGENET_WIDTHS = (64, 128, 256, 512)
CIFAR_WIDTHS = (16, 32, 64)

# Options each family accepts, with their defaults.
# `maxpool=None` means "as the stem implies": on after the 'imagenet' stem, off after 'cifar'.
_IMAGENET_OPTIONS = {"stem": "imagenet", "maxpool": None, "zero_init_residual": False}
_PLAIN_OPTIONS = {"stem": "imagenet", "maxpool": None}
_PREACT_OPTIONS = {"stem": "imagenet", "maxpool": None}
_CIFAR_OPTIONS = {"shortcut": "A", "zero_init_residual": False}

OPTION_CHOICES = {
    "stem": ("imagenet", "cifar"),
    "maxpool": (True, False, None),
    "zero_init_residual": (True, False),
    "shortcut": ("A", "B"),
}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything that tells one variant from another.

    family: 'resnet' (torchvision layout, also plain and CIFAR nets), 'preact', 'd2l' or 'mnist'.
    block: 'basic' or 'bottleneck'.
    layers: blocks per stage.
    widths: `planes` of each stage (a bottleneck stage outputs 4x that).
    residual: False for the plain twins (no shortcut at all).
    groups, base_width: ResNeXt and wide nets, as in torchvision.
    stem_width: channels after the stem.
    stem: the stem when the variant has no `stem` option.
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
    num_classes: int = 1000
    in_channels: int = 3
    options: dict[str, Any] = dataclasses.field(default_factory=dict)


def _imagenet(block, layers, residual=True, **kwargs):
    options = dict(_IMAGENET_OPTIONS if residual else _PLAIN_OPTIONS)
    return ModelSpec("resnet", block, layers, residual=residual, options=options, **kwargs)


def _preact(block, layers):
    return ModelSpec("preact", block, layers, options=dict(_PREACT_OPTIONS))


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
    "d2l_resnet18": ModelSpec("d2l", "basic", (2, 2, 2, 2), num_classes=10, in_channels=1),
    "mnist_resnet": ModelSpec("mnist", num_classes=10, in_channels=1),
}

# The variants torchvision ships under the same name and key layout.
TORCHVISION_MODELS = tuple(
    name for name, spec in MODELS.items() if spec.family == "resnet" and spec.residual
    and spec.widths == IMAGENET_WIDTHS
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
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        valid = ", ".join(spec.options) or "none"
        raise ValueError(f"{name} does not take option(s) {', '.join(unknown)}; valid options: {valid}")
    resolved = {**spec.options, **options}
    for key, value in resolved.items():
        if not any(value is c or (type(value) is type(c) and value == c) for c in OPTION_CHOICES[key]):
            choices = ", ".join(repr(c) for c in OPTION_CHOICES[key])
            raise ValueError(f"option {key}={value!r} is not valid for {name}; choose from {choices}")
    if "maxpool" in resolved and resolved["maxpool"] is None:
        resolved["maxpool"] = resolved["stem"] == "imagenet"
    num_classes = spec.num_classes if num_classes is None else num_classes
    in_channels = spec.in_channels if in_channels is None else in_channels
    for label, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{label} must be a positive integer, got {value!r}")
    return spec, num_classes, in_channels, resolved


def resnet_arguments(spec: ModelSpec, num_classes: int, in_channels: int, options: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of the generic `ResNet` (both frameworks') for a resolved variant.

    `BLOCKS[spec.family, spec.block]` is the block class; the seed nets ('d2l', 'mnist') have
    classes of their own and no such arguments.
    """
    stem = options.get("stem", spec.stem)
    return {
        "widths": spec.widths, "num_classes": num_classes, "in_channels": in_channels, "stem": stem,
        "maxpool": options.get("maxpool", stem == "imagenet"), "stem_width": spec.stem_width,
        "shortcut": options.get("shortcut", "B") if spec.residual else None, "groups": spec.groups,
        "base_width": spec.base_width, "preact": spec.family == "preact",
        "zero_init_residual": options.get("zero_init_residual", False),
    }

