"""The torchvision contestant of the loader benchmark: ImageFolder + DataLoader with the transforms
our loader applies (RandomResizedCrop, horizontal flip, uint8 output: normalization is left to the
device on both sides). The twin of `flax_resnet.studies.data_loading`'s own loader."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
import torchvision.transforms as T


def torchvision_batches(bench, epoch: int):
    """(uint8 NCHW images, labels) batches of root/train, shuffled with `epoch` as seed; closing the
    generator stops the workers."""
    transform = T.Compose([T.RandomResizedCrop(bench.image_size), T.RandomHorizontalFlip(), T.PILToTensor()])
    dataset = torchvision.datasets.ImageFolder(str(Path(bench.root) / "train"), transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=bench.batch_size, shuffle=True, drop_last=True,
                                         num_workers=bench.workers, generator=torch.Generator().manual_seed(epoch))
    batches = iter(loader)
    try:
        yield from batches
    finally:
        batches._shutdown_workers()  # its workers stop with the round, not when garbage-collected
