"""How the files people have spell a ResNet's keys: one table of name rules per layout. Plain Python.

The twin's spelling is torchvision's (`conv1`, `bn1`, `layer1.0.conv1`, `downsample.0/1`, `fc`);
timm keeps it for its ResNets. Every other spelling is a list of rules, each a pair of key-prefix
templates: the twin's and the layout's. `{s}` stands for a number, `{s-1}` for that number minus
one (transformers counts stages and convs from 0 where torchvision counts from 1). A rule rewrites
the start of a key and keeps the rest (`weight`, `running_var`, ...), so it works in both
directions and for any depth. Keys no rule matches pass through unchanged, so a strict load
still names them.

A spelling is a tuple of layout names applied from the outside in, e.g. `("data_parallel",
"transformers")`: `to_twin` undoes it, `from_twin` writes it back.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import Any

_FIELD = re.compile(r"\{(\w+)([+-]\d+)?\}")


@dataclasses.dataclass(frozen=True)
class NameRule:
    """Keys starting with `twin` (the twin's spelling) start with `other` in the layout."""

    twin: str
    other: str

    def rewrite(self, key: str, *, to_twin: bool) -> str | None:
        """The key in the other spelling, or None if this rule does not apply to it."""
        source, target = (self.other, self.twin) if to_twin else (self.twin, self.other)
        match = _compile(source).match(key)
        if match is None:
            return None
        # Field values in the twin's numbering: undo the source template's offsets.
        values = {name: int(text) - _offsets(source)[name] for name, text in match.groupdict().items()}
        if any(value + _offsets(target)[name] < 0 for name, value in values.items()):
            return None  # e.g. a stage 0 that the other numbering cannot express
        return _format(target, values) + key[match.end():]


@dataclasses.dataclass(frozen=True)
class Layout:
    """A named key spelling and its rules, tried in order; the first that matches applies."""

    name: str
    description: str
    rules: tuple[NameRule, ...]

    def to_twin(self, key: str) -> str:
        return self._rewrite(key, to_twin=True)

    def from_twin(self, key: str) -> str:
        return self._rewrite(key, to_twin=False)

    def _rewrite(self, key: str, *, to_twin: bool) -> str:
        for rule in self.rules:
            rewritten = rule.rewrite(key, to_twin=to_twin)
            if rewritten is not None:
                return rewritten
        return key


def _stage_rules(prefix: str) -> tuple[NameRule, ...]:
    """transformers' ResNetModel under `prefix` (modeling_resnet.py: ResNetEmbeddings, ResNetStage,
    ResNetBasicLayer / ResNetBottleNeckLayer, ResNetShortCut)."""
    block = prefix + "encoder.stages.{s-1}.layers.{b}."
    return (
        NameRule("conv1.", prefix + "embedder.embedder.convolution."),
        NameRule("bn1.", prefix + "embedder.embedder.normalization."),
        NameRule("layer{s}.{b}.conv{k}.", block + "layer.{k-1}.convolution."),
        NameRule("layer{s}.{b}.bn{k}.", block + "layer.{k-1}.normalization."),
        NameRule("layer{s}.{b}.downsample.0.", block + "shortcut.convolution."),
        NameRule("layer{s}.{b}.downsample.1.", block + "shortcut.normalization."),
    )


LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (
    Layout("twin", "torchvision's names", ()),
    # ResNetForImageClassification: the backbone under `resnet.`, and
    # classifier = nn.Sequential(nn.Flatten(), nn.Linear(...)), so the linear layer is `classifier.1`.
    Layout("transformers", "transformers' ResNetForImageClassification",
           _stage_rules("resnet.") + (NameRule("fc.", "classifier.1."),)),
    Layout("transformers_backbone", "transformers' ResNetModel (no classifier)", _stage_rules("")),
    Layout("data_parallel", "`module.` prefixes (DataParallel)", (NameRule("", "module."),)),
    # Many CIFAR repositories (kuangliu/pytorch-cifar, akamaster/pytorch_resnet_cifar10, ...).
    Layout("cifar_shortcut", "`shortcut` for `downsample`",
           (NameRule("layer{s}.{b}.downsample.", "layer{s}.{b}.shortcut."),)),
    Layout("cifar_linear", "`linear` for `fc`", (NameRule("fc.", "linear."),)),
)}

# Prefixes that tell transformers' layouts apart from each other and from the twin's.
_TRANSFORMERS_MARKS = {"transformers": ("resnet.embedder.", "resnet.encoder."),
                       "transformers_backbone": ("embedder.embedder.", "encoder.stages.")}


def detect_spelling(keys: Iterable[str]) -> tuple[str, ...]:
    """The layouts a state_dict's keys are spelled in, outermost first; () for the twin's own."""
    keys = list(keys)
    spelling = []
    while keys and all(key.startswith("module.") for key in keys):
        spelling.append("data_parallel")
        keys = [LAYOUTS["data_parallel"].to_twin(key) for key in keys]
    for name, marks in _TRANSFORMERS_MARKS.items():
        if any(key.startswith(marks) for key in keys):
            return (*spelling, name)
    for name in ("cifar_shortcut", "cifar_linear"):
        layout = LAYOUTS[name]
        if any(layout.to_twin(key) != key for key in keys):
            spelling.append(name)
    return tuple(spelling)


def to_twin(state_dict: Mapping[str, Any], spelling: Iterable[str]) -> dict[str, Any]:
    """The state_dict with its keys in the twin's spelling (values untouched, order kept)."""
    layouts = [LAYOUTS[name] for name in spelling]

    def respell(key):
        for layout in layouts:
            key = layout.to_twin(key)
        return key

    return _respelled(state_dict, respell)


def from_twin(state_dict: Mapping[str, Any], spelling: Iterable[str]) -> dict[str, Any]:
    """The inverse of `to_twin`: twin keys written in `spelling`."""
    layouts = [LAYOUTS[name] for name in reversed(tuple(spelling))]

    def respell(key):
        for layout in layouts:
            key = layout.from_twin(key)
        return key

    return _respelled(state_dict, respell)


def canonical_key(key: str) -> str:
    """One key of a torchvision-like checkpoint in the twin's spelling: `module.` prefixes
    removed, `shortcut` and `linear` read as `downsample` and `fc`."""
    while key.startswith("module."):
        key = key[len("module."):]
    for name in ("cifar_shortcut", "cifar_linear"):
        key = LAYOUTS[name].to_twin(key)
    return key


def describe_spelling(spelling: Iterable[str]) -> str:
    """E.g. "torchvision's names with `module.` prefixes (DataParallel), `linear` for `fc`"."""
    spelling = tuple(spelling)
    base = [name for name in spelling if name.startswith("transformers")] or ["twin"]
    changes = [LAYOUTS[name].description for name in spelling if name not in base]
    return LAYOUTS[base[0]].description + (" with " + ", ".join(changes) if changes else "")


def _respelled(state_dict: Mapping[str, Any], respell) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in state_dict.items():
        new = respell(key)
        if new in result:
            raise ValueError(f"two keys respell to {new!r}; the state_dict mixes spellings")
        result[new] = value
    return result


_COMPILED: dict[str, re.Pattern] = {}


def _compile(template: str) -> re.Pattern:
    if template not in _COMPILED:
        pattern, position = "", 0
        for match in _FIELD.finditer(template):
            pattern += re.escape(template[position:match.start()]) + rf"(?P<{match.group(1)}>\d+)"
            position = match.end()
        _COMPILED[template] = re.compile(pattern + re.escape(template[position:]))
    return _COMPILED[template]


def _offsets(template: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2) or 0) for m in _FIELD.finditer(template)}


def _format(template: str, values: Mapping[str, int]) -> str:
    def field(match):
        return str(values[match.group(1)] + int(match.group(2) or 0))

    return _FIELD.sub(field, template)
