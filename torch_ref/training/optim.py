"""The optimizer of a TrainConfig in torch: the twin of `flax_resnet.training.optim`.

torch.optim's own SGD, Adam and AdamW, and timm's Lamb (`torch_ref.training.lamb`). Before every
optimizer update the learning rate and the momentum (SGD) or beta1 (Adam, AdamW, Lamb) are set
from `flax_resnet.core.schedule`, the very function of the update count the Flax trainer follows,
as a torch LR scheduler's step() would. --norm-weight-decay and --bias-weight-decay make param
groups as torchvision's set_weight_decay does.
"""

from __future__ import annotations

import torch

from flax_resnet.core.config import TrainConfig
from flax_resnet.core.plan import StepPlan
from flax_resnet.core.registry import classifier_prefix
from flax_resnet.core.schedule import ADAM_BETAS, ADAM_EPS, Schedule, make_schedule
from flax_resnet.core.weight_decay import config_decay_settings, uses_groups
from flax_resnet.core.weight_decay import decay_groups as groups_by_name
from torch_ref.training.lamb import Lamb


def make_optimizer(model: torch.nn.Module, config: TrainConfig, plan: StepPlan) -> tuple[torch.optim.Optimizer,
                                                                                       Schedule]:
    """(torch optimizer, schedule): the schedule maps the optimizer-update count to lr and momentum."""
    schedule = make_schedule(config, plan)
    params = list(model.parameters())
    if config.freeze_backbone:  # only the classifier trains; the rest needs no gradients at all
        prefix = classifier_prefix(config.model)
        for key, parameter in model.named_parameters():
            parameter.requires_grad_(key.startswith(prefix))
        params = [parameter for parameter in params if parameter.requires_grad]
    if uses_groups(config):  # torchvision's set_weight_decay: a param group per decay
        params = decay_groups(model, *config_decay_settings(config))
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                                    nesterov=config.nesterov, weight_decay=config.weight_decay)
    elif config.optimizer == "adam":
        optimizer = torch.optim.Adam(params, lr=config.lr, betas=ADAM_BETAS, eps=ADAM_EPS,
                                     weight_decay=config.weight_decay)
    elif config.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=config.lr, betas=ADAM_BETAS, eps=ADAM_EPS,
                                      weight_decay=config.weight_decay)
    elif config.optimizer == "lamb":
        optimizer = Lamb(params, lr=config.lr, weight_decay=config.weight_decay)
    else:
        raise ValueError(f"unknown optimizer {config.optimizer!r}")
    return optimizer, schedule


# torchvision's default norm_classes in set_weight_decay.
NORM_LAYERS = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.LayerNorm, torch.nn.GroupNorm,
               torch.nn.modules.instancenorm._InstanceNorm, torch.nn.LocalResponseNorm)


def decay_groups(model: torch.nn.Module, weight_decay: float, norm_weight_decay: float | None = None,
                 custom_keys_weight_decay=None) -> list[dict]:
    """torchvision's `set_weight_decay`: param groups {'params', 'weight_decay'} of the trainable
    parameters, by the rule of `flax_resnet.core.weight_decay` (norm layers by module type)."""
    parameters = {name: p for name, p in model.named_parameters() if p.requires_grad}
    norm_names = {f"{module_name}.{name}" if module_name else name
                  for module_name, module in model.named_modules() if isinstance(module, NORM_LAYERS)
                  for name, p in module.named_parameters(recurse=False) if p.requires_grad}
    groups = groups_by_name(parameters, norm_names, weight_decay, norm_weight_decay, custom_keys_weight_decay)
    return [{"params": [parameters[name] for name in group.names], "weight_decay": group.weight_decay}
            for group in groups]


def set_hyperparameters(optimizer: torch.optim.Optimizer, schedule: Schedule, update: int) -> None:
    """Put update number `update`'s lr and momentum (SGD) or beta1 (Adam, AdamW) in every parameter
    group, as torch's OneCycleLR does for both and its other schedulers for the lr."""
    lr, momentum = float(schedule.learning_rate(update)), float(schedule.momentum_at(update))
    for group in optimizer.param_groups:
        group["lr"] = lr
        if "betas" in group:
            group["betas"] = (momentum, *group["betas"][1:])
        else:
            group["momentum"] = momentum


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Restore the saved state (momentum buffers, Adam moments, step counts) but keep the settings
    the optimizer was built with: torch's load_state_dict would bring back the saved run's weight
    decay, nesterov and lr, where a resumed run follows its current configuration."""
    current = [{key: value for key, value in group.items() if key != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, settings in zip(optimizer.param_groups, current):
        group.update(settings)
