"""Refusing settings that cannot work, before any data is read, and what may change on resuming."""

from __future__ import annotations

import math
from typing import Any

from flax_resnet.core.config.settings import (
    DEVICES,
    EMBEDDED_MNIST,
    FRAMEWORKS,
    IMAGEFOLDER,
    INTERPOLATIONS,
    LOSSES,
    MIXUP_MODES,
    OPTIMIZERS,
    PRECISIONS,
    RESUMABLE_CHANGES,
    SCHEDULE_UNITS,
    SCHEDULES,
    ConfigError,
    TrainConfig,
)
from flax_resnet.core.registry import MODELS, accepted_options, resolve


def _choices(values) -> str:
    return ", ".join(str(v) for v in values)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate(config: TrainConfig) -> None:
    """Refuse settings that cannot work, before any data is read. Raises ConfigError."""
    _require(config.framework in FRAMEWORKS,
             f"unknown framework {config.framework!r}; choose from {_choices(FRAMEWORKS)}")
    _require(config.model is not None or config.init_from is not None,
             "name a model, or give init_from to take the variant of its weights")
    if config.model is not None:
        try:
            resolve(config.model, None, None, dict(config.model_options))
        except ValueError as error:
            raise ConfigError(str(error)) from None
    for name in ("freeze_backbone", "freeze_bn"):
        _require(not getattr(config, name) or config.init_from is not None,
                 f"{name} keeps what pretrained weights learned: it needs init_from")
    _require(config.init_key is None or config.init_from is not None, "init_key names an entry of init_from's file")
    _require(isinstance(config.dataset, str) and config.dataset != "",
             f"dataset must be a name, e.g. {EMBEDDED_MNIST}, mnist, fashion_mnist, cifar10, cifar100")
    for name in ("epochs", "batch_size", "grad_accum", "eval_batch_size", "keep_checkpoints"):
        value = getattr(config, name)
        _require(_is_int(value) and value >= 1, f"{name} must be a positive integer, got {value!r}")
    _require(_is_int(config.checkpoint_every) and config.checkpoint_every >= 0,
             f"checkpoint_every must be a number of steps >= 0, got {config.checkpoint_every!r}")
    _require(_is_int(config.seed) and config.seed >= 0, f"seed must be a non-negative integer, got {config.seed!r}")
    _require(config.optimizer in OPTIMIZERS,
             f"unknown optimizer {config.optimizer!r}; choose from {_choices(OPTIMIZERS)}")
    _require(config.schedule in SCHEDULES,
             f"unknown schedule {config.schedule!r}; choose from {_choices(SCHEDULES)}")
    _require(config.precision in PRECISIONS,
             f"unknown precision {config.precision!r}; choose from {_choices(PRECISIONS)}")
    for name in ("mixup_alpha", "cutmix_alpha"):
        value = getattr(config, name)
        _require(_is_number(value) and value >= 0, f"{name} must be >= 0 (0: off), got {value!r}")
    _require(config.mixup_mode in MIXUP_MODES,
             f"unknown mixup_mode {config.mixup_mode!r}; choose from {_choices(MIXUP_MODES)}")
    _require(config.loss in LOSSES, f"unknown loss {config.loss!r}; choose from {_choices(LOSSES)}")
    _require(config.bce_target_threshold is None or config.loss == "bce", "bce_target_threshold needs loss bce")
    _require(config.bce_target_threshold is None or (_is_number(config.bce_target_threshold)
                                                     and 0 <= config.bce_target_threshold < 1),
             f"bce_target_threshold must be in [0, 1), got {config.bce_target_threshold!r}")
    _require(not (config.mixing and config.loss == "bce" and config.mixup_mode == "torchvision"
                  and config.label_smoothing),
             "bce with torchvision-style mixing takes no label_smoothing (timm smooths inside the mixed targets: "
             "mixup_mode timm)")
    _require(_is_number(config.drop_path_rate) and 0 <= config.drop_path_rate < 1,
             f"drop_path_rate must be in [0, 1), got {config.drop_path_rate!r}")
    _require("drop_path_rate" not in config.model_options,
             "give drop_path_rate as a setting of its own (--drop-path-rate), not among the model options")
    if config.model is not None:
        check_drop_path(config.model, config.drop_path_rate)
    _require(isinstance(config.ra_sampler, bool), f"ra_sampler must be true or false, got {config.ra_sampler!r}")
    _require(_is_int(config.ra_reps) and config.ra_reps >= 1,
             f"ra_reps must be a positive integer, got {config.ra_reps!r}")
    _require(config.interpolation in INTERPOLATIONS,
             f"unknown interpolation {config.interpolation!r}; choose from {_choices(INTERPOLATIONS)}")
    _require(config.device in DEVICES, f"unknown device {config.device!r}; choose from {_choices(DEVICES)}")
    _require(isinstance(config.tf32, bool), f"tf32 must be true or false, got {config.tf32!r}")
    _require(_is_number(config.lr) and config.lr > 0, f"lr must be a positive number, got {config.lr!r}")
    _require(_is_number(config.momentum) and 0 <= config.momentum < 1,
             f"momentum must be in [0, 1), got {config.momentum!r}")
    _require(not (config.nesterov and config.optimizer == "sgd" and config.momentum == 0),
             "nesterov needs momentum > 0")
    _require(_is_number(config.weight_decay) and config.weight_decay >= 0,
             f"weight_decay must be >= 0, got {config.weight_decay!r}")
    for name in ("norm_weight_decay", "bias_weight_decay"):
        value = getattr(config, name)
        _require(value is None or (_is_number(value) and value >= 0), f"{name} must be >= 0, got {value!r}")
    if config.model_ema:
        _require(_is_int(config.model_ema_steps) and config.model_ema_steps >= 1,
                 f"model_ema_steps must be a positive integer, got {config.model_ema_steps!r}")
        _require(_is_number(config.model_ema_decay) and 0 <= config.model_ema_decay <= 1,
                 f"model_ema_decay must be in [0, 1], got {config.model_ema_decay!r}")
        _require(config.grad_accum == 1, "model_ema averages after train steps; it takes no grad_accum")
    _require(_is_number(config.warmup_epochs) and 0 <= config.warmup_epochs < config.epochs,
             f"warmup_epochs must be in [0, epochs={config.epochs}), got {config.warmup_epochs!r}")
    _require(_is_number(config.warmup_start) and 0 <= config.warmup_start < 1,
             f"warmup_start must be a fraction of lr in [0, 1), got {config.warmup_start!r}")
    _require(config.schedule_unit in SCHEDULE_UNITS,
             f"unknown schedule_unit {config.schedule_unit!r}; choose from {_choices(SCHEDULE_UNITS)}")
    if config.schedule_unit == "epoch":
        _require(config.schedule != "onecycle", "onecycle moves every update (torch's OneCycleLR is stepped per "
                                                "batch); leave schedule_unit at update")
        whole = [config.warmup_epochs, *(config.milestones or ())]
        _require(all(_is_number(e) and float(e).is_integer() for e in whole),
                 f"schedule_unit epoch steps once an epoch: warmup_epochs and milestones must be whole epochs, "
                 f"got {whole}")
    if config.milestones is not None:
        ms = config.milestones
        _require(all(_is_number(m) and 0 < m < config.epochs for m in ms) and list(ms) == sorted(ms),
                 f"milestones must be increasing epochs in (0, {config.epochs}), got {list(ms)}")
    _require(not (config.schedule == "onecycle" and config.warmup_epochs),
             "onecycle warms up by itself (its first 30% rises from lr / 25 to lr); leave warmup_epochs at 0")
    if config.schedule == "multistep" and config.warmup_epochs:
        ms = config.milestones or (0.5 * config.epochs, 0.75 * config.epochs)
        _require(min(ms) > config.warmup_epochs,
                 f"multistep milestones must come after the warmup's {config.warmup_epochs} epochs, got "
                 f"{[round(m, 3) for m in ms]}" + ("" if config.milestones else " (50% and 75% of the epochs)"))
    _require(_is_number(config.gamma) and 0 < config.gamma <= 1, f"gamma must be in (0, 1], got {config.gamma!r}")
    _require(_is_number(config.label_smoothing) and 0 <= config.label_smoothing < 1,
             f"label_smoothing must be in [0, 1), got {config.label_smoothing!r}")
    _require(config.image_size is None or (_is_int(config.image_size) and config.image_size >= 8),
             f"image_size must be an integer >= 8, got {config.image_size!r}")
    _require(_is_number(config.random_erase) and 0 <= config.random_erase <= 1,
             f"random_erase must be a probability in [0, 1] (0: off), got {config.random_erase!r}")
    _require(not (config.auto_augment and config.rand_augment),
             "give auto_augment or rand_augment, not both: each is a whole policy")
    for name in ("train_crop_size", "val_resize_size"):
        value = getattr(config, name)
        _require(value is None or (_is_int(value) and value >= 8), f"{name} must be an integer >= 8, got {value!r}")
    if config.val_resize_size is not None:
        crop = config.image_size or 224
        _require(config.val_resize_size >= crop,
                 f"val_resize_size {config.val_resize_size} is smaller than the {crop}-pixel crop (image_size)")
    _require(config.dataset != IMAGEFOLDER or config.data_dir is not None,
             "--dataset imagefolder needs --data-dir DIR (DIR/train/<class>/<image>, DIR/val/<class>/<image>)")
    low_high = tuple(config.crop_scale) if isinstance(config.crop_scale, (tuple, list)) else ()
    _require(len(low_high) == 2 and all(_is_number(v) for v in low_high) and 0 < low_high[0] <= low_high[1] <= 1,
             f"crop_scale must be two numbers MIN MAX with 0 < MIN <= MAX <= 1, got {config.crop_scale!r}")
    _require(_is_number(config.eval_crop_fraction) and 0 < config.eval_crop_fraction <= 1,
             f"eval_crop_fraction must be in (0, 1], got {config.eval_crop_fraction!r}")
    _require(config.workers is None or (_is_int(config.workers) and config.workers >= 0),
             f"workers must be a non-negative integer, got {config.workers!r}")
    _require(config.crop_padding is None or (_is_int(config.crop_padding) and config.crop_padding >= 0),
             f"crop_padding must be a non-negative integer, got {config.crop_padding!r}")
    for name in ("mean", "std"):
        value = getattr(config, name)
        _require(value is None or (len(value) >= 1 and all(_is_number(v) for v in value)),
                 f"{name} must be one number per channel, got {value!r}")
    _require(config.std is None or all(v > 0 for v in config.std), f"std must be positive, got {config.std!r}")
    _require((config.mean is None) == (config.std is None), "give mean and std together, or neither")
    _validate_processes(config)


def check_drop_path(model: str, drop_path_rate: float) -> None:
    """Refuse stochastic depth for a variant without residual branches to drop. Raises ConfigError."""
    if drop_path_rate and "drop_path_rate" not in accepted_options(MODELS[model]):
        takers = [name for name, spec in MODELS.items() if "drop_path_rate" in accepted_options(spec)]
        examples = ", ".join(name for name in ("resnet18", "resnet20", "preact_resnet18") if name in takers)
        raise ConfigError(f"{model} takes no drop_path_rate: stochastic depth drops residual branches, which only "
                          f"the {len(takers)} residual nets of the resnet and preact families have (e.g. {examples})")


def _validate_processes(config: TrainConfig) -> None:
    explicit = (config.coordinator_address, config.num_processes, config.process_id)
    if all(value is None for value in explicit):
        _require(not (config.distributed and config.framework == "torch"),
                 "the torch trainer runs in one process; distributed needs framework flax")
        _require(not config.distributed or config.workdir is not None,
                 "give workdir with several processes: they must all write to the same folder")
        return
    _require(config.workdir is not None, "give workdir with several processes: they must all write to the same folder")
    _require(all(value is not None for value in explicit),
             "give coordinator_address, num_processes and process_id together (or distributed alone, "
             "where the cluster says them)")
    _require(config.framework == "flax", "the torch trainer runs in one process; several need framework flax")
    host, _, port = str(config.coordinator_address).rpartition(":")
    _require(bool(host) and port.isdigit() and 0 < int(port) < 65536,
             f"coordinator_address must be HOST:PORT, got {config.coordinator_address!r}")
    _require(_is_int(config.num_processes) and config.num_processes >= 1,
             f"num_processes must be a positive integer, got {config.num_processes!r}")
    _require(_is_int(config.process_id) and 0 <= config.process_id < config.num_processes,
             f"process_id must be in [0, {config.num_processes}), got {config.process_id!r}")


def resume_differences(stored: dict[str, Any], config: TrainConfig) -> list[str]:
    """Settings of `config` that differ from a stored run's and may not change on resumption."""
    current, defaults = config.to_json(), TrainConfig().to_json()
    # A setting added after the run was stored is absent there; at its default it changes nothing.
    return [f"{key}: {stored.get(key)!r} -> {current[key]!r}" for key in current
            if key not in RESUMABLE_CHANGES and stored.get(key) != current[key]
            and not (key not in stored and current[key] == defaults[key])]
