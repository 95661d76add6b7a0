"""Training: one TrainConfig -> data -> model -> optimizer -> restore -> loop -> checkpoint -> export.

Framework-neutral (plain Python and numpy, shared by both trainers): `config`, `augment` (the
augmentation spec), `setup`, `sampling`, `schedule`, `initial_weights`, `data`, `workdir`,
`progress` (a run's position; after-step work), `interrupts` (SIGTERM/SIGINT), `event_files`
(TensorBoard) and `launcher` (local processes). JAX only: `device_transforms`, `optim`, `step`,
`checkpoints`, `processes`, `loop` (the Flax trainer). The torch trainer is `torch_ref.training.loop`;
`train(config)` runs whichever `config.framework` names.
"""

from __future__ import annotations

import importlib

TRAINERS = {"flax": "flax_resnet.training.loop", "torch": "torch_ref.training.loop"}


def train(config, **kwargs):
    """Run `config` with the trainer of `config.framework`; see `flax_resnet.training.loop.train`."""
    return importlib.import_module(TRAINERS[config.framework]).train(config, **kwargs)
