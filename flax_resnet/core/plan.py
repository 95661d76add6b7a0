"""What a TrainConfig means for a given dataset: step counts, augmentation, model arguments.

Plain Python, shared by the Flax and torch trainers.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flax_resnet.core.augment import AugmentSpec, MixSpec, default_augment
from flax_resnet.core.config import AUTO_PRECISION, ConfigError, TrainConfig
from flax_resnet.core.config.validation import check_drop_path
from flax_resnet.core.data import TrainingData
from flax_resnet.core.data.repeated_augmentation import TORCHVISION_ROUND_TO, images_per_rank
from flax_resnet.core.registry import resolve

# Seconds between progress-bar refreshes. Each refresh waits for the device, so not every step.
REFRESH_SECONDS = 0.5
AUGMENT_STREAM = 1  # the augmentation key is fold_in(key(seed), 1)
MIXING_STREAM = 2  # a step's mixing key is fold_in(fold_in(augmentation key, 2), step)
# A step's stochastic-depth key is fold_in(fold_in(augmentation key, 2**32 - 1), step). No step
# number (int32) reaches 2**32 - 1, so it is never one of the augmentation's keys.
DROPOUT_STREAM = 2**32 - 1


@dataclasses.dataclass
class TrainResult:
    """What a trainer returns: per-epoch metrics (as in metrics.jsonl), the trained model, the folder."""

    history: list[dict[str, Any]]
    model: Any  # nnx.Module in eval mode (Flax trainer); torch.nn.Module (torch trainer)
    workdir: Any


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """How many steps a run takes. A step is one batch; an update is one optimizer step
    (grad_accum steps each)."""

    steps_per_epoch: int
    grad_accum: int
    epochs: int

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    @property
    def total_updates(self) -> int:
        return max(self.total_steps // self.grad_accum, 1)

    def updates_at(self, epoch: float) -> int:
        """Optimizer updates done after `epoch` (fractional) epochs."""
        return int(round(epoch * self.steps_per_epoch / self.grad_accum))


@dataclasses.dataclass(frozen=True)
class RunSetup:
    """What a config means for a given dataset."""

    plan: StepPlan
    augment: AugmentSpec
    model_kwargs: dict[str, Any]
    eval_batch_size: int
    normalization: str = "given (--mean/--std)"  # where the mean and std came from

    def details(self, data: TrainingData, num_devices: int) -> dict[str, Any]:
        """The derived settings recorded in config.json beside the TrainConfig."""
        return {
            "model_kwargs": self.model_kwargs,
            "augment": dataclasses.asdict(self.augment),
            "data": {**data.details(), "normalization": self.normalization},
            "steps_per_epoch": self.plan.steps_per_epoch,
            "devices": num_devices,
        }


def resolve_precision(config: TrainConfig, platform: str) -> TrainConfig:
    """`config` with precision 'auto' made concrete: bf16 on a GPU or TPU, fp32 on the CPU."""
    if config.precision != AUTO_PRECISION:
        return config
    return dataclasses.replace(config, precision="fp32" if platform == "cpu" else "bf16")


def _steps_per_epoch(config: TrainConfig, data: TrainingData) -> int:
    """The data's steps per epoch, refusing a repeated-augmentation epoch without any."""
    if data.ra_reps != (config.ra_reps if config.ra_sampler else None):
        raise ConfigError(f"{data.name} was loaded for another sampler than ra_sampler={config.ra_sampler}, "
                          f"ra_reps={config.ra_reps}: load it with core.data.load_data(config)")
    steps = data.steps_per_epoch(config.batch_size)
    if config.ra_sampler and steps == 0:
        processes = data.shard.count
        kept = images_per_rank(data.train_count, processes) * processes
        if kept == 0:
            raise ConfigError(f"the RA sampler keeps {data.train_count} // {TORCHVISION_ROUND_TO} * "
                              f"{TORCHVISION_ROUND_TO} // {processes} = 0 of {data.name}'s training images per "
                              f"process and epoch, as torchvision's RASampler; it needs at least "
                              f"{TORCHVISION_ROUND_TO} of them")
        raise ConfigError(f"batch_size {config.batch_size} is larger than the {kept} images an epoch of the RA "
                          f"sampler holds")
    return steps


def prepare_run(config: TrainConfig, data: TrainingData, num_devices: int = 1) -> RunSetup:
    """Check the config against the data and fill in what depends on it. Raises ConfigError.

    `num_devices` counts the devices of every process; batches split over them evenly.
    """
    train_count, channels = data.train_count, data.image_shape[2]
    if config.batch_size > train_count:
        raise ConfigError(f"batch_size {config.batch_size} is larger than the {train_count} training images "
                          f"of {data.name}")
    if config.batch_size % num_devices:
        raise ConfigError(f"batch_size {config.batch_size} must be a multiple of the {num_devices} devices")
    host_augmented = data.host_augment is not None  # an in-memory set's policy
    if host_augmented and config.image_size is not None and config.image_size != data.image_shape[0]:
        raise ConfigError(f"auto_augment and rand_augment work on {data.name}'s own {data.image_shape[0]}-pixel "
                          f"images in memory; leave image_size unset with them")
    if not data.streamed and (config.train_crop_size or config.val_resize_size):
        raise ConfigError("train_crop_size and val_resize_size size the host's crops of streamed data (ImageFolder "
                          f"trees, tfds sets of varying size); {data.name} is held in memory: use image_size")
    if config.mean is None:
        mean, std, normalization = data.normalization()
    else:
        mean, std, normalization = config.mean, config.std, "given (--mean/--std)"
    if len(mean) != channels or len(std) != channels:
        raise ConfigError(f"mean and std need {channels} value(s) for {data.name}'s {channels}-channel "
                          f"images, got {len(mean)} and {len(std)}")
    if data.streamed:
        # The host already cropped (RandomResizedCrop, to image_size) and flipped; the device
        # normalizes, and pads-and-crops only if asked to.
        augment = AugmentSpec(tuple(mean), tuple(std), config.crop_padding or 0, False, None,
                              interpolation=config.interpolation)
    else:
        augment = default_augment(data.image_shape, crop_padding=config.crop_padding, flip=config.flip,
                                  image_size=config.image_size, mean=mean, std=std,
                                  interpolation=config.interpolation)
        if host_augmented:  # the host cropped, flipped and applied the policy
            augment = dataclasses.replace(augment, crop_padding=0, flip=False)
    augment = dataclasses.replace(augment, random_erase=float(config.random_erase))
    check_drop_path(config.model, config.drop_path_rate)  # the model may come from --init-from
    stochastic_depth = {"drop_path_rate": config.drop_path_rate} if config.drop_path_rate else {}
    _, num_classes, in_channels, options = resolve(config.model, data.num_classes, channels,
                                                   {**config.model_options, **stochastic_depth})
    if config.mixing:
        smoothing = config.label_smoothing if config.mixup_mode == "timm" else 0.0
        augment = dataclasses.replace(augment, mixing=MixSpec(config.mixup_mode, config.mixup_alpha,
                                                              config.cutmix_alpha, num_classes, smoothing))
    eval_batch = min(config.eval_batch_size, data.test_count)
    eval_batch = -(-eval_batch // num_devices) * num_devices
    plan = StepPlan(_steps_per_epoch(config, data), config.grad_accum, config.epochs)
    return RunSetup(plan, augment, {"num_classes": num_classes, "in_channels": in_channels, **options},
                    eval_batch, normalization)
