"""Auto-augment policies on in-memory sets: cropped, flipped and augmented on the host in
torchvision's CIFAR order, with the streamed loader's policy pixels, in both trainers."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image

from flax_resnet.core.config import ConfigError
from flax_resnet.core.data.loader import HOST_AUGMENT_STREAM
from flax_resnet.core.data.memory import Dataset
from flax_resnet.core.data.memory_augment import HostAugment
from flax_resnet.core.data.policies import make_policy
from flax_resnet.core.data.transforms import HostTransforms
from flax_resnet.training import train
from parity_tests.helpers.training_fixtures import tiny

SEED, EPOCH = 3, 2


def arrays(size: int, channels: int, count: int = 12, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, size, size, channels), dtype=np.uint8)
    labels = rng.integers(0, 10, count).astype(np.int32)
    return Dataset("generated", "test", images, labels, images[:4], labels[:4], num_classes=10)


def first_batch(dataset: Dataset, batch_size: int = 6) -> dict:
    """The first batch of epoch EPOCH, with the dataset indices of its images."""
    with dataset.train_batches(EPOCH, seed=SEED, batch_size=batch_size) as batches:
        batch = next(iter(batches))
        return {**batch, "index": batches.last_indices}


@pytest.mark.parametrize("size, channels, policy", [(16, 3, "ta_wide"), (15, 3, "rand-m9-mstd0.5-inc1"),
                                                    (15, 1, "ra")])
def test_in_memory_policy_pixels_are_the_streamed_loaders(size, channels, policy):
    """Without crop padding and flip, an in-memory image's augmented pixels equal those a streamed
    loader's worker makes of the same image (RandomResizedCrop of the whole image, no flip)."""
    names = dict(rand_augment=policy) if policy.startswith("rand-") else dict(auto_augment=policy)
    made = make_policy(**names, image_size=size)
    dataset = arrays(size, channels)
    batch = first_batch(dataclasses.replace(dataset, host_augment=HostAugment(made, 0, False)))
    streamed = HostTransforms(size=size, channels=channels, crop_scale=(1.0, 1.0), flip=False, policy=made)
    changed = 0
    for image, index in zip(batch["image"], batch["index"]):
        original = dataset.train_images[index]
        pil = Image.fromarray(original[..., 0] if channels == 1 else original)
        expected = streamed.train(pil, np.random.default_rng([SEED, HOST_AUGMENT_STREAM, EPOCH, int(index)]))
        np.testing.assert_array_equal(image, expected.reshape(image.shape))
        changed += not np.array_equal(image, original)
    assert changed >= len(batch["index"]) // 2  # the policy did something to most of them


def test_the_host_crop_and_flip_are_torchvisions_in_its_cifar_order():
    """RandomCrop(16, padding=4) then a flip then the policy, each drawn from the image's stream,
    gives torchvision's pad, crop and hflip of the same image, then the policy."""
    made = make_policy(auto_augment="ta_wide", image_size=16)
    dataset = arrays(16, 3)
    batch = first_batch(dataclasses.replace(dataset, host_augment=HostAugment(made, 4, True)))
    flips = 0
    for image, index in zip(batch["image"], batch["index"]):
        rng = np.random.default_rng([SEED, HOST_AUGMENT_STREAM, EPOCH, int(index)])
        top, left = rng.integers(0, 9, size=2)
        flip = rng.random() < 0.5
        tensor = torch.from_numpy(dataset.train_images[index]).permute(2, 0, 1)
        cropped = F.crop(F.pad(tensor, [4]), int(top), int(left), 16, 16)
        if flip:
            cropped = F.horizontal_flip(cropped)
        expected = np.asarray(made(F.to_pil_image(cropped), rng.spawn(1)[0]))
        np.testing.assert_array_equal(image, expected)
        flips += flip
    assert 0 < flips < len(batch["index"])


def test_a_resumed_epoch_reads_the_same_augmented_batches():
    made = make_policy(auto_augment="ta_wide", image_size=16)
    dataset = dataclasses.replace(arrays(16, 3), host_augment=HostAugment(made, 2, True))
    with dataset.train_batches(EPOCH, seed=SEED, batch_size=4) as batches:
        whole = [batch["image"] for batch in batches]
    with dataset.train_batches(EPOCH, seed=SEED, batch_size=4, start_step=1) as batches:
        resumed = [batch["image"] for batch in batches]
    assert len(resumed) == len(whole) - 1
    for got, want in zip(resumed, whole[1:]):
        np.testing.assert_array_equal(got, want)


def test_an_in_memory_policy_reaches_both_trainers(mnist_dir, tmp_path):
    settings = dict(epochs=1, auto_augment="ta_wide")
    flax_record = train(tiny(mnist_dir, tmp_path / "flax", **settings)).history[0]
    torch_record = train(tiny(mnist_dir, tmp_path / "torch", framework="torch", **settings)).history[0]
    plain = train(tiny(mnist_dir, tmp_path / "plain", epochs=1)).history[0]
    assert torch_record["train_loss"] == pytest.approx(flax_record["train_loss"], rel=1e-4)
    assert abs(flax_record["train_loss"] - plain["train_loss"]) > 1e-4 * plain["train_loss"]
    recorded = json.loads((tmp_path / "flax" / "config.json").read_text())
    described = recorded["data"]["transforms"]["train"]
    assert described.startswith("RandomCrop(padding=2) + TrivialAugmentWide(") and described.endswith(" (host)")
    assert recorded["augment"]["crop_padding"] == 0 and recorded["augment"]["flip"] is False
    with pytest.raises(ConfigError, match="leave image_size unset"):
        train(tiny(mnist_dir, tmp_path / "sized", auto_augment="ta_wide", image_size=32))
