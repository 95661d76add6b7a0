"""The model hubs' config files, read and written as plain JSON (neither library is needed).

transformers' `config.json` (a `ResNetConfig`) decides the architecture of a
`ResNetForImageClassification` / `ResNetModel`; timm's `config.json` names the architecture and
carries `pretrained_cfg`, the preprocessing the weights were trained with. Both are checked
against what the registry can build: a setting that has no registered equivalent is refused,
never ignored (a v1 bottleneck ported as v1.5 would give wrong numbers with the right shapes).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import safetensors.numpy

from flax_resnet.core.files import InputError, atomic_directory
from flax_resnet.core.layouts import from_twin
from flax_resnet.core.registry import IMAGENET_WIDTHS, MODELS

# ResNetConfig's defaults (transformers/models/resnet/configuration_resnet.py), for the fields a
# saved config.json may leave out. `num_labels` defaults to 2 when there is no `id2label`.
TRANSFORMERS_DEFAULTS = {
    "num_channels": 3, "embedding_size": 64, "hidden_sizes": [256, 512, 1024, 2048], "depths": [3, 4, 6, 3],
    "layer_type": "bottleneck", "hidden_act": "relu", "downsample_in_first_stage": False,
    "downsample_in_bottleneck": False,
}
EXPANSION = {"basic": 1, "bottleneck": 4}  # ResNetBottleNeckLayer's `reduction`
# timm's create_model arguments that the registry's nets match as they are.
TIMM_NEUTRAL_ARGS = {"in_chans", "num_classes", "global_pool", "drop_rate", "drop_path_rate", "pretrained_cfg"}


class HubConfigError(InputError):
    """A config the registry has no equivalent for; the message names the setting."""


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How the weights expect their input at evaluation, as the source recorded it.

    mean, std: per channel, in [0, 1] pixel units. input_size: the square side the net was
    trained at. crop_pct: the eval resize makes the image input_size / crop_pct, then cuts out the
    centre input_size (timm's and transformers' eval transform). interpolation: 'bilinear' or
    'bicubic'. origin: where it was read.
    """

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    input_size: int | None = None
    crop_pct: float | None = None
    interpolation: str | None = None
    origin: str = ""

    def to_json(self) -> dict[str, Any]:
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, values: Mapping[str, Any]) -> Preprocessing:
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names})

    def describe(self) -> str:
        parts = [f"{name} {_short(value)}" for name, value in (
            ("mean", self.mean), ("std", self.std), ("input_size", self.input_size),
            ("crop_pct", self.crop_pct), ("interpolation", self.interpolation)) if value is not None]
        return f"{', '.join(parts)} (from {self.origin})"


def _short(value) -> str:
    if isinstance(value, tuple):
        return "(" + ", ".join(f"{v:g}" for v in value) + ")"
    return f"{value:g}" if isinstance(value, float) else str(value)


# ---------------------------------------------------------------------------------------------
# transformers
# ---------------------------------------------------------------------------------------------

def is_transformers_config(config: Mapping[str, Any]) -> bool:
    return "model_type" in config or "architectures" in config


def transformers_facts(config: Mapping[str, Any]) -> dict[str, Any]:
    """What a transformers ResNetConfig says about the network, in the registry's terms.

    Returns {'block', 'layers', 'widths', 'stem_width', 'in_channels', 'num_classes', 'labels'}
    (`num_classes` 0 for a net without classifier). Raises HubConfigError for a model type or a
    setting the registry has no equivalent for.
    """
    model_type = config.get("model_type", "resnet")
    if model_type != "resnet":
        raise HubConfigError(f"a transformers {model_type!r} model, not a ResNet (model_type 'resnet')")
    values = {**TRANSFORMERS_DEFAULTS, **{k: v for k, v in config.items() if k in TRANSFORMERS_DEFAULTS}}
    block = values["layer_type"]
    if block not in EXPANSION:
        raise HubConfigError(f"layer_type {block!r} is neither 'basic' nor 'bottleneck'")
    if values["hidden_act"] != "relu":
        raise HubConfigError(f"hidden_act {values['hidden_act']!r}: the registry's nets use relu")
    if values["downsample_in_first_stage"]:
        raise HubConfigError("downsample_in_first_stage=true (a stride-2 first stage): no registered "
                             "variant has it")
    if values["downsample_in_bottleneck"]:
        raise HubConfigError("downsample_in_bottleneck=true puts the stride on the first 1x1 conv "
                             "(ResNet v1); the registry's bottleneck nets are v1.5 (stride on the 3x3)")
    labels = _labels(config)
    architectures = config.get("architectures") or []
    headless = architectures == ["ResNetModel"] or (labels is not None and not labels)
    return {
        "block": block,
        "layers": tuple(values["depths"]),
        "widths": tuple(size // EXPANSION[block] for size in values["hidden_sizes"]),
        "stem_width": values["embedding_size"],
        "in_channels": values["num_channels"],
        "num_classes": 0 if headless else (len(labels) if labels is not None else 2),
        "labels": labels or None,
    }


def _labels(config: Mapping[str, Any]) -> list[str] | None:
    id2label = config.get("id2label")
    if id2label is None:
        count = config.get("num_labels")
        return None if count is None else [f"LABEL_{i}" for i in range(count)]
    try:
        indexed = {int(k): str(v) for k, v in id2label.items()}
    except (AttributeError, ValueError):
        raise HubConfigError("id2label is not a map of class indices to names") from None
    if sorted(indexed) != list(range(len(indexed))):
        raise HubConfigError("id2label's indices are not 0..n-1")
    return [indexed[i] for i in range(len(indexed))]


def check_transformers_fit(facts: Mapping[str, Any], name: str, kwargs: Mapping[str, Any]) -> None:
    """HubConfigError unless variant `name(**kwargs)` is the network the config describes."""
    spec = MODELS[name]
    want = {"block": spec.block, "layers": spec.layers, "widths": spec.widths, "stem_width": spec.stem_width,
            "in_channels": kwargs["in_channels"]}
    clashes = [f"{_as_config(key, facts)} but the weights are {_as_config(key, {**facts, key: value})}"
               for key, value in want.items()
               if (tuple(facts[key]) if isinstance(value, tuple) else facts[key]) != value]
    if facts["num_classes"] and facts["num_classes"] != kwargs["num_classes"]:
        clashes.append(f"{facts['num_classes']} labels but the classifier has {kwargs['num_classes']} outputs")
    if clashes:
        raise HubConfigError(f"config.json does not describe these weights: {'; '.join(clashes)}")


def _as_config(key: str, facts: Mapping[str, Any]):
    """A fact in config.json's own terms (hidden_sizes, not planes)."""
    if key == "widths":
        return "hidden_sizes " + str([w * EXPANSION[facts["block"]] for w in facts["widths"]])
    names = {"block": "layer_type", "layers": "depths", "stem_width": "embedding_size",
             "in_channels": "num_channels"}
    value = facts[key]
    return f"{names[key]} {list(value) if isinstance(value, tuple) else value!r}"


def transformers_config(name: str, kwargs: Mapping[str, Any], *, labels=None,
                        base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """config.json for a `ResNetForImageClassification` that is variant `name(**kwargs)`.

    `base` (a config read from a transformers directory) keeps its other fields, `labels` names
    the classes (default: transformers' LABEL_i). Raises HubConfigError for a variant transformers'
    ResNet cannot express (CIFAR stem, no max-pool, wide, ResNeXt, pre-activation, plain, ...).
    """
    spec = MODELS[name]
    problems = []
    if spec.family != "resnet" or not spec.residual:
        problems.append(f"{name} is not a torchvision-style residual net")
    if spec.groups != 1 or spec.base_width != 64:
        problems.append("grouped or widened bottlenecks (ResNeXt, wide) are not expressible")
    if spec.widths != IMAGENET_WIDTHS:
        problems.append(f"stage widths {spec.widths} are not (64, 128, 256, 512)")
    if kwargs.get("stem", spec.stem) != "imagenet" or not kwargs.get("maxpool", True):
        problems.append("its stem is not the 7x7 conv with a max-pool")
    extra = sorted(set(spec.options) - {"stem", "maxpool", "zero_init_residual"})
    if extra:
        problems.append(f"options {', '.join(extra)} are not expressible")
    if problems:
        raise HubConfigError(f"transformers' ResNet cannot express {name}: {'; '.join(problems)}")
    num_classes = kwargs["num_classes"]
    if labels is None or len(labels) != num_classes:
        labels = [f"LABEL_{i}" for i in range(num_classes)]
    config = dict(base or {})
    for stale in ("num_labels", "out_features", "out_indices", "stage_names"):
        config.pop(stale, None)  # recomputed by transformers from the fields below
    config.update({
        "architectures": ["ResNetForImageClassification"], "model_type": "resnet",
        "num_channels": kwargs["in_channels"], "embedding_size": spec.stem_width,
        "hidden_sizes": [w * EXPANSION[spec.block] for w in spec.widths], "depths": list(spec.layers),
        "layer_type": spec.block, "hidden_act": "relu", "downsample_in_first_stage": False,
        "downsample_in_bottleneck": False,
        "id2label": {str(i): label for i, label in enumerate(labels)},
        "label2id": {label: i for i, label in enumerate(labels)},
    })
    return config


def is_transformers_directory(path) -> bool:
    """A directory whose config.json is a transformers ResNet's (what `write_transformers_directory` makes)."""
    try:
        with open(os.path.join(os.fspath(path), "config.json")) as handle:
            return json.load(handle).get("model_type") == "resnet"
    except (OSError, ValueError, AttributeError):
        return False


# Every parameter and buffer of transformers' ResNetForImageClassification, by kind (ResNetConvLayer
# and ResNetShortCut hold one bias-free conv and one BatchNorm each).
_TRANSFORMERS_KEY = re.compile(
    r"^(resnet\.embedder\.embedder|resnet\.encoder\.stages\.\d+\.layers\.\d+\.(layer\.\d+|shortcut))\."
    r"(?P<leaf>convolution\.weight|normalization\.(weight|bias|running_mean|running_var|num_batches_tracked))$"
    r"|^classifier\.1\.(?P<linear>weight|bias)$")


def foreign_keys(state_dict: Mapping[str, np.ndarray]) -> list[str]:
    """Keys (in transformers' spelling) that transformers' ResNet has no place for, or whose rank
    is wrong there: what a variant with parts of its own (a deep stem, squeeze-excitation) leaves."""
    foreign = []
    for key, value in state_dict.items():
        match = _TRANSFORMERS_KEY.match(key)
        rank = np.ndim(value)
        if match is None or (match["leaf"] == "convolution.weight" and rank != 4) or (
                match["leaf"] and match["leaf"] != "convolution.weight" and not key.endswith("num_batches_tracked")
                and rank != 1) or (match["linear"] == "weight" and rank != 2):
            foreign.append(key)
    return foreign


def write_transformers_directory(path, state_dict: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> None:
    """Write what `ResNetForImageClassification.from_pretrained(path)` loads: config.json and
    model.safetensors, from twin-keyed arrays (respelled here). The directory appears complete
    or not at all; an existing one is replaced. Raises HubConfigError, writing nothing, if some
    weights have no place in transformers' ResNet."""
    respelled = from_twin(state_dict, ("transformers",))
    foreign = foreign_keys(respelled)
    if foreign:
        raise HubConfigError(f"transformers' ResNet has no place for {len(foreign)} of these tensors: "
                             f"{', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}")
    tensors = {key: np.array(value, order="C") for key, value in respelled.items()}
    with atomic_directory(path) as temporary:
        safetensors.numpy.save_file(tensors, os.path.join(temporary, "model.safetensors"),
                                    metadata={"format": "pt"})
        with open(os.path.join(temporary, "config.json"), "w") as handle:
            json.dump(config, handle, indent=2)
            handle.write("\n")


def transformers_preprocessing(config: Mapping[str, Any]) -> Preprocessing | None:
    """preprocessor_config.json (an image processor's settings) as a Preprocessing."""
    if "image_mean" not in config and "size" not in config:
        return None
    size = config.get("size")
    if isinstance(size, Mapping):
        size = size.get("shortest_edge") or size.get("height")
    # PIL resampling codes, which transformers' image processors store.
    resample = {2: "bilinear", 3: "bicubic"}.get(config.get("resample"))
    return Preprocessing(_tuple(config.get("image_mean")), _tuple(config.get("image_std")), size,
                         config.get("crop_pct"), resample, "transformers' preprocessor_config.json")


# ---------------------------------------------------------------------------------------------
# timm
# ---------------------------------------------------------------------------------------------

def is_timm_config(config: Mapping[str, Any]) -> bool:
    return "architecture" in config


def timm_facts(config: Mapping[str, Any]) -> dict[str, Any]:
    """{'architecture', 'num_classes', 'in_channels', 'preprocessing', 'labels'} of timm's config.json.

    Raises HubConfigError for creation arguments the registry's nets do not have (a pooling other
    than average, an output stride, ...).
    """
    arguments = dict(config.get("model_args") or {})
    unknown = sorted(set(arguments) - TIMM_NEUTRAL_ARGS)
    if unknown:
        raise HubConfigError(f"timm model_args {', '.join(unknown)} have no registered equivalent")
    pool = arguments.get("global_pool", config.get("global_pool", "avg"))
    if pool not in ("avg", "", None):
        raise HubConfigError(f"timm global_pool {pool!r}: the registry's nets average-pool")
    cfg = config.get("pretrained_cfg") or {}
    input_size = cfg.get("input_size")
    preprocessing = Preprocessing(_tuple(cfg.get("mean")), _tuple(cfg.get("std")),
                                  input_size[-1] if input_size else None, cfg.get("crop_pct"),
                                  cfg.get("interpolation"), "timm's pretrained_cfg")
    names = config.get("label_names") or cfg.get("label_names")
    if isinstance(names, Mapping):
        names = [names[k] for k in sorted(names, key=int)]
    in_channels = arguments.get("in_chans", input_size[0] if input_size else None)
    return {"architecture": config["architecture"], "num_classes": config.get("num_classes"),
            "in_channels": in_channels, "preprocessing": preprocessing,
            "labels": list(names) if names else None}


def _tuple(values):
    return None if values is None else tuple(float(v) for v in values)
