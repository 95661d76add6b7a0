"""The loader benchmark's contestants with TrivialAugment and random erasing: torchvision's side is
its reference training preset (references/classification/presets.py ClassificationPresetTrain),
with the policy interpolation our workers use; ours hands uint8 batches to a device step that
only normalizes and erases (the host already cropped and flipped)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms as T

from flax_resnet.core.data.loader import IMAGENET_MEAN, IMAGENET_STD
from flax_resnet.studies.data_loading import (
    LoaderBench,
    our_batches,
    our_device_step,
    our_policy,
    write_jpeg_tree,
)
from torch_ref.studies.data_loading import torchvision_batches, torchvision_transform

SIZE = 33  # odd, so a centre or a box can't hide an off-by-one


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return str(write_jpeg_tree(tmp_path_factory.mktemp("jpegs"), 12, classes=2, held_out=0.3, progress=False))


def _first_batch(batches):
    try:
        return next(iter(batches))
    finally:
        batches.close()


def test_plain_measurement_is_crop_flip_and_uint8(tree):
    bench = LoaderBench(tree, workers=0, batch_size=4, image_size=SIZE)
    assert not bench.whole_preset
    steps = torchvision_transform(bench).transforms
    assert [type(step) for step in steps] == [T.RandomResizedCrop, T.RandomHorizontalFlip, T.PILToTensor]
    images, _ = _first_batch(torchvision_batches(bench, 0))
    assert images.dtype == torch.uint8 and tuple(images.shape) == (4, 3, SIZE, SIZE)


def test_torchvision_side_is_the_reference_preset_with_our_policy_interpolation(tree):
    bench = LoaderBench(tree, workers=0, batch_size=4, image_size=SIZE, auto_augment="ta_wide", random_erase=0.1)
    interpolation = our_policy(bench).interpolation
    crop, flip, policy, to_tensor, to_float, normalize, erasing = torchvision_transform(bench, interpolation).transforms
    assert isinstance(crop, T.RandomResizedCrop) and crop.size == (SIZE, SIZE)
    assert crop.interpolation == T.InterpolationMode.BILINEAR
    assert isinstance(flip, T.RandomHorizontalFlip) and flip.p == 0.5
    assert isinstance(policy, T.TrivialAugmentWide) and policy.interpolation == T.InterpolationMode(interpolation)
    assert isinstance(to_tensor, T.PILToTensor)
    assert isinstance(to_float, T.ConvertImageDtype) and to_float.dtype == torch.float32
    assert isinstance(normalize, T.Normalize)
    assert tuple(normalize.mean) == IMAGENET_MEAN and tuple(normalize.std) == IMAGENET_STD
    assert isinstance(erasing, T.RandomErasing) and erasing.p == 0.1 and erasing.value == 0
    images, _ = _first_batch(torchvision_batches(bench, 0, interpolation))
    assert images.dtype == torch.float32 and tuple(images.shape) == (4, 3, SIZE, SIZE)


def test_our_side_is_uint8_then_a_device_step_that_normalizes_and_erases(tree):
    bench = LoaderBench(tree, workers=0, batch_size=4, image_size=SIZE, auto_augment="ta_wide", random_erase=1.0)
    batch = _first_batch(our_batches(bench, 0))
    images = np.array(batch["image"])
    assert images.dtype == np.uint8 and images.shape == (4, SIZE, SIZE, 3)

    out = np.asarray(our_device_step(bench)(images, 0))
    assert out.dtype == np.float32 and out.shape == images.shape
    mean, std = np.asarray(IMAGENET_MEAN), np.asarray(IMAGENET_STD)
    exact = (images / 255.0 - mean) / std  # float64
    torch_own = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)(torch.from_numpy(images).permute(0, 3, 1, 2) / 255.0)
    torch_err = np.abs(torch_own.permute(0, 2, 3, 1).numpy() - exact).max()
    erased = (out == 0).all(axis=-1)  # a normalized pixel is never 0 in every channel (mean * 255 is no integer)
    for image in range(len(images)):
        rows, columns = np.nonzero(erased[image])
        assert rows.size, "p = 1: every image has a box"
        box = erased[image, rows.min():rows.max() + 1, columns.min():columns.max() + 1]
        assert box.all(), "the erased pixels form one rectangle"
    # no crop, flip or resize on the device: everything else is the normalized host pixels
    assert np.abs(np.where(erased[..., None], 0.0, out - exact)).max() <= 10 * torch_err + 1e-7
