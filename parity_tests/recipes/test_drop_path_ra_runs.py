"""--drop-path-rate and --ra-sampler inside both trainers: the same run in Flax and in the torch
twin (the same repeated-augmentation order, pixels and stochastic-depth masks), recorded in
config.json, refused where they cannot work, and resumed mid-epoch exactly as the uninterrupted run.

The runs: resnet20 (9 residual blocks, 8 of them with a DropPath at rates 0.0125 .. 0.1) on 256
generated MNIST digits shrunk to 8x8, batch 64, two epochs of 4 steps each.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import flax_resnet.training.run_checkpoints as flax_checkpoints
import torch_ref.training.run_checkpoints as torch_checkpoints
from flax_resnet.core.config import ConfigError, OneLineErrorParser, TrainConfig, add_train_arguments, config_from_args
from flax_resnet.core.run.interrupts import TrainingInterrupted
from flax_resnet.porting.fine_tune import open_init
from flax_resnet.training import train
from parity_tests.helpers.training_fixtures import assert_same_history, make_mnist_folder, tiny

# torchvision's RASampler keeps len // 256 * 256 images an epoch: 256 is the fewest that give one.
RA_IMAGES = 256
SETTINGS = dict(model="resnet20", image_size=8, batch_size=64, epochs=2, eval_batch_size=16,
                drop_path_rate=0.1, ra_sampler=True, ra_reps=2)
RECIPE = ("drop_path_rate", "ra_sampler", "ra_reps")


@pytest.fixture(scope="module")
def ra_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ra-data")
    make_mnist_folder(root, train=RA_IMAGES, test=16)
    return root


@pytest.fixture(scope="module")
def whole(ra_dir, tmp_path_factory):
    """The uninterrupted runs, one per framework and settings, made on first use."""
    runs = {}

    def run(framework, **overrides):
        key = (framework, *sorted(overrides.items()))
        if key not in runs:
            workdir = tmp_path_factory.mktemp(f"{framework}-whole")
            runs[key] = train(tiny(ra_dir, workdir, framework=framework, **{**SETTINGS, **overrides}))
        return runs[key]

    return run


def test_both_frameworks_train_alike_with_drop_path_and_the_sampler(whole):
    """Flax and torch_ref give the same losses (the same order, pixels and masks), and the masks
    matter: the training loss of the same run without stochastic depth (the masks act on the
    training forward) is farther from theirs than they are from each other, by orders of magnitude
    in the first epoch. (Random labels then amplify float32 rounding step by step: in the second
    epoch the two frameworks' training losses were 1e-3 apart and the undropped run 3e-2 away, so
    there they are held to being nearer each other than to it. The test loss sees the masks only
    through the weights they trained.) config.json records the settings, the model option and the order."""
    flax_run, torch_run = whole("flax"), whole("torch")
    undropped = whole("torch", drop_path_rate=0.0)
    for ours, theirs, plain in zip(torch_run.history, flax_run.history, undropped.history):
        where = (ours["epoch"], plain["train_loss"], theirs["train_loss"], ours["train_loss"])
        apart = abs(ours["train_loss"] - theirs["train_loss"])
        masks_matter = abs(plain["train_loss"] - theirs["train_loss"])
        if ours["epoch"] == 1:
            for key in ("train_loss", "test_loss"):
                assert abs(ours[key] - theirs[key]) <= 1e-4 * abs(theirs[key]), (key, *where)
            assert masks_matter > 100 * apart + 1e-5 * abs(theirs["train_loss"]), where
        else:
            assert apart <= 1e-2 * abs(theirs["train_loss"]) and masks_matter > apart, where
    for run in (flax_run, torch_run):
        recorded = json.loads((Path(run.workdir) / "config.json").read_text())
        assert {key: recorded[key] for key in RECIPE} == {key: SETTINGS[key] for key in RECIPE}
        assert recorded["model_kwargs"]["drop_path_rate"] == 0.1
        assert recorded["data"]["sampler"] == {"kind": "repeated_augmentation", "ra_reps": 2, "world_size": 1}
        assert recorded["steps_per_epoch"] == RA_IMAGES // SETTINGS["batch_size"]
    plain_record = json.loads((Path(undropped.workdir) / "config.json").read_text())
    assert "drop_path_rate" not in plain_record["model_kwargs"]


def stop_after_checkpoint(monkeypatch, framework: str, step: int) -> None:
    """SIGTERM right after the checkpoint of train step `step`, as a scheduler's would come then."""
    module = flax_checkpoints if framework == "flax" else torch_checkpoints
    original = module.RunCheckpoints.save

    def save(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if args[-1].step == step:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(module.RunCheckpoints, "save", save)


# The torch trainer's; the Flax trainer's resume in the sampler's order is test_presets.py's V2 run.
@pytest.mark.parametrize("framework", ["torch"])
def test_a_run_with_the_sampler_resumes_mid_epoch_exactly(framework, ra_dir, tmp_path, whole, monkeypatch, capsys):
    """SIGTERM after step 5's checkpoint stops the run after step 6, two steps into epoch 2 (of 4);
    the resumed run starts there, and ends with the uninterrupted run's metrics and bit for bit
    its weights: the sampler's order, the augmentation and the masks pick up where they were."""
    config = tiny(ra_dir, tmp_path / "run", framework=framework, checkpoint_every=5, **SETTINGS)
    with monkeypatch.context() as patch:
        stop_after_checkpoint(patch, framework, step=5)
        with pytest.raises(TrainingInterrupted, match="stopped by SIGTERM in epoch 2 after step 2 of 4"):
            train(config)
    finished = [json.loads(line)["epoch"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert finished == [1]
    capsys.readouterr()
    resumed = train(config)
    assert "(train step 6)" in capsys.readouterr().out
    uninterrupted = whole(framework)
    assert_same_history(resumed.history, uninterrupted.history)
    weights = load_file(Path(resumed.workdir) / "model.safetensors")
    for key, value in load_file(Path(uninterrupted.workdir) / "model.safetensors").items():
        np.testing.assert_array_equal(weights[key], value, err_msg=key)


def test_the_flags_reach_the_settings():
    parser = OneLineErrorParser()
    add_train_arguments(parser)
    given = config_from_args(parser.parse_args(["--model", "resnet20", "--drop-path-rate", "0.1", "--ra-sampler",
                                                "--ra-reps", "2"]))
    assert (given.drop_path_rate, given.ra_sampler, given.ra_reps) == (0.1, True, 2)
    default = config_from_args(parser.parse_args(["--model", "resnet20"]))
    assert (default.drop_path_rate, default.ra_sampler, default.ra_reps) == (0.0, False, 3)  # ra_reps: torchvision's
    text = parser.format_help()
    assert "--drop-path-rate RATE" in text and "--ra-sampler, --no-ra-sampler" in text and "--ra-reps N" in text


@pytest.mark.parametrize("settings, message", [
    (dict(drop_path_rate=0.1), r"mnist_resnet takes no drop_path_rate: stochastic depth drops residual branches, "
                               r"which only the \d+ residual nets .* \(e.g. resnet18, resnet20, preact_resnet18\)$"),
    (dict(model="plain20", drop_path_rate=0.1), "plain20 takes no drop_path_rate"),
    (dict(model="resnet20", drop_path_rate=1.0), r"drop_path_rate must be in \[0, 1\), got 1.0"),
    (dict(model="resnet20", drop_path_rate=-0.1), r"drop_path_rate must be in \[0, 1\), got -0.1"),
    (dict(model="resnet20", model_options={"drop_path_rate": 0.1}), "give drop_path_rate as a setting of its own"),
    (dict(model="resnet20", ra_sampler=True, ra_reps=0), "ra_reps must be a positive integer, got 0"),
    (dict(model="resnet20", ra_sampler=True), r"the RA sampler keeps 64 // 256 \* 256 // 1 = 0 of mnist's training "
                                              r"images per process and epoch, .* it needs at least 256 of them"),
])
def test_settings_that_cannot_work_are_refused(settings, message, mnist_dir, tmp_path):
    with pytest.raises(ConfigError, match=message) as refused:
        train(tiny(mnist_dir, tmp_path, **settings))
    assert "\n" not in str(refused.value)


def test_fine_tuning_takes_the_variant_not_the_stochastic_depth_of_its_source(whole):
    """--init-from a run trained with drop_path_rate 0.1, without --model: the new run builds the
    same variant, and its own --drop-path-rate (default 0) decides on stochastic depth."""
    source = whole("flax").workdir
    config, opened = open_init(TrainConfig(model=None, init_from=str(source), dataset="mnist"), channels=1)
    assert config.model == "resnet20" and opened.variant.kwargs["drop_path_rate"] == 0.1
    assert "drop_path_rate" not in config.model_options and config.drop_path_rate == 0.0
