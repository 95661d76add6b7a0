"""The train and eval steps in torch: the twins of `flax_resnet.training.step`.

Images arrive already augmented and normalized (NCHW float32) from the same JAX functions the
Flax step runs, so the two frameworks see the same pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from torch_ref.training.optim import set_hyperparameters


def train_step(model, optimizer, images, labels, *, schedule, update: int | None, grad_accum: int = 1,
               precision: str = "fp32", label_smoothing: float = 0.0, freeze_bn: bool = False) -> dict[str, float]:
    """Forward and backward of one batch, then optimizer update number `update` with its lr and
    momentum from `schedule` (None: accumulate the gradient only).

    With grad_accum k each batch contributes 1/k of its mean-loss gradient, so an update applies
    the mean gradient of k batches (as optax.MultiSteps). BatchNorm statistics move every batch,
    unless `freeze_bn`: then BatchNorm normalizes with its running statistics and keeps them.
    Returns {'loss', 'correct', 'count'} sums over the batch.
    """
    model.train()
    if freeze_bn:
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits = model(images)
    logits = logits.float()
    losses = F.cross_entropy(logits, labels, reduction="none", label_smoothing=label_smoothing)
    (losses.mean() / grad_accum).backward()
    if update is not None:
        set_hyperparameters(optimizer, schedule, update)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {"loss": float(losses.detach().sum()), "correct": float((logits.argmax(-1) == labels).sum()),
            "count": float(labels.shape[0])}


@torch.no_grad()
def eval_step(model, images, labels, mask, *, precision: str = "fp32") -> dict[str, float]:
    """Loss and accuracy sums with BatchNorm's running averages; `mask` is 0 for padding."""
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits = model(images)
    logits = logits.float()
    losses = F.cross_entropy(logits, labels, reduction="none")
    return {"loss": float((losses * mask).sum()), "correct": float(((logits.argmax(-1) == labels) * mask).sum()),
            "count": float(mask.sum())}
