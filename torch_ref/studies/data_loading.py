"""The torchvision contestant of the loader benchmark: ImageFolder + DataLoader with the transforms
our loader applies (RandomResizedCrop, horizontal flip, uint8 output: normalization is left to the
device on both sides). With a policy or random erasing, it is torchvision's reference training
preset instead, which does everything in the workers. The twin of
`flax_resnet.studies.data_loading`'s own loader."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
import torchvision.transforms as T

from flax_resnet.core.data.loader import IMAGENET_MEAN, IMAGENET_STD

# the policy classes of torchvision's reference (references/classification/presets.py), by its --auto-augment name
POLICIES = {"ta_wide": T.TrivialAugmentWide, "ra": T.RandAugment}


def torchvision_transform(bench, policy_interpolation: str | None = None) -> T.Compose:
    """The per-image transform. Plain: RandomResizedCrop + flip -> uint8 CHW. With
    `bench.whole_preset`, as references/classification/presets.py ClassificationPresetTrain
    builds it: crop, flip, the policy, PILToTensor, float, Normalize(ImageNet's), then
    RandomErasing(p) if p > 0 -> normalized float32 CHW.

    policy_interpolation: of the policy's geometric ops (None: the policy class's default,
    nearest). The reference passes its --interpolation (bilinear); the benchmark passes what our
    loader's policy uses, so that both do the same work.
    """
    steps = [T.RandomResizedCrop(bench.image_size), T.RandomHorizontalFlip()]
    if not bench.whole_preset:
        return T.Compose([*steps, T.PILToTensor()])
    if bench.auto_augment is not None:
        options = {} if policy_interpolation is None else {"interpolation": T.InterpolationMode(policy_interpolation)}
        if bench.auto_augment in POLICIES:
            steps.append(POLICIES[bench.auto_augment](**options))
        else:  # 'imagenet', 'cifar10', 'svhn'
            steps.append(T.AutoAugment(T.AutoAugmentPolicy(bench.auto_augment), **options))
    steps += [T.PILToTensor(), T.ConvertImageDtype(torch.float), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if bench.random_erase > 0:
        steps.append(T.RandomErasing(p=bench.random_erase))
    return T.Compose(steps)


def torchvision_batches(bench, epoch: int, policy_interpolation: str | None = None):
    """(images, labels) batches of root/train, shuffled with `epoch` as seed: uint8 NCHW, or
    normalized float32 NCHW with `bench.whole_preset`. Closing the generator stops the workers."""
    transform = torchvision_transform(bench, policy_interpolation)
    dataset = torchvision.datasets.ImageFolder(str(Path(bench.root) / "train"), transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=bench.batch_size, shuffle=True, drop_last=True,
                                         num_workers=bench.workers, generator=torch.Generator().manual_seed(epoch))
    batches = iter(loader)
    try:
        yield from batches
    finally:
        if bench.workers:  # its workers stop with the round, not when garbage-collected
            batches._shutdown_workers()
