"""`--init-from`: both trainers start a fine-tuning run from the very same arrays. Framework-neutral.

Reading weight files is porting's work (`flax_resnet.porting.fine_tune`: torch reads pickles,
orbax reads Flax checkpoints). It is loaded by name, only when a run has `init_from`, the way
`flax_resnet.training.train` loads a trainer; so this module imports neither JAX nor torch, and
a torch run reads its source with the same code as a Flax run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from flax_resnet.core import frameworks
from flax_resnet.core.config import ConfigError, TrainConfig
from flax_resnet.core.pretrained import PretrainedError


@dataclasses.dataclass(frozen=True)
class Start:
    """What a fine-tuning run starts from: every state_dict entry, what was done, and config.json's record."""

    state_dict: dict[str, Any]  # twin keys, numpy arrays
    notes: tuple[str, ...]
    record: dict[str, Any]


def open_init(config: TrainConfig, channels: int):
    """(config completed from its `init_from` source, the opened source or None), for data with
    `channels` channels. Raises ConfigError."""
    if config.init_from is None:
        return config, None
    porting = frameworks.module("fine_tuning")
    try:
        return porting.open_init(config, channels)
    except (porting.InitError, PretrainedError) as error:  # a pretrained name that cannot be had
        raise ConfigError(f"--init-from {error}") from None


def starting_state(opened, config: TrainConfig, model_kwargs: Mapping[str, Any],
                   shapes: Mapping[str, tuple[int, ...]]) -> Start:
    """The Start for a model with these state_dict `shapes` (see
    `flax_resnet.porting.fine_tune.starting_state`). Raises ConfigError, one line listing the
    keys, when the source is another model."""
    porting = frameworks.module("fine_tuning")
    try:
        state_dict, notes, record = porting.starting_state(opened, config.model, model_kwargs, shapes, config.seed)
    except porting.InitError as error:
        raise ConfigError(f"--init-from {error}") from None
    return Start(state_dict, (*opened.notes, *notes), record)
