"""Fine-tuning with `--init-from`: the source's weights, a new classifier when the classes differ,
frozen backbones and statistics, the same start in both trainers, and clean refusals."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

import flax_resnet
import torch_ref
from flax_resnet.core.config import ConfigError, TrainConfig, add_train_arguments, config_from_args
from flax_resnet.core.initial_weights import initial_state_dict
from flax_resnet.porting.fine_tune import open_init, starting_state
from flax_resnet.porting.sources import build_model, read_source, resolve_variant
from flax_resnet.training import train
from parity_tests.helpers.hub_fixtures import save_for_hf, timm_model
from parity_tests.helpers.scripts import load_script
from parity_tests.helpers.training_fixtures import tiny
from parity_tests.helpers.twins import randomize_batchnorm, relative_error

STATISTICS = ("running_mean", "running_var", "num_batches_tracked")
# With the suite's loadgroup scheduling, the tests that start from `trained_run` share one worker,
# so the run is trained once.
pytestmark = pytest.mark.xdist_group("trained_run")


def load_train_script():
    module = load_script("train")
    return module


def weights(run_dir) -> dict[str, np.ndarray]:
    return load_file(Path(run_dir) / "model.safetensors")


def backbone(state):
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def assert_equal_arrays(got, want):
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


# ---------------------------------------------------------------- the start


def test_a_tiny_learning_rate_keeps_the_source_test_accuracy(trained_run, tmp_path):
    source, record = trained_run
    result = train(TrainConfig(model=None, init_from=str(source), epochs=1, lr=1e-9, freeze_bn=True,
                               batch_size=1000, workdir=str(tmp_path / "tuned"), progress=False))
    assert result.history[-1]["test_accuracy"] == record["test_accuracy"] > 0.5
    assert result.history[-1]["test_loss"] == pytest.approx(record["test_loss"], rel=1e-5)
    config = json.loads((tmp_path / "tuned" / "config.json").read_text())
    stored = json.loads((source / "config.json").read_text())
    assert config["model"] == "mnist_resnet" and config["init"]["classifier"] == "kept"
    assert config["mean"] == stored["augment"]["mean"]  # the normalization the weights were trained with


def test_a_different_number_of_classes_reinitializes_only_the_classifier(tmp_path):
    torch.manual_seed(0)
    five = torch_ref.create_model("mnist_resnet", num_classes=5)
    randomize_batchnorm(five)
    torch.save(five.state_dict(), tmp_path / "five.pth")
    config = TrainConfig(model=None, init_from=str(tmp_path / "five.pth"), seed=3)
    config, opened = open_init(config, channels=1)
    kwargs = {"num_classes": 10, "in_channels": 1}
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in torch_ref.create_model("mnist_resnet", **kwargs).state_dict().items()}
    state, notes, record = starting_state(opened, config.model, kwargs, shapes, config.seed)
    assert notes == ["classifier re-initialized: the source has 5 classes, this run 10"]
    assert record["classifier"] == "re-initialized"
    fresh = initial_state_dict("mnist_resnet", kwargs, {k: shapes[k] for k in ("fc.weight", "fc.bias")}, 3)
    assert_equal_arrays({k: state[k] for k in fresh}, fresh)  # what a new run with seed 3 starts from
    assert_equal_arrays(backbone(state), backbone({k: v.numpy() for k, v in five.state_dict().items()}))


def test_the_command_line_says_the_classifier_was_reinitialized(tmp_path, mnist_dir, capsys):
    torch.save(torch_ref.create_model("mnist_resnet", num_classes=5).state_dict(), tmp_path / "five.pth")
    status = load_train_script().main(["--init-from", str(tmp_path / "five.pth"), "--framework", "torch",
                                       "--dataset", "mnist", "--data-dir", str(mnist_dir), "--epochs", "1",
                                       "--batch-size", "16", "--no-progress", "--workdir", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert status == 0
    assert "classifier re-initialized: the source has 5 classes, this run 10" in out
    assert "model from the source: mnist_resnet" in out


@pytest.mark.parametrize("argv, fragments", [
    (["--model", "resnet20"], ["does not fit resnet20:", "missing key(s): bn1.bias", "unexpected key(s):"]),
    (["--model", "resnet18", "--stem", "cifar"], ["does not fit resnet18: conv1.weight has shape (64, 3, 3, 3) "
                                                  "in the file, (64, 1, 3, 3) in the model"]),
], ids=["another_model", "another_input"])
def test_a_wrong_model_is_refused_in_one_line(tmp_path, mnist_dir, capsys, argv, fragments):
    source = "mnist.pth" if argv[1] == "resnet20" else "cifar.pth"
    model = (torch_ref.create_model("mnist_resnet") if source == "mnist.pth"
             else torch_ref.create_model("resnet18", stem="cifar", num_classes=10))
    torch.save(model.state_dict(), tmp_path / source)
    with pytest.raises(SystemExit) as exited:
        load_train_script().main(["--init-from", str(tmp_path / source), *argv, "--dataset", "mnist",
                                  "--data-dir", str(mnist_dir), "--workdir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"error: --init-from {tmp_path / source}: " in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- freezing, in both trainers


@pytest.mark.parametrize("frozen", ["freeze_backbone", "freeze_bn"])
def test_both_trainers_freeze_alike_from_the_same_start(trained_run, mnist_dir, tmp_path, frozen):
    run_dir, _ = trained_run
    # A Flax checkpoint and a run folder: either kind of PATH gives the same start.
    flax_resnet.save(_model_of(run_dir), tmp_path / "ckpt", source=read_source(run_dir).record())
    source = weights(run_dir)
    results = {}
    for framework, path in (("flax", tmp_path / "ckpt"), ("torch", run_dir)):
        config = tiny(mnist_dir, tmp_path / framework, framework=framework, model=None, init_from=str(path),
                      epochs=2, lr=0.05, **{frozen: True})
        results[framework] = train(config)
        tuned = weights(tmp_path / framework)
        statistics = {k: v for k, v in tuned.items() if k.endswith(STATISTICS)}
        assert_equal_arrays(statistics, {k: v for k, v in source.items() if k.endswith(STATISTICS)})
        moved = [k for k in tuned if not k.endswith(STATISTICS) and not np.array_equal(tuned[k], source[k])]
        if frozen == "freeze_backbone":
            assert sorted(moved) == ["fc.bias", "fc.weight"], framework
        else:
            assert "conv1.weight" in moved and "fc.weight" in moved, framework
    flax_history, torch_history = results["flax"].history, results["torch"].history
    for ours, theirs in zip(torch_history, flax_history):
        assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-4)
    flax_weights, torch_weights = weights(tmp_path / "flax"), weights(tmp_path / "torch")
    for key, value in torch_weights.items():
        assert relative_error(value, flax_weights[key]) <= 1e-4, key


def _model_of(run_dir):
    source = read_source(run_dir)
    return build_model(source, resolve_variant(source)[0])


# ---------------------------------------------------------------- settings


def parse(argv):
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    return config_from_args(parser.parse_args(argv))


def test_the_finetune_preset_and_the_model_of_the_source():
    config = parse(["--preset", "finetune", "--init-from", "weights.pth"])
    assert (config.model, config.lr, config.schedule, config.label_smoothing, config.epochs) == \
        (None, 0.0025, "cosine", 0.1, 10)
    assert parse(["--init-from", "w.pth", "--model", "resnet18"]).model == "resnet18"
    assert parse([]).model == "mnist_resnet"
    for flag in ("--freeze-backbone", "--freeze-bn"):
        with pytest.raises(ConfigError, match="needs init_from"):
            parse([flag])


def test_the_source_preprocessing_completes_the_config(tmp_path):
    save_for_hf(timm_model("resnet18", num_classes=10), tmp_path / "timm")
    config, opened = open_init(TrainConfig(model=None, init_from=str(tmp_path / "timm")), channels=3)
    assert (config.model, config.mean, config.std, config.image_size) == \
        ("resnet18", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 224)
    assert config.model_options == {"stem": "imagenet", "maxpool": True, "zero_init_residual": False}
    explicit, _ = open_init(TrainConfig(model=None, init_from=str(tmp_path / "timm"), image_size=64,
                                        mean=(0.5,) * 3, std=(0.25,) * 3), channels=3)
    assert (explicit.mean, explicit.image_size) == ((0.5,) * 3, 64)  # the run's own settings win
    gray, _ = open_init(TrainConfig(model=None, init_from=str(tmp_path / "timm")), channels=1)
    assert gray.mean is None  # three channels' statistics do not fit one-channel data
