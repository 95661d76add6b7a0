"""The weights a fine-tuning run starts from (`TrainConfig.init_from`), for either trainer.

`open_init` reads the source once and completes the config from it (the variant, when the run
names none; the normalization and input size the weights expect, when the run sets none).
`starting_state` then gives every entry of the model's state_dict: the source's, except the
classifier when the run has other classes (or the source has none), which starts as a
from-scratch run's would. Any other difference is refused, listing the keys.
Trainers reach this through `flax_resnet.core.run.init_from`, which imports neither framework.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from flax_resnet.core.initial_weights import initial_state_dict
from flax_resnet.core.registry import TRAINING_OPTIONS, classifier_prefix, full_kwargs
from flax_resnet.porting.inference import Variant
from flax_resnet.porting.sources import Source, SourceError, read_source, resolve_variant
from flax_resnet.porting.state_dict import StateDictMismatchError

InitError = SourceError  # what the trainers turn into a ConfigError


@dataclasses.dataclass(frozen=True)
class OpenedSource:
    """A source read for a run, and the variant its weights are (None if they fit none)."""

    source: Source
    variant: Variant | None
    notes: tuple[str, ...]


def open_init(config, channels: int):
    """(config completed from the source, OpenedSource) for data with `channels` channels.

    Raises InitError."""
    source = read_source(config.init_from, key=config.init_key)
    notes = [f"--init-from {config.init_from}: {source.describe()}"]
    try:
        # The run's options narrow the choice (and decide what the weights cannot show, as maxpool).
        variant, _ = resolve_variant(source, **(config.model_options if config.model is None else {}))
    except SourceError:
        if config.model is None:
            raise
        variant = None  # the run names its model; the strict comparison will say what differs
    changes: dict[str, Any] = {}
    if config.model is None:
        changes["model"] = variant.name
        # How the source was trained (its drop_path_rate) is not part of the variant: this run says.
        changes["model_options"] = {k: v for k, v in variant.kwargs.items()
                                    if k not in ("num_classes", "in_channels", *TRAINING_OPTIONS)}
        notes.append(f"model from the source: {variant.describe(brief=True)}")
    preprocessing = source.preprocessing
    if preprocessing is not None:
        if (config.mean is None and preprocessing.mean is not None and preprocessing.std is not None
                and len(preprocessing.mean) == channels):
            changes["mean"], changes["std"] = preprocessing.mean, preprocessing.std
        if config.image_size is None and preprocessing.input_size is not None:
            changes["image_size"] = preprocessing.input_size
        taken = {k: v for k, v in changes.items() if k in ("mean", "std", "image_size")}
        if taken:
            notes.append(f"preprocessing as the weights expect: "
                         f"{', '.join(f'{k} {_short(v)}' for k, v in taken.items())} (from {preprocessing.origin})")
    return dataclasses.replace(config, **changes), OpenedSource(source, variant, tuple(notes))


def starting_state(opened: OpenedSource, name: str, model_kwargs: Mapping[str, Any],
                   shapes: Mapping[str, tuple[int, ...]], seed: int):
    """(state_dict, notes, record): every entry of `shapes` (twin keys, torch-layout shapes).

    The classifier is the source's when its shape fits, else initialized from `seed` as a new
    run's would be. `num_batches_tracked` that the source lacks count as 0. Floating values are
    float32. record: what config.json keeps about the start. Raises InitError for any other
    missing, unexpected or mis-shaped key.
    """
    source = opened.source
    prefix = classifier_prefix(name)
    state = {k: np.asarray(v) for k, v in source.state_dict.items()}
    model_classifier = {k: tuple(v) for k, v in shapes.items() if k.startswith(prefix)}
    source_classifier = {k: tuple(state[k].shape) for k in state if k.startswith(prefix)}
    notes = []
    if source_classifier == model_classifier:
        classifier = "kept"
    else:
        if source.headless or not source_classifier:
            classifier = "added"
            notes.append(f"the source has no classifier: {prefix[:-1]} initialized for "
                         f"{model_kwargs['num_classes']} classes")
        else:
            classifier = "re-initialized"
            had = _outputs(source_classifier)
            notes.append(f"classifier re-initialized: the source has {had} classes, this run "
                         f"{model_kwargs['num_classes']}")
        state = {k: v for k, v in state.items() if not k.startswith(prefix)}
        state.update(initial_state_dict(name, model_kwargs, model_classifier, seed))
    for key in shapes:
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = np.zeros((), np.int64)
    missing = [k for k in shapes if k not in state]
    unexpected = [k for k in state if k not in shapes]
    mismatched = [(k, tuple(state[k].shape), tuple(shapes[k])) for k in shapes
                  if k in state and tuple(state[k].shape) != tuple(shapes[k])]
    if missing or unexpected or mismatched:
        summary = StateDictMismatchError(missing, unexpected, mismatched).summary()
        looks = (f" (the weights are {opened.variant.describe(brief=True)})"
                 if opened.variant is not None and (opened.variant.name != name or _options_differ(
                     opened.variant, name, model_kwargs)) else "")
        raise InitError(source.path, f"does not fit {name}: {summary}{looks}")
    state = {k: v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v for k, v in state.items()}
    record = {"path": source.path, "source": source.record(), "classifier": classifier}
    return {k: state[k] for k in shapes}, notes, record


def _short(value) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in value) + ")" if isinstance(value, tuple) else str(value)


def _outputs(classifier_shapes: Mapping[str, tuple[int, ...]]) -> int:
    return next(shape[0] for key, shape in classifier_shapes.items() if key.endswith("weight"))


def _options_differ(variant: Variant, name: str, model_kwargs: Mapping[str, Any]) -> bool:
    built = full_kwargs(name, model_kwargs)
    return any(built.get(k) != v for k, v in variant.kwargs.items() if k not in ("num_classes", "in_channels"))
