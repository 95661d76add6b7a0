"""An exponential moving average of the weights and BatchNorm buffers, as torchvision's trainer keeps it.

torchvision's reference (references/classification/utils.py) subclasses
`torch.optim.swa_utils.AveragedModel` with `avg_fn = decay * averaged + (1 - decay) * current`
and `use_buffers=True`; `torch_ref.training.ema` is that class. Here the average is a pytree next
to the TrainState, updated by pure functions that jit: the same arithmetic on every parameter and
buffer, the same `n_averaged` counter (part of the state, so a checkpoint resumes it exactly).
The decay and the update timing are `flax_resnet.core.ema`'s.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flax_resnet.core.ema import in_warmup, update_due


class ExponentialMovingAverage(NamedTuple):
    """The averaged model: what AveragedModel holds. Has a TrainState's `params` and `batch_stats`,
    so `step.merge_model` and `step.eval_step` take it in place of one."""

    params: nnx.State
    batch_stats: nnx.State  # BatchNorm running mean/var and num_batches_tracked, averaged too
    n_averaged: jax.Array  # int32: updates since the last reset; 0 makes the next update a copy


def init_ema(params: nnx.State, batch_stats: nnx.State) -> ExponentialMovingAverage:
    """A copy of the model's state with n_averaged 0, as AveragedModel's deep copy of the model."""
    # Own buffers: the train state is donated to each step.
    return ExponentialMovingAverage(jax.tree.map(jnp.array, params), jax.tree.map(jnp.array, batch_stats),
                                    jnp.zeros((), jnp.int32))


def update_parameters(ema: ExponentialMovingAverage, params: nnx.State, batch_stats: nnx.State,
                      decay: float) -> ExponentialMovingAverage:
    """AveragedModel.update_parameters with torchvision's average over parameters and buffers:
    a copy when n_averaged is 0, else decay * averaged + (1 - decay) * current; n_averaged + 1."""
    first = ema.n_averaged == 0

    def average(averaged, current):
        if jnp.issubdtype(averaged.dtype, jnp.floating):
            blended = decay * averaged + (1 - decay) * current
        else:
            # An integer buffer (num_batches_tracked): torch computes the average in its default
            # float32 and copy_ truncates it back toward zero.
            blended = (np.float32(decay) * averaged.astype(jnp.float32)
                       + np.float32(1 - decay) * current.astype(jnp.float32)).astype(averaged.dtype)
        return jnp.where(first, current, blended)

    return ExponentialMovingAverage(jax.tree.map(average, ema.params, params),
                                    jax.tree.map(average, ema.batch_stats, batch_stats), ema.n_averaged + 1)


def update_after_step(ema: ExponentialMovingAverage, params: nnx.State, batch_stats: nnx.State, step, *,
                      decay: float, steps_per_epoch: int, every: int,
                      warmup_epochs: float) -> ExponentialMovingAverage:
    """The EMA after train step `step` (0-based over the run; the step's new params and batch_stats),
    as torchvision's train_one_epoch: updated after every `every`-th batch of an epoch, and in the
    warmup epochs n_averaged set back to 0 after the update. `step` may be traced."""
    def update():
        updated = update_parameters(ema, params, batch_stats, decay)
        n_averaged = jnp.where(in_warmup(step, steps_per_epoch, warmup_epochs), 0, updated.n_averaged)
        return updated._replace(n_averaged=n_averaged.astype(jnp.int32))

    return jax.lax.cond(update_due(step, steps_per_epoch, every), update, lambda: ema)


def averaged_model_state_dict(ema: ExponentialMovingAverage) -> dict[str, np.ndarray]:
    """The average as torch's AveragedModel.state_dict() holds it: 'n_averaged' (int64) and the
    model's entries under 'module.', in torch keys and layouts; torchvision saves this as
    checkpoint['model_ema']."""
    from flax_resnet.porting.state_dict import state_to_torch  # porting loads the whole model side

    entries = {**state_to_torch(ema.params), **state_to_torch(ema.batch_stats)}
    return {"n_averaged": np.asarray(ema.n_averaged, np.int64),
            **{f"module.{key}": value for key, value in entries.items()}}
