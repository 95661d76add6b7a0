"""The train and eval steps in torch: the twins of `flax_resnet.training.step`.

Images arrive already augmented and normalized (NCHW float32) from the same JAX functions the
Flax step runs, so the two frameworks see the same pixels. The steps run where the model and the
images are (CPU or CUDA); bf16 is autocast on that device. They return their sums as tensors on
that device, so a loop can add them up without waiting for each step.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from flax_resnet.core.config import ConfigError
from torch_ref.models.layers import DropPath
from torch_ref.training.losses import train_losses
from torch_ref.training.optim import set_hyperparameters


def select_device(device: str = "auto") -> torch.device:
    """'auto' (CUDA if torch sees a GPU, else the CPU), 'cpu' or 'gpu'. ConfigError if no GPU is visible."""
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("no gpu device visible to torch (torch.cuda.is_available() is False); "
                          "--device auto takes what there is")
    return torch.device("cuda")


def set_tf32(enabled: bool) -> None:
    """TF32 for float32 matmuls and cuDNN convolutions on NVIDIA GPUs, on or off: the twin of the Flax
    steps' `matmul_precision(tf32)`. torch's own defaults differ (matmuls off, cuDNN on)."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def autocast(device: torch.device, precision: str):
    """bf16 autocast on `device` for precision 'bf16'; a no-op for 'fp32'."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def drop_paths(model) -> list[DropPath]:
    """The model's stochastic-depth layers in module order, which is the order a ResNet calls them."""
    return [module for module in model.modules() if isinstance(module, DropPath)]


@contextlib.contextmanager
def given_keep_masks(model, keep_masks):
    """Inside, one forward pass of `model` applies the rows of `keep_masks` (one per DropPath, in
    `drop_paths` order; a value per sample) instead of drawing from torch's generator: the Flax
    step's draws (`flax_resnet.training.stochastic_depth.step_keep_masks`). None: nothing given.
    Raises ValueError when the rows do not fit the model, RuntimeError when a forward pass left
    one unused."""
    if keep_masks is None:
        yield
        return
    layers = drop_paths(model)
    if len(keep_masks) != len(layers):
        raise ValueError(f"{len(keep_masks)} keep masks for the model's {len(layers)} DropPath layers")
    for layer, keep in zip(layers, keep_masks):
        layer.keep = keep
    try:
        yield
        unused = sum(layer.keep is not None for layer in layers)
        if unused:
            raise RuntimeError(f"the forward pass left {unused} of {len(layers)} keep masks unused")
    finally:
        for layer in layers:
            layer.keep = None


def train_step(model, optimizer, images, labels, *, schedule, update: int | None, grad_accum: int = 1,
               precision: str = "fp32", label_smoothing: float = 0.0, freeze_bn: bool = False, targets=None,
               loss: str = "cross_entropy", bce_target_threshold: float | None = None,
               keep_masks=None) -> dict[str, torch.Tensor]:
    """Forward and backward of one batch, then optimizer update number `update` with its lr and
    momentum from `schedule` (None: accumulate the gradient only).

    With grad_accum k each batch contributes 1/k of its mean-loss gradient, so an update applies
    the mean gradient of k batches (as optax.MultiSteps). BatchNorm statistics move every batch,
    unless `freeze_bn`: then BatchNorm normalizes with its running statistics and keeps them.
    `targets`: the soft targets of a mixed batch (None: the int `labels`); `loss` as
    `losses.train_losses`. `keep_masks`: the stochastic-depth masks to apply (`given_keep_masks`;
    None: drawn from torch's generator). Returns {'loss', 'correct', 'count'}: sums over the batch,
    0-d tensors on the images' device.
    """
    model.train()
    if freeze_bn:
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eval()
    with autocast(images.device, precision), given_keep_masks(model, keep_masks):
        logits = model(images)
    logits = logits.float()
    losses = train_losses(logits, labels, targets, loss=loss, label_smoothing=label_smoothing,
                          target_threshold=bce_target_threshold)
    (losses.mean() / grad_accum).backward()
    if update is not None:
        set_hyperparameters(optimizer, schedule, update)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {"loss": losses.detach().sum(), "correct": (logits.argmax(-1) == labels).sum().float(),
            "count": torch.tensor(float(labels.shape[0]), device=logits.device)}


@torch.no_grad()
def eval_step(model, images, labels, mask, *, precision: str = "fp32") -> dict[str, torch.Tensor]:
    """Loss and accuracy sums with BatchNorm's running averages; `mask` is 0 for padding. 0-d tensors."""
    model.eval()
    with autocast(images.device, precision):
        logits = model(images)
    logits = logits.float()
    losses = F.cross_entropy(logits, labels, reduction="none")
    return {"loss": (losses * mask).sum(), "correct": ((logits.argmax(-1) == labels) * mask).sum(),
            "count": mask.sum()}
