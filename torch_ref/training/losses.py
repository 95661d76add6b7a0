"""Losses over soft targets in torch: the twins of `flax_resnet.training.losses`."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-example cross entropy against target probabilities [batch, classes], smoothed towards
    uniform by `label_smoothing` (torch's own semantics for probability targets)."""
    return F.cross_entropy(logits, targets, reduction="none", label_smoothing=label_smoothing)


def binary_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, smoothing: float = 0.0,
                         target_threshold: float | None = None) -> torch.Tensor:
    """Per-example mean over classes of the sigmoid cross entropy, as timm's
    `BinaryCrossEntropy(smoothing, target_threshold)` (whose reduction='mean' is the batch mean of these).

    targets: int labels [batch] (one-hot with off = smoothing / classes, on = 1 - smoothing + off)
    or probabilities [batch, classes], used as they are (smoothing must then be 0). With
    `target_threshold`, targets above it become 1, the rest 0.
    """
    if targets.ndim == 1:
        off_value = smoothing / logits.shape[-1]
        on_value = 1.0 - smoothing + off_value
        targets = torch.full_like(logits, off_value).scatter_(1, targets.long()[:, None], on_value)
    elif smoothing:
        raise ValueError(f"smoothing {smoothing} applies to int labels only; dense targets come smoothed "
                         "(timm's BinaryCrossEntropy ignores it for them): pass smoothing=0")
    targets = targets.to(logits.dtype)
    if target_threshold is not None:
        targets = (targets > target_threshold).to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(-1)


def train_losses(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None, *, loss: str,
                 label_smoothing: float, target_threshold: float | None) -> torch.Tensor:
    """Per-example losses of a train step: against the int `labels`, or the soft `targets` of a
    mixed batch (None when it was not mixed; timm's mixing put the smoothing inside them)."""
    if loss == "bce":
        if targets is None:
            return binary_cross_entropy(logits, labels, label_smoothing, target_threshold)
        return binary_cross_entropy(logits, targets, 0.0, target_threshold)
    if targets is None:
        return F.cross_entropy(logits, labels, reduction="none", label_smoothing=label_smoothing)
    return soft_cross_entropy(logits, targets, label_smoothing)
