"""Losses over soft targets: cross entropy (torch's semantics) and timm's binary cross entropy.

Per-example values, so a step can both average them for the gradient and sum them for its
metrics. `torch_ref.training.losses` holds the torch twins.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def soft_cross_entropy(logits, targets, label_smoothing: float = 0.0):
    """Per-example cross entropy against target probabilities [batch, classes], as torch's
    `F.cross_entropy(logits, targets, label_smoothing=..., reduction='none')`: the targets are
    first moved towards uniform, targets * (1 - smoothing) + smoothing / classes."""
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def binary_cross_entropy(logits, targets, smoothing: float = 0.0, target_threshold: float | None = None):
    """Per-example mean over classes of the sigmoid cross entropy, as timm's
    `BinaryCrossEntropy(smoothing, target_threshold)`: its reduction='mean' is the batch mean of these.

    targets: int labels [batch], one-hot encoded with off = smoothing / classes and
    on = 1 - smoothing + off; or probabilities [batch, classes] (mixed targets), used as they are:
    as in timm, dense targets come smoothed from the mixing (`mix_batch`'s label_smoothing), so
    a smoothing here raises. With `target_threshold`, targets above it become 1, the rest 0.
    """
    if targets.ndim == 1:
        off_value = smoothing / logits.shape[-1]
        on_value = 1.0 - smoothing + off_value
        targets = jnp.where(targets[:, None] == jnp.arange(logits.shape[-1]), on_value, off_value)
    elif smoothing:
        raise ValueError(f"smoothing {smoothing} applies to int labels only; dense targets come smoothed "
                         "(timm's BinaryCrossEntropy ignores it for them): pass smoothing=0")
    targets = targets.astype(logits.dtype)
    if target_threshold is not None:
        targets = (targets > target_threshold).astype(logits.dtype)
    return optax.sigmoid_binary_cross_entropy(logits, targets).mean(-1)


def train_losses(logits, labels, targets, *, loss: str, label_smoothing: float, target_threshold: float | None):
    """Per-example losses of a train step: against the int `labels`, or the soft `targets` of a
    mixed batch (None when it was not mixed; timm's mixing put the smoothing inside them)."""
    if loss == "bce":
        if targets is None:
            return binary_cross_entropy(logits, labels, label_smoothing, target_threshold)
        return binary_cross_entropy(logits, targets, 0.0, target_threshold)
    if targets is None:
        if label_smoothing:
            return soft_cross_entropy(logits, jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return soft_cross_entropy(logits, targets, label_smoothing)
