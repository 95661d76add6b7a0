"""Training: one TrainConfig -> data -> model -> optimizer -> restore -> loop -> checkpoint -> export.

Framework-neutral (plain Python and numpy, shared by both trainers): `config`, `augment` (the
augmentation spec), `setup`, `sampling`, `schedule`, `initial_weights`, `data`, `workdir`,
`progress` (a run's position; after-step work), `interrupts` (SIGTERM/SIGINT), `event_files`
(TensorBoard), `launcher` (local processes), `init_from` (the weights `--init-from` starts from)
and `evaluate` (scripts/evaluate.py); the last two load porting and each framework's half by
name, when called. JAX only: `device_transforms`, `optim`, `step`, `checkpoints`, `processes`,
`loop` (the Flax trainer), `predict` (evaluation's Flax half). The torch trainer is
`torch_ref.training.loop`, evaluation's torch half `torch_ref.evaluation.predict`; `train(config)`
runs whichever `config.framework` names.
"""

from __future__ import annotations

import importlib

TRAINERS = {"flax": "flax_resnet.training.loop", "torch": "torch_ref.training.loop"}


def train(config, **kwargs):
    """Run `config` with the trainer of `config.framework`; see `flax_resnet.training.loop.train`."""
    return importlib.import_module(TRAINERS[config.framework]).train(config, **kwargs)
