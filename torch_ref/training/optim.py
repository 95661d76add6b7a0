"""The optimizer of a TrainConfig in torch: the twin of `flax_resnet.training.optim`.

torch.optim's own SGD, Adam and AdamW; the learning rate comes from the very schedule function
the Flax trainer uses (`flax_resnet.training.optim.make_schedule`), set before every optimizer update.
"""

from __future__ import annotations

import torch

from flax_resnet.training.config import TrainConfig
from flax_resnet.training.initial_weights import classifier_prefix
from flax_resnet.training.optim import make_schedule
from flax_resnet.training.setup import StepPlan


def make_optimizer(model: torch.nn.Module, config: TrainConfig, plan: StepPlan):
    """(torch optimizer, schedule): the schedule maps the optimizer-update count to the lr."""
    schedule = make_schedule(config, plan)
    params = list(model.parameters())
    if config.freeze_backbone:  # only the classifier trains; the rest needs no gradients at all
        prefix = classifier_prefix(config.model)
        for key, parameter in model.named_parameters():
            parameter.requires_grad_(key.startswith(prefix))
        params = [parameter for parameter in params if parameter.requires_grad]
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                                    nesterov=config.nesterov, weight_decay=config.weight_decay)
    elif config.optimizer == "adam":
        optimizer = torch.optim.Adam(params, lr=config.lr, betas=(0.9, 0.999), eps=1e-8,
                                     weight_decay=config.weight_decay)
    elif config.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=config.lr, betas=(0.9, 0.999), eps=1e-8,
                                      weight_decay=config.weight_decay)
    else:
        raise ValueError(f"unknown optimizer {config.optimizer!r}")
    return optimizer, schedule


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Put `lr` in every parameter group (what a torch LR scheduler does on .step())."""
    for group in optimizer.param_groups:
        group["lr"] = lr
