"""Stochastic depth's draws at a train step, in JAX alone, so both trainers drop the same branches.

The Flax train step hands its net `rngs=nnx.Rngs(dropout=step_dropout_key(rng, step))`; each
DropPath, in call order, takes the stream's next key and draws its keep mask from it
(`flax_resnet.models.layers.DropPath`). The torch trainer gives its twin the very masks that
stream yields (`step_keep_masks`), as it gives it the very pixels. No Flax here: torch_ref's
trainer imports this module.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from flax_resnet.core.plan import DROPOUT_STREAM


def step_dropout_key(rng, step):
    """The key of train step `step`'s 'dropout' stream, from the run's augmentation key `rng`."""
    return jax.random.fold_in(jax.random.fold_in(rng, DROPOUT_STREAM), step)


def step_keep_masks(rng, step, batch_size: int, keep_probs: tuple[float, ...]) -> jax.Array:
    """What a net's DropPaths draw at train step `step`: bool (len(keep_probs), batch_size), row i
    the i-th DropPath's in call order, True where a sample keeps its branch (probability
    keep_probs[i]).

    Row i comes from the i-th key of the step's 'dropout' stream, fold_in(step key, i) (an
    nnx.Rngs stream folds its key with the count of keys it handed out before), drawn as
    `layers.draw_keep_mask` draws: Bernoulli(keep_prob) per sample.
    """
    key = step_dropout_key(rng, step)
    rows = [jax.random.bernoulli(jax.random.fold_in(key, index), keep_prob, (batch_size,))
            for index, keep_prob in enumerate(keep_probs)]
    return jnp.stack(rows) if rows else jnp.zeros((0, batch_size), bool)
