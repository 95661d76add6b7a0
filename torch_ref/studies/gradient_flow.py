"""Gradient flow in torch, the twin of `flax_resnet.studies.gradient_flow`.

A "layer" is a conv or linear weight, named by its state_dict key and listed in the order the
forward pass first uses it (input to output), so the two frameworks list the same layers in the
same order.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from torch_ref.training.loop import build_model

WEIGHTED_LAYERS = (nn.Conv2d, nn.Linear)


def initial_model(config, setup, data) -> nn.Module:
    """The model the torch trainer starts from for `config` (the Flax trainer's start, too)."""
    return build_model(config, setup)


def model_gradient_norms(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """`layer_gradient_norms` on an NHWC float32 numpy batch and int labels."""
    return layer_gradient_norms(model, torch.from_numpy(images.transpose(0, 3, 1, 2).copy()),
                                torch.from_numpy(labels.astype(np.int64)))


def count_parameters(model: nn.Module) -> int:
    """Trainable values: weights, biases, BatchNorm scales and shifts (not running statistics)."""
    return sum(parameter.numel() for parameter in model.parameters())


def _forward_recording_order(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    """(logits, weight names in the order the forward pass first reached their layers)."""
    order: list[str] = []

    def record(name):
        def hook(module, inputs):
            if name not in order:
                order.append(name)
        return hook

    hooks = [module.register_forward_pre_hook(record(f"{name}.weight"))
             for name, module in model.named_modules() if isinstance(module, WEIGHTED_LAYERS)]
    try:
        logits = model(images)
    finally:
        for hook in hooks:
            hook.remove()
    return logits, order


@torch.no_grad()
def weight_forward_order(model: nn.Module, images: torch.Tensor) -> list[str]:
    """Every conv and linear weight's state_dict key, in the order a forward pass on `images` (NCHW)
    first uses it. The model is not changed."""
    return _forward_recording_order(copy.deepcopy(model).eval(), images)[1]


def layer_gradient_norms(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """{weight key: L2 norm of d(mean cross-entropy)/d(weight)} for every conv and linear weight,
    from input to output, on one batch (NCHW float images, int64 labels) with BatchNorm in training
    mode, as a train step sees it. The model itself (weights, statistics, mode) is not changed."""
    twin = copy.deepcopy(model).train()
    twin.zero_grad(set_to_none=True)
    logits, order = _forward_recording_order(twin, images)
    F.cross_entropy(logits.float(), labels).backward()
    weights = dict(twin.named_parameters())
    return {name: float(weights[name].grad.norm()) for name in order}
