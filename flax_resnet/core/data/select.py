"""`load_data(config)`: the dataset a TrainConfig names, in memory or streamed. Plain Python."""

from __future__ import annotations

import dataclasses

from flax_resnet.core.augment import default_augment
from flax_resnet.core.data.base import ProcessShard, TrainingData
from flax_resnet.core.data.common import EMBEDDED_MNIST, IMAGEFOLDER, DataError
from flax_resnet.core.data.imagefolder import scan_image_folder
from flax_resnet.core.data.loader import StreamedDataset, default_workers
from flax_resnet.core.data.memory import find_torchvision_folder, load_dataset, load_tfds_arrays
from flax_resnet.core.data.tfds_source import TfdsSource, held_out_split, open_builder, open_split, quiet_absl
from flax_resnet.core.data.memory_augment import HostAugment
from flax_resnet.core.data.policies import make_policy
from flax_resnet.core.data.transforms import HostTransforms
from flax_resnet.core.registry import resolve

__all__ = ["DEFAULT_STREAMED_SIZE", "host_transforms", "load_data"]

DEFAULT_STREAMED_SIZE = 224


def host_transforms(config, channels: int) -> HostTransforms:
    """The streamed data's crop size, scale, eval crop and flip from a TrainConfig."""
    flip = config.flip if config.flip is not None else channels == 3
    size = config.image_size or DEFAULT_STREAMED_SIZE
    try:
        # torchvision's reference hands its policies the run's interpolation; timm's train.py keeps
        # RandAugment's random choice of bilinear and bicubic.
        policy = make_policy(config.auto_augment, config.rand_augment, image_size=config.train_crop_size or size,
                             mean=config.mean if config.mean is not None and len(config.mean) == 3 else None,
                             interpolation=config.interpolation if config.auto_augment else None)
    except ValueError as error:
        raise DataError(str(error)) from None
    return HostTransforms(size=size, channels=channels, policy=policy,
                          crop_scale=tuple(config.crop_scale), crop_fraction=config.eval_crop_fraction, flip=flip,
                          interpolation=config.interpolation, train_size=config.train_crop_size,
                          eval_resize=config.val_resize_size)


def load_data(config, *, shard: ProcessShard = ProcessShard()) -> TrainingData:
    """The data of `config`, as process `shard.index` of `shard.count` reads it.

    Small fixed-size sets (embedded_mnist, torchvision's MNIST/CIFAR folders, fixed-size tfds
    datasets) are held in memory; ImageFolder trees and tfds datasets of varying image size are
    streamed, in the model's channel count (RGB, or L for 1-channel models). With `ra_sampler`,
    the epochs are ordered by repeated augmentation (`sampling.epoch_order`). Raises DataError.
    """
    if config.dataset == IMAGEFOLDER:
        return _imagefolder(config, shard)
    if config.dataset == EMBEDDED_MNIST:
        return _in_memory(load_dataset(EMBEDDED_MNIST), config, shard)
    found = find_torchvision_folder(config.dataset, config.data_dir)
    if found is not None:
        return _in_memory(found, config, shard)
    builder = open_builder(config.dataset, config.data_dir)
    if None not in tuple(builder.info.features["image"].shape):
        with quiet_absl():
            return _in_memory(load_tfds_arrays(builder), config, shard)
    return _streamed_tfds(config, builder, shard)


def _in_memory(dataset, config, shard: ProcessShard):
    return dataclasses.replace(dataset, shard=shard, ra_reps=_ra_reps(config),
                               host_augment=_host_augment(dataset, config))


def _host_augment(dataset, config) -> HostAugment | None:
    """The host's crop, flip and policy of an in-memory set, with --auto-augment or --rand-augment;
    the crop padding and the flip are the device's defaults (`core.augment.default_augment`)."""
    if not (config.auto_augment or config.rand_augment):
        return None
    shape = dataset.image_shape
    defaults = default_augment(shape, crop_padding=config.crop_padding, flip=config.flip, mean=(0.0,) * shape[2],
                               std=(1.0,) * shape[2])
    try:
        policy = make_policy(config.auto_augment, config.rand_augment, image_size=shape[:2],
                             mean=config.mean if config.mean is not None and len(config.mean) == 3 else None,
                             interpolation=config.interpolation if config.auto_augment else None)
    except ValueError as error:
        raise DataError(str(error)) from None
    return HostAugment(policy, defaults.crop_padding, defaults.flip)


def _ra_reps(config) -> int | None:
    return config.ra_reps if config.ra_sampler else None


def _model_channels(config) -> int:
    return resolve(config.model, None, None, dict(config.model_options))[2]


def _workers(config) -> int:
    return default_workers() if config.workers is None else config.workers


def _imagefolder(config, shard: ProcessShard) -> StreamedDataset:
    splits = scan_image_folder(config.data_dir)
    if splits.notice and shard.index == 0:
        print(splits.notice)
    return StreamedDataset(name=IMAGEFOLDER, source=str(splits.root), train=splits.train, test=splits.test,
                           num_classes=len(splits.classes), class_names=splits.classes,
                           transforms=host_transforms(config, _model_channels(config)), workers=_workers(config),
                           shard=shard, info={"held_out": splits.test_source}, ra_reps=_ra_reps(config))


def _streamed_tfds(config, builder, shard: ProcessShard) -> StreamedDataset:
    test_split = held_out_split(builder)
    sources = {}
    for split in ("train", test_split):
        length = len(open_split(builder, split))
        if length == 0:
            raise DataError(f"tfds dataset {builder.name!r} has no {split} examples in {builder.data_dir}")
        sources[split] = TfdsSource(config.dataset, split, config.data_dir, length)
    label = builder.info.features["label"]
    names = tuple(label.names) if getattr(label, "names", None) else None
    return StreamedDataset(name=builder.name, source="tfds", train=sources["train"], test=sources[test_split],
                           num_classes=int(label.num_classes), class_names=names,
                           transforms=host_transforms(config, _model_channels(config)), workers=_workers(config),
                           shard=shard, info={"held_out": test_split}, ra_reps=_ra_reps(config))
