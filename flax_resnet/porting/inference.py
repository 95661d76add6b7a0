"""Which registered variant a torch-layout state_dict is, read from its key names and shapes.

Shapes tell the family, block, blocks per stage, widths, groups and base width (so resnet50,
wide_resnet50_2 and resnext50_32x4d differ), the stem (7x7 or 3x3 conv, or timm's deep stem
`conv1.0/.3/.6`), the shortcut (a projection has weights, at `downsample.0` or, after ResNet-D's
average-pool, at `downsample.1`; CIFAR option A has none), squeeze-excitation (`se.fc1`),
num_classes and in_channels: resnet50, resnet50d and seresnet50 differ. They cannot tell
whether the stem has a max-pool, nor a CIFAR option-A net from its plain twin: the first is
assumed as the variant's default and reported, the second is an ambiguity the caller resolves.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from flax_resnet.core.files import InputError
from flax_resnet.core.registry import MODELS, OPTION_CHOICES, accepted_options, full_kwargs
from flax_resnet.porting.state_dict import canonical_key

# Options the weights cannot show; the variant's default is used and reported as assumed.
INVISIBLE_OPTIONS = ("maxpool",)


class VariantError(InputError):
    """The weights fit no registered variant, or the one asked for."""


class AmbiguousVariantError(VariantError):
    """The weights fit several variants; `candidates` lists them."""

    def __init__(self, candidates: list[Variant]):
        self.candidates = candidates
        names = ", ".join(c.describe(brief=True) for c in candidates)
        super().__init__(f"the weights fit more than one variant: {names}; name the model "
                         f"(and option) to choose")


@dataclasses.dataclass(frozen=True)
class Variant:
    """A variant and its `create_model` keyword arguments (every default filled in).

    `assumed` names the arguments that neither the weights nor the caller decided.
    """

    name: str
    kwargs: dict[str, Any]
    assumed: tuple[str, ...] = ()

    def describe(self, brief: bool = False) -> str:
        """E.g. "resnet18 (num_classes=10, in_channels=3, stem='imagenet'); assumed maxpool=True ...".

        brief: the name and the options the weights decide, nothing else.
        """
        shown = {k: v for k, v in self.kwargs.items() if k not in self.assumed
                 and k != "zero_init_residual" and not (brief and k in ("num_classes", "in_channels"))}
        text = self.name + (f" ({', '.join(f'{k}={v!r}' for k, v in shown.items())})" if shown else "")
        if self.assumed and not brief:
            guesses = ", ".join(f"{k}={self.kwargs[k]!r}" for k in self.assumed)
            text += f"; assumed {guesses} (the weights cannot show it)"
        return text


def infer_variant(state_dict: Mapping[str, Any], *, name: str | None = None,
                  num_classes: int | None = None, in_channels: int | None = None,
                  **options) -> Variant:
    """The registered variant whose parameters have exactly these names and shapes.

    Values need only a `.shape` (numpy, torch, JAX). Keys may be spelled as `porting` accepts
    (`module.`, `shortcut.`, `linear.`). What the caller passes narrows the candidates
    (`name`, options) or overrides the shapes (`num_classes`, `in_channels`).
    Raises AmbiguousVariantError listing the candidates when several fit, VariantError when the
    layout is not a registered variant or does not fit the given name and options.
    """
    shapes = {canonical_key(k): tuple(v.shape) for k, v in state_dict.items()}
    candidates = _candidates(shapes)
    if not candidates:
        raise VariantError(f"the weights fit no registered variant ({_layout_summary(shapes)})")
    fitting = [c for c in candidates if (name is None or c.name == name) and _accepts(c, options)]
    if not fitting:
        wanted = " ".join(filter(None, [name, ", ".join(f"{k}={v!r}" for k, v in options.items())]))
        found = " or ".join(c.describe(brief=True) for c in candidates)
        raise VariantError(f"the weights look like {found}, not {wanted}")
    variants = []
    for candidate in fitting:
        kwargs = dict(candidate.kwargs)
        kwargs.update(options)
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        if in_channels is not None:
            kwargs["in_channels"] = in_channels
        assumed = tuple(k for k in INVISIBLE_OPTIONS if k in MODELS[candidate.name].options
                        and k not in options)
        variants.append(Variant(candidate.name, full_kwargs(candidate.name, kwargs), assumed))
    if len(variants) > 1:
        raise AmbiguousVariantError(variants)
    return variants[0]


def _accepts(candidate: Variant, options: Mapping[str, Any]) -> bool:
    accepted = accepted_options(MODELS[candidate.name])
    return all(key in accepted and candidate.kwargs.get(key, value) == value
               for key, value in options.items())


def _candidates(shapes: dict[str, tuple]) -> list[Variant]:
    if "0.0.weight" in shapes and "7.weight" in shapes:
        return [Variant("d2l_resnet18", {"num_classes": shapes["7.weight"][0],
                                         "in_channels": shapes["0.0.weight"][1]})]
    if "rblock1.conv1.weight" in shapes and "conv1.weight" in shapes and "fc.weight" in shapes:
        return [Variant("mnist_resnet", {"num_classes": shapes["fc.weight"][0],
                                         "in_channels": shapes["conv1.weight"][1]})]
    layout = _resnet_layout(shapes)
    if layout is None:
        return []
    found = []
    for name, spec in MODELS.items():
        if spec.family not in ("resnet", "preact") or any(
                getattr(spec, field) != layout[field] for field in (
                    "family", "block", "layers", "widths", "stem_width", "groups", "base_width",
                    "attention")):
            continue
        if layout["stem"] == "deep" and spec.deep_stem_widths != layout["deep_stem_widths"]:
            continue
        options = {}
        if "stem" in spec.options:
            if layout["stem"] not in OPTION_CHOICES["stem"]:
                continue
            options["stem"] = layout["stem"]
        elif spec.stem != layout["stem"]:
            continue
        if layout["projection"]:
            if not spec.residual:
                continue
            if "shortcut" in spec.options:
                if layout["projection"] not in OPTION_CHOICES["shortcut"]:
                    continue
                options["shortcut"] = layout["projection"]
            elif spec.shortcut != layout["projection"]:
                continue
        elif spec.residual:
            # No shortcut weights: option A (parameter-free), if the variant has that option.
            if "shortcut" not in spec.options:
                continue
            options["shortcut"] = "A"
        found.append(Variant(name, {"num_classes": layout["num_classes"],
                                    "in_channels": layout["in_channels"], **options}))
    return found


def _resnet_layout(shapes: dict[str, tuple]) -> dict[str, Any] | None:
    """The structural facts of a torchvision- or timm-layout ResNet, or None if it is not one."""
    stem = _stem(shapes)
    fc = shapes.get("fc.weight")
    if stem is None or fc is None:
        return None
    layers = []
    while any(k.startswith(f"layer{len(layers) + 1}.") for k in shapes):
        stage = len(layers) + 1
        blocks = {int(m.group(1)) for k in shapes if (m := re.match(rf"layer{stage}\.(\d+)\.conv1\.", k))}
        if not blocks or blocks != set(range(len(blocks))):
            return None
        layers.append(len(blocks))
    if not layers:
        return None
    bottleneck = "layer1.0.conv3.weight" in shapes
    last_conv = "conv3" if bottleneck else "conv2"
    expansion = 4 if bottleneck else 1
    try:
        widths = tuple(shapes[f"layer{s + 1}.0.{last_conv}.weight"][0] // expansion
                       for s in range(len(layers)))
        middle = shapes["layer1.0.conv2.weight"]
    except KeyError:
        return None
    groups = middle[0] // middle[1]
    stem_kind, deep_stem_widths, stem_width, in_channels = stem
    return {
        "family": "preact" if "final_bn.weight" in shapes else "resnet",
        "block": "bottleneck" if bottleneck else "basic",
        "layers": tuple(layers),
        "widths": widths,
        "stem_width": stem_width,
        "groups": groups,
        "base_width": middle[0] // groups * 64 // widths[0],
        "stem": stem_kind,
        "deep_stem_widths": deep_stem_widths,
        "projection": _projection(shapes),
        "attention": _attention(shapes),
        "num_classes": fc[0],
        "in_channels": in_channels,
    }


def _stem(shapes: dict[str, tuple]):
    """(kind, the deep stem's first two widths, output channels, input channels), or None.

    timm's deep stem is a Sequential: convs at `conv1.0`, `conv1.3`, `conv1.6`.
    """
    deep = [shapes.get(f"conv1.{index}.weight") for index in (0, 3, 6)]
    if all(deep):
        if any(len(shape) != 4 or shape[2] != 3 for shape in deep):
            return None
        return "deep", (deep[0][0], deep[1][0]), deep[2][0], deep[0][1]
    conv = shapes.get("conv1.weight")
    if conv is None or len(conv) != 4 or conv[2] not in (3, 7):
        return None
    return ("imagenet" if conv[2] == 7 else "cifar"), None, conv[0], conv[1]


def _attention(shapes: dict[str, tuple]) -> str | None:
    """None (no `se.` keys), 'se' (squeeze-excitation: `se.fc1`, `se.fc2`) or 'unrecognized'
    (another module under timm's `se` name, such as ECA's `se.conv`)."""
    modules = {m.group(1) for key in shapes if (m := re.search(r"\.se\.([^.]+)\.", key))}
    if not modules:
        return None
    return "se" if modules == {"fc1", "fc2"} else "unrecognized"


def _projection(shapes: dict[str, tuple]) -> str | None:
    """None (no projection weights), 'B' (the conv at `downsample.0`) or 'D' (at `downsample.1`,
    after ResNet-D's average-pool); 'mixed' fits no variant."""
    indices = {m.group(1) for key, shape in shapes.items() if len(shape) == 4
               and (m := re.search(r"\.downsample\.(\d+)\.weight$", key))}
    return {frozenset(): None, frozenset({"0"}): "B", frozenset({"1"}): "D"}.get(
        frozenset(indices), "mixed")


def _layout_summary(shapes: dict[str, tuple]) -> str:
    layout = _resnet_layout(shapes)
    if layout is None:
        keys = list(shapes)
        shown = ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
        return f"no ResNet layout recognized in keys {shown}"
    facts = {k: v for k, v in layout.items() if k not in ("num_classes", "in_channels")}
    return ", ".join(f"{k} {v}" for k, v in facts.items())
