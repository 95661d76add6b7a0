"""`--framework torch` trains torch_ref the way the Flax trainer trains: same start, same numbers."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

import torch_ref
from flax_resnet.core.config import TrainConfig
from flax_resnet.training import train
from parity_tests.helpers.training_fixtures import assert_same_history, tiny
from parity_tests.helpers.twins import relative_error


def test_torch_trainer_follows_the_flax_trainer(mnist_dir, tmp_path):
    """Same data order, augmentation, initial weights, SGD with momentum and weight decay, cosine
    schedule: per-epoch metrics and final weights agree closely."""
    settings = dict(epochs=2, momentum=0.9, weight_decay=5e-4, crop_padding=2)
    flax_run = train(tiny(mnist_dir, tmp_path / "flax", **settings))
    torch_run = train(tiny(mnist_dir, tmp_path / "torch", framework="torch", **settings))
    assert isinstance(torch_run.model, torch.nn.Module)
    for ours, theirs in zip(torch_run.history, flax_run.history):
        for key in ("train_loss", "test_loss", "lr"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-4), (ours["epoch"], key)
        assert ours["step"] == theirs["step"]
    flax_weights = load_file(tmp_path / "flax" / "model.safetensors")
    torch_weights = load_file(tmp_path / "torch" / "model.safetensors")
    assert flax_weights.keys() == torch_weights.keys()
    for key, value in torch_weights.items():
        assert relative_error(value.numpy(), flax_weights[key].numpy()) <= 1e-4, key

    # The same files as the Flax trainer, and weights that load into torch_ref strictly.
    config = json.loads((tmp_path / "torch" / "config.json").read_text())
    assert config["framework"] == "torch" and config["model_kwargs"] == {"num_classes": 10, "in_channels": 1}
    assert len((tmp_path / "torch" / "metrics.jsonl").read_text().splitlines()) == 2
    assert (tmp_path / "torch" / "curves.png").stat().st_size > 0
    torch_ref.create_model(config["model"], **config["model_kwargs"]).load_state_dict(torch_weights, strict=True)


def test_torch_resume_matches_uninterrupted(mnist_dir, tmp_path):
    config = dict(framework="torch", keep_checkpoints=1, optimizer="adam", weight_decay=1e-4)
    whole = train(tiny(mnist_dir, tmp_path / "whole", **config))

    def interrupt(record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny(mnist_dir, tmp_path / "split", **config), on_epoch_end=interrupt)
    resumed = train(tiny(mnist_dir, tmp_path / "split", **config))
    assert_same_history(resumed.history, whole.history)
    for key, value in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    best = max(whole.history, key=lambda r: r["test_accuracy"])["epoch"]
    kept = sorted(os.listdir(tmp_path / "whole" / "checkpoints"))  # named by train step: 4 an epoch
    assert kept == sorted(f"step_{4 * epoch:08d}.{suffix}" for epoch in {3, best} for suffix in ("pt", "json"))
    assert TrainConfig.from_json(json.loads((tmp_path / "split" / "config.json").read_text())).framework == "torch"
