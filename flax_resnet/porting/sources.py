"""The weights people have, wherever they keep them, as one numpy state_dict in the twin's keys.

    a PyTorch file     any name (.pth, .pt, .bin, .th, .safetensors: recognised by content), any
                       wrapper dict, any spelling `layouts` knows (module., shortcut, linear, transformers')
    a hub directory    transformers' `save_pretrained` or timm's `save_for_hf`: model.safetensors or
                       pytorch_model.bin, with the config.json that says what they are
    a Flax checkpoint  `flax_resnet.save`'s directory
    a run folder       `scripts/train.py --workdir`: config.json and the exported model.safetensors

`read_source` reads one; `resolve_variant` decides which registered variant it is, and
`build_model` puts the weights into that variant's Flax model. Every expected failure is a
SourceError whose one-line message names the path.
"""

from __future__ import annotations

import dataclasses
import os
import types
from collections.abc import Mapping
from typing import Any

import numpy as np

from flax_resnet.core.files import PathError, read_json_object
from flax_resnet.core.initial_weights import initial_state_dict
from flax_resnet.core.layouts import describe_spelling, detect_spelling, to_twin
from flax_resnet.core.pretrained import is_pretrained_name
from flax_resnet.core.registry import MODELS, classifier_prefix, full_kwargs
from flax_resnet.models import model_skeleton
from flax_resnet.porting import checkpoint, hub
from flax_resnet.porting.checkpoint import CheckpointError
from flax_resnet.porting.hub import HubConfigError, Preprocessing
from flax_resnet.porting.inference import AmbiguousVariantError, Variant, VariantError, infer_variant
from flax_resnet.porting.state_dict import StateDictMismatchError, load_torch_state_dict, to_torch_state_dict
from flax_resnet.porting.torch_files import NoStateDictError, WeightFileError, read_torch_file, require_finite

HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
KINDS = {"file": "PyTorch file", "transformers": "transformers directory", "timm": "timm directory",
         "hub": "directory of weights", "flax": "Flax checkpoint", "run": "training run"}


class SourceError(PathError):
    """Weights that cannot be used as asked; the message names the path and the problem."""


@dataclasses.dataclass(frozen=True)
class Source:
    """Weights read from a path, in the twin's keys, with what the path said about them.

    kind: a key of KINDS. spelling: the layouts the keys were written in (`layouts.detect_spelling`),
    so they can be written back the same way. model, model_kwargs: the variant the source names
    (a Flax checkpoint, a run, a timm architecture). hub_config: transformers' config.json as
    read. facts: what that config says, in the registry's terms. headless: the weights have no
    classifier (transformers' ResNetModel, timm with num_classes=0).
    """

    path: str
    kind: str
    state_dict: dict[str, np.ndarray]
    spelling: tuple[str, ...] = ()
    model: str | None = None
    model_kwargs: dict[str, Any] | None = None
    hub_config: dict[str, Any] | None = None
    facts: dict[str, Any] | None = None
    preprocessing: Preprocessing | None = None
    labels: tuple[str, ...] | None = None
    headless: bool = False
    origin: str | None = None  # where a Flax checkpoint's or a run's weights were ported from

    def describe(self) -> str:
        """'transformers directory, keyed as transformers' ResNetForImageClassification'."""
        if self.kind in ("flax", "run"):
            return KINDS[self.kind] + (f" (from the {self.origin})" if self.origin else "")
        text = KINDS[self.kind] + (f" of {self.model}" if self.kind == "timm" else "")
        return f"{text}, keyed as {describe_spelling(self.spelling)}"

    def record(self) -> dict[str, Any]:
        """What a Flax checkpoint or a run keeps about its source (JSON values)."""
        record = {"kind": self.kind, "path": self.path, "spelling": list(self.spelling)}
        if self.hub_config is not None:
            record["hub_config"] = self.hub_config
        if self.preprocessing is not None:
            record["preprocessing"] = self.preprocessing.to_json()
        if self.labels is not None:
            record["labels"] = list(self.labels)
        return record

    def recorded(self, record: Mapping[str, Any] | None) -> Source:
        """This source with the spelling, hub config, preprocessing and labels of an earlier one."""
        if not record:
            return self
        preprocessing = record.get("preprocessing")
        return dataclasses.replace(
            self, spelling=tuple(record.get("spelling", ())), hub_config=record.get("hub_config"),
            preprocessing=self.preprocessing if preprocessing is None else Preprocessing.from_json(preprocessing),
            labels=tuple(record["labels"]) if record.get("labels") else None,
            origin=f"{KINDS.get(record.get('kind'), 'weights')} {record.get('path')}, keyed as "
                   f"{describe_spelling(record.get('spelling', ()))}")


def read_source(path, *, key: str | None = None) -> Source:
    """Read the weights at `path` (see the module doc). `key` picks the entry of a pickled dict
    that holds the state_dict. `path` may also be a pretrained name ('torchvision:resnet50.IMAGENET1K_V2',
    'hf-hub:timm/resnet50.a1_in1k'): its file, downloaded once (`named`). Raises SourceError, or
    PretrainedError for a name or a download."""
    path = os.fspath(path)
    if is_pretrained_name(path):
        from flax_resnet.porting.named import read_named

        return read_named(path, key=key)
    if not os.path.exists(path):
        raise SourceError(path, "no such file or directory")
    if not os.path.isdir(path):
        # A hub's weight file read on its own still has its config.json beside it.
        config = _hub_config_beside(path)
        if config is not None:
            return dataclasses.replace(_from_hub(os.path.dirname(path) or ".", path, config, key), path=path)
        return _from_file(path, key)
    if checkpoint.is_checkpoint(path):
        return _from_checkpoint(path)
    config_path = os.path.join(path, "config.json")
    config = read_json_object(config_path, SourceError) if os.path.isfile(config_path) else None
    if config is not None and {"framework", "model", "model_kwargs"} <= set(config):
        return _from_run(path, config)
    weights = next((os.path.join(path, name) for name in HUB_WEIGHT_FILES
                    if os.path.isfile(os.path.join(path, name))), None)
    if weights is None:
        if os.path.isfile(os.path.join(path, "model.safetensors.index.json")):
            raise SourceError(path, "holds a sharded checkpoint (model.safetensors.index.json); a "
                                    "ResNet fits one file: save it unsharded")
        raise SourceError(path, f"not a Flax checkpoint (no {checkpoint.METADATA_FILE}), a run folder "
                                f"or a hub directory (no {' or '.join(HUB_WEIGHT_FILES)})")
    return _from_hub(path, weights, config, key)


def _hub_config_beside(path: str) -> dict[str, Any] | None:
    """The transformers or timm config.json in the file's folder, if there is one (anything else there is not ours)."""
    beside = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
    try:
        config = read_json_object(beside, SourceError) if os.path.isfile(beside) else None
    except SourceError:
        return None
    return config if config is not None and (hub.is_transformers_config(config) or hub.is_timm_config(config)) else None


def _from_file(path: str, key: str | None) -> Source:
    raw = _guarded(read_torch_file, path, key=key, keep_prefix=True)
    spelling = detect_spelling(raw)
    headless = spelling[-1:] == ("transformers_backbone",)
    return Source(path, "file", _respelled(raw, spelling, path), spelling, headless=headless)


def _from_hub(path: str, weights: str, config, key) -> Source:
    source = _from_file(weights, key)
    source = dataclasses.replace(source, path=path, kind="hub")
    try:
        if config is not None and hub.is_transformers_config(config):
            facts = hub.transformers_facts(config)
            processor = os.path.join(path, "preprocessor_config.json")
            preprocessing = (hub.transformers_preprocessing(read_json_object(processor, SourceError))
                             if os.path.isfile(processor) else None)
            return dataclasses.replace(source, kind="transformers", hub_config=dict(config), facts=facts,
                                       preprocessing=preprocessing,
                                       labels=tuple(facts["labels"]) if facts["labels"] else None,
                                       headless=source.headless or facts["num_classes"] == 0)
        if config is not None and hub.is_timm_config(config):
            facts = hub.timm_facts(config)
            return dataclasses.replace(source, kind="timm", model=facts["architecture"],
                                       preprocessing=facts["preprocessing"],
                                       labels=tuple(facts["labels"]) if facts["labels"] else None,
                                       headless=facts["num_classes"] == 0)
    except HubConfigError as error:
        raise SourceError(os.path.join(path, "config.json"), str(error)) from None
    return source


def _from_checkpoint(path: str) -> Source:
    model = _guarded(checkpoint.load, path)
    name, kwargs = checkpoint.model_recipe(model)
    state_dict = to_torch_state_dict(model)
    _guarded(require_finite, state_dict, path)
    source = Source(path, "flax", state_dict, model=name, model_kwargs=kwargs)
    return source.recorded(_guarded(checkpoint.read_source_record, path))


def _from_run(path: str, config: Mapping[str, Any]) -> Source:
    weights = os.path.join(path, "model.safetensors")
    if not os.path.isfile(weights):
        raise SourceError(path, "is a run folder without model.safetensors (it is written when the run "
                                "finishes; resume the run, or port one of its checkpoints)")
    state_dict = _guarded(read_torch_file, weights)
    try:
        kwargs = full_kwargs(config["model"], config["model_kwargs"])
    except (TypeError, ValueError) as error:
        raise SourceError(os.path.join(path, "config.json"), f"names no valid variant ({error})") from None
    augment = config.get("augment") or {}
    preprocessing = Preprocessing(_tuple(augment.get("mean")), _tuple(augment.get("std")),
                                  augment.get("image_size"), origin="the run's config.json")
    source = Source(path, "run", state_dict, model=config["model"], model_kwargs=kwargs,
                    preprocessing=preprocessing)
    init = config.get("init") or {}
    record = dict(init.get("source") or {})
    if record and init.get("classifier") != "kept":
        record.pop("labels", None)  # the run trained a classifier of its own
    if record:
        record.pop("preprocessing", None)  # the run's own preprocessing is what its weights expect now
    return source.recorded(record)


def resolve_variant(source: Source, *, name: str | None = None, num_classes: int | None = None,
                    in_channels: int | None = None, **options) -> tuple[Variant, str | None]:
    """The variant to build for `source`, and what the weights look like when that differs from `name`.

    A Flax checkpoint or a run names its variant; the arguments may repeat it but not contradict
    it. Otherwise the variant is inferred from the keys and shapes (narrowed by `name`, a timm
    architecture, and the options), then checked against a transformers config. Raises
    SourceError, with the exact flags to add when several variants fit.
    """
    options = {k: v for k, v in options.items() if v is not None}
    if source.kind in ("flax", "run"):
        return _recorded_variant(source, name, num_classes, in_channels, options), None
    wanted = name or source.model
    if wanted is not None and wanted not in MODELS:
        raise SourceError(source.path, f"unknown model {name!r}; valid models: {', '.join(MODELS)}" if name else
                          f"timm's architecture {wanted!r} is not a registered variant; name the variant to "
                          f"build with --model")
    try:
        variant = infer_variant(_shapes(source), name=wanted, num_classes=num_classes,
                                in_channels=in_channels, **options)
        hint = None
    except AmbiguousVariantError as error:
        flags = " or ".join(f"--model {candidate.name}" for candidate in error.candidates)
        found = ", ".join(candidate.describe(brief=True) for candidate in error.candidates)
        raise SourceError(source.path, f"the weights fit more than one variant: {found}; add {flags} "
                                       f"to choose") from None
    except VariantError as error:
        if name is None:
            raise SourceError(source.path, str(error)) from None
        hint = str(error)
        # Build what was asked for; loading the weights into it then says exactly what does not fit.
        asked = {"num_classes": num_classes, "in_channels": in_channels, **options}
        try:
            variant = Variant(name, full_kwargs(name, {k: v for k, v in asked.items() if v is not None}))
        except ValueError as refused:
            raise SourceError(source.path, str(refused)) from None
    except ValueError as error:  # an option the registry refuses, e.g. num_classes=0
        raise SourceError(source.path, str(error)) from None
    if source.kind in ("timm", "transformers") and hint is None:
        # The hub's config names the architecture, so nothing about it is assumed (timm's and
        # transformers' ResNets all have the max-pool).
        variant = dataclasses.replace(variant, assumed=())
    if source.headless and num_classes is None:
        variant = dataclasses.replace(variant, kwargs={**variant.kwargs, "num_classes": MODELS[variant.name].num_classes})
    if source.facts is not None and hint is None:
        facts = source.facts if not source.headless else {**source.facts, "num_classes": 0}
        try:
            hub.check_transformers_fit(facts, variant.name, variant.kwargs)
        except HubConfigError as error:
            raise SourceError(source.path, str(error)) from None
    return variant, hint


def _recorded_variant(source: Source, name, num_classes, in_channels, options) -> Variant:
    variant = Variant(source.model, source.model_kwargs)
    given = {"model": name, "num_classes": num_classes, "in_channels": in_channels, **options}
    saved = {"model": variant.name, **variant.kwargs}
    clashes = [f"{key}={value!r} (saved: {saved.get(key)!r})" for key, value in given.items()
               if value is not None and saved.get(key) != value]
    if clashes:
        raise SourceError(source.path, f"is a {KINDS[source.kind]} of {variant.describe()}; the flags "
                                       f"contradict it: {', '.join(clashes)}")
    return variant


def _shapes(source: Source) -> dict[str, Any]:
    """The source's shapes, with a stand-in classifier when it has none (inference reads its input width)."""
    shapes = {key: types.SimpleNamespace(shape=tuple(value.shape)) for key, value in source.state_dict.items()}
    if source.headless:
        width = _feature_width(source.state_dict)
        shapes["fc.weight"] = types.SimpleNamespace(shape=(1, width))
        shapes["fc.bias"] = types.SimpleNamespace(shape=(1,))
    return shapes


def _feature_width(state_dict: Mapping[str, np.ndarray]) -> int:
    """Channels of the last stage: the output of the last block's last BatchNorm."""
    last = max((key for key in state_dict if key.startswith("layer") and key.endswith("running_mean")
                and ".downsample." not in key), key=_natural_order, default=None)
    if last is None:
        raise VariantError("no stages found")
    return int(state_dict[last].shape[0])


def _natural_order(key: str):
    return [int(part) if part.isdigit() else part for part in key.replace("layer", "layer.").split(".")]


def build_model(source: Source, variant: Variant, *, hint: str | None = None, seed: int = 0,
                classifier: Mapping[str, np.ndarray] | None = None):
    """The Flax model of `variant` holding the source's weights (strict: every key must fit).

    A headless source gets `classifier` (twin-keyed arrays) or else a freshly initialized one
    (the initialization training starts from, drawn from `seed`). Raises SourceError listing
    the missing, unexpected and mis-shaped keys.
    """
    model = model_skeleton(variant.name, **variant.kwargs)
    state_dict = dict(source.state_dict)
    if source.headless or classifier is not None:
        state_dict.update(classifier if classifier is not None else
                          fresh_classifier(variant, model, seed))
    try:
        load_torch_state_dict(model, state_dict)
    except StateDictMismatchError as error:
        advice = f" ({hint})" if hint else ""
        raise SourceError(source.path, f"does not fit {variant.name}: {error.summary()}{advice}") from None
    return model


def fresh_classifier(variant: Variant, model, seed: int) -> dict[str, np.ndarray]:
    """Initial values of the variant's classifier, as a training run of it would start."""
    from flax_resnet.porting.state_dict import torch_shapes

    prefix = classifier_prefix(variant.name)
    shapes = {k: v for k, v in torch_shapes(model).items() if k.startswith(prefix)}
    return initial_state_dict(variant.name, variant.kwargs, shapes, seed)


def _respelled(raw: Mapping[str, np.ndarray], spelling, path: str) -> dict[str, np.ndarray]:
    try:
        return to_twin(raw, spelling)
    except ValueError as error:
        raise SourceError(path, str(error)) from None


def _tuple(values):
    return None if values is None else tuple(float(v) for v in values)


def _guarded(function, *args, **kwargs):
    try:
        return function(*args, **kwargs)
    except NoStateDictError as error:
        hint = "; name the entry that holds it with --key NAME" if error.keys else ""
        raise SourceError(error.path, error.problem + hint) from None
    except (WeightFileError, CheckpointError) as error:
        raise SourceError(error.path, error.problem) from None


@dataclasses.dataclass(frozen=True)
class Weights:
    """Complete weights of one variant, ready for either framework (what evaluation needs)."""

    source: Source
    variant: Variant
    state_dict: dict[str, np.ndarray]  # twin keys, float32, num_batches_tracked included
    notes: tuple[str, ...]


def open_weights(path, *, key: str | None = None, name: str | None = None, **options) -> Weights:
    """Read `path` and decide its variant as `resolve_variant` does; the weights must be complete
    (a classifier included). Raises SourceError."""
    source = read_source(path, key=key)
    variant, hint = resolve_variant(source, name=name, **options)
    if source.headless:
        raise SourceError(path, f"has no classifier ({source.describe()}); fine-tune one first "
                                f"(scripts/train.py --init-from {path})")
    model = build_model(source, variant, hint=hint)
    notes = [f"{path}: {source.describe()}", f"model: {variant.describe()}"]
    if source.preprocessing is not None:
        notes.append(f"the weights expect {source.preprocessing.describe()}")
    return Weights(source, variant, to_torch_state_dict(model), tuple(notes))
