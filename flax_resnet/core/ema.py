"""The framework-neutral half of torchvision's EMA of the weights: its decay and its timing.

torchvision's reference trainer (references/classification/train.py, --model-ema,
--model-ema-steps, --model-ema-decay; the V2 ResNet recipe: decay 0.99998 every 32 steps) keeps
an average of the weights and BatchNorm buffers (`flax_resnet.training.ema` and its twin
`torch_ref.training.ema`). It scales the decay with the run's size, updates after every
`every`-th batch of each epoch, and during the learning-rate warmup epochs makes every update a
plain copy. These functions use only Python operators, so they take a Python int or a JAX array
for the step.
"""

from __future__ import annotations

from flax_resnet.core.files import InputError


class EmaSettingsError(InputError):
    """EMA settings outside their range."""


def adjusted_decay(decay: float, *, batch_size: int, every: int, epochs: int) -> float:
    """The decay torchvision's train.py actually uses for a run (after pycls's adjustment).

    It keeps the averaging horizon a fixed share of the run: alpha = 1 - decay is scaled by
    world_size * batch_size * every / epochs and capped at 1. batch_size here is the images of one
    step over all processes, torchvision's world_size * batch_size.
    """
    if not 0.0 <= decay <= 1.0:
        raise EmaSettingsError(f"EMA decay must be in [0, 1], got {decay}")
    for name, value in (("batch_size", batch_size), ("every", every), ("epochs", epochs)):
        if value < 1:
            raise EmaSettingsError(f"EMA {name} must be at least 1, got {value}")
    adjust = batch_size * every / epochs
    alpha = min(1.0, (1.0 - decay) * adjust)
    return 1.0 - alpha


def run_decay(config) -> float:
    """The decay a TrainConfig's --model-ema uses: `adjusted_decay` of --model-ema-decay for its
    global batch, --model-ema-steps and epochs."""
    return adjusted_decay(config.model_ema_decay, batch_size=config.batch_size, every=config.model_ema_steps,
                          epochs=config.epochs)


def update_due(step, steps_per_epoch: int, every: int):
    """Whether the EMA is updated after train step `step` (0-based over the run): torchvision
    updates when the step's index in its epoch is a multiple of `every`, the epoch's first included."""
    return step % steps_per_epoch % every == 0


def in_warmup(step, steps_per_epoch: int, warmup_epochs: float):
    """Whether train step `step` is in the learning-rate warmup, where torchvision sets the EMA's
    n_averaged back to 0 after each update, so that the next update copies the weights again."""
    return step // steps_per_epoch < warmup_epochs
