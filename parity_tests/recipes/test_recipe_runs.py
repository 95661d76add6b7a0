"""Today's recipe pieces inside both trainers: mixed batches and their losses train the same in
Flax and in the torch twin, change what is trained, and resume exactly."""

from __future__ import annotations

import json

import pytest

from flax_resnet.core.config import ConfigError
from flax_resnet.training import train
from parity_tests.helpers.training_fixtures import assert_same_history, tiny

MIXED = {
    "torchvision": dict(mixup_alpha=0.2, cutmix_alpha=1.0, label_smoothing=0.1),
    "timm_bce": dict(mixup_alpha=0.1, cutmix_alpha=1.0, mixup_mode="timm", loss="bce", bce_target_threshold=0.2,
                     label_smoothing=0.1),
}


@pytest.mark.parametrize("recipe", list(MIXED))
def test_mixed_runs_agree_between_the_frameworks(recipe, mnist_dir, tmp_path):
    settings = dict(epochs=2, **MIXED[recipe])
    flax_run = train(tiny(mnist_dir, tmp_path / "flax", **settings))
    torch_run = train(tiny(mnist_dir, tmp_path / "torch", framework="torch", **settings))
    plain = train(tiny(mnist_dir, tmp_path / "plain", epochs=2))
    for ours, theirs, unmixed in zip(torch_run.history, flax_run.history, plain.history):
        for key in ("train_loss", "test_loss"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-4), (recipe, ours["epoch"], key)
        # the mixing is no no-op: the mixed targets give another loss from the same start
        assert abs(theirs["train_loss"] - unmixed["train_loss"]) > 1e-3 * unmixed["train_loss"]
    recorded = json.loads((tmp_path / "flax" / "config.json").read_text())
    assert {key: recorded[key] for key in MIXED[recipe]} == MIXED[recipe]
    assert recorded["augment"]["mixing"]["mode"] == MIXED[recipe].get("mixup_mode", "torchvision")


def test_a_mixed_run_resumes_as_the_uninterrupted_one(mnist_dir, tmp_path):
    settings = dict(keep_checkpoints=1, **MIXED["timm_bce"])
    whole = train(tiny(mnist_dir, tmp_path / "whole", **settings))

    def interrupt(record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny(mnist_dir, tmp_path / "split", **settings), on_epoch_end=interrupt)
    resumed = train(tiny(mnist_dir, tmp_path / "split", **settings))
    assert_same_history(resumed.history, whole.history)


@pytest.mark.parametrize("settings, message", [
    (dict(mixup_alpha=-1.0), "mixup_alpha must be >= 0"),
    (dict(mixup_mode="fmix"), "unknown mixup_mode 'fmix'; choose from torchvision, timm"),
    (dict(loss="focal"), "unknown loss 'focal'; choose from cross_entropy, bce"),
    (dict(bce_target_threshold=0.2), "bce_target_threshold needs loss bce"),
    (dict(loss="bce", mixup_alpha=0.2, label_smoothing=0.1), "bce with torchvision-style mixing takes no"),
])
def test_recipe_settings_that_cannot_work_are_refused(settings, message, mnist_dir, tmp_path):
    with pytest.raises(ConfigError, match=message):
        train(tiny(mnist_dir, tmp_path, **settings))
