"""The training loop: its files, resuming, divergence, and the command line's refusals."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import torch_ref
from flax_resnet.core.config import (
    PRESET_SUMMARIES,
    PRESETS,
    ConfigError,
    OneLineErrorParser,
    TrainConfig,
    add_train_arguments,
    config_from_args,
)
from flax_resnet.core.config.command_line import NEEDS
from flax_resnet.core.registry import MODELS
from flax_resnet.core.run.workdir import TrainingDiverged
from flax_resnet.porting.state_dict import to_torch_state_dict
from flax_resnet.training import train
from parity_tests.helpers.scripts import REPO, load_script
from parity_tests.helpers.training_fixtures import assert_same_history, read_events, scalars, tiny
from parity_tests.helpers.twins import relative_error

METRICS = {"epoch", "step", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr",
           "images_per_sec", "seconds", "skipped_images"}


def test_run_writes_every_output(mnist_dir, tmp_path):
    result = train(tiny(mnist_dir, tmp_path / "run", epochs=2))
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == result.history and len(lines) == 2
    assert set(result.history[0]) == METRICS and result.history[1]["step"] == 8
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"] == "mnist_resnet" and config["model_kwargs"] == {"num_classes": 10, "in_channels": 1}
    assert config["batch_size"] == 16 and config["augment"]["crop_padding"] == 2
    assert (tmp_path / "run" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(int(name) for name in os.listdir(tmp_path / "run" / "checkpoints")) == [4, 8]  # train steps

    # TensorBoard: every step's loss and lr, and each epoch's record at its step count.
    events = read_events(tmp_path / "run")
    assert sorted(scalars(events, "train/loss")) == list(range(1, 9)) and scalars(events, "train/images_per_sec")
    assert scalars(events, "train/lr")[1] == pytest.approx(0.02)  # the cosine schedule's first update
    for record in result.history:
        for key in ("train_loss", "test_loss", "test_accuracy", "lr"):
            assert scalars(events, f"epoch/{key}")[record["step"]] == pytest.approx(record[key], rel=1e-6), key

    # The exported weights load strictly into the torch twin, and compute what the Flax model computes.
    torch_model = torch_ref.create_model(config["model"], **config["model_kwargs"])
    torch_model.load_state_dict(load_file(tmp_path / "run" / "model.safetensors"), strict=True)
    images = np.random.default_rng(0).standard_normal((4, 28, 28, 1)).astype(np.float32)
    expected = np.asarray(result.model(images))
    with torch.no_grad():
        got = torch_model.eval()(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    assert relative_error(got, expected) <= 1e-5

    # The same workdir with another model is refused (before anything is written).
    with pytest.raises(ConfigError, match="model: 'mnist_resnet' -> 'resnet20'"):
        train(tiny(mnist_dir, tmp_path / "run", model="resnet20"))
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2


def test_resume_after_interrupt_matches_uninterrupted(mnist_dir, tmp_path):
    """Stopped after epoch 1 (as by Ctrl-C) and resumed: the same metrics and weights as one run,
    with a cosine schedule that depends on the total epoch count."""
    whole = train(tiny(mnist_dir, tmp_path / "whole", keep_checkpoints=1))

    def interrupt(record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny(mnist_dir, tmp_path / "split", keep_checkpoints=1), on_epoch_end=interrupt)
    assert len((tmp_path / "split" / "metrics.jsonl").read_text().splitlines()) == 1
    resumed = train(tiny(mnist_dir, tmp_path / "split", keep_checkpoints=1))
    assert_same_history(resumed.history, whole.history)
    # The resumed run's event file tells TensorBoard to drop points after step 4 from earlier files.
    events = read_events(tmp_path / "split")
    assert any(e.session_log.status == e.session_log.START and e.step == 5 for e in events)
    assert sorted(scalars(events, "train/loss")) == list(range(1, 13))
    for key, value in to_torch_state_dict(whole.model).items():
        np.testing.assert_array_equal(to_torch_state_dict(resumed.model)[key], value, err_msg=key)
    # keep_checkpoints=1 keeps the latest and the best (named by train step: 4 an epoch).
    best = max(whole.history, key=lambda r: r["test_accuracy"])["epoch"]
    assert sorted(int(p) for p in os.listdir(tmp_path / "whole" / "checkpoints")) == sorted({12, 4 * best})


def test_finished_run_continues_and_divergence_keeps_the_last_good_checkpoint(mnist_dir, tmp_path):
    """--epochs is the total: a finished 1-epoch run continued to 3 equals a 3-epoch run (constant
    schedule, so the schedule does not depend on the total). Continued again with a learning rate
    that blows up, it stops with the epoch-3 checkpoint, metrics and weights untouched."""
    settings = dict(schedule="constant", optimizer="adamw", weight_decay=0.01)
    whole = train(tiny(mnist_dir, tmp_path / "whole", **settings))
    train(tiny(mnist_dir, tmp_path / "grown", epochs=1, **settings))
    grown = train(tiny(mnist_dir, tmp_path / "grown", **settings))
    assert_same_history(grown.history, whole.history)

    workdir = tmp_path / "grown"
    weights = (workdir / "model.safetensors").read_bytes()
    with pytest.raises(TrainingDiverged, match=r"diverged.*epoch 4.*last good checkpoint \(after epoch 3\)"):
        train(tiny(mnist_dir, workdir, epochs=5, **{**settings, "lr": 1e4}))
    assert "12" in os.listdir(workdir / "checkpoints") and "16" not in os.listdir(workdir / "checkpoints")
    assert len((workdir / "metrics.jsonl").read_text().splitlines()) == 3
    assert (workdir / "model.safetensors").read_bytes() == weights


def parser_with_train_arguments() -> OneLineErrorParser:
    parser = OneLineErrorParser()
    add_train_arguments(parser)
    return parser


def parse(*argv) -> TrainConfig:
    return config_from_args(parser_with_train_arguments().parse_args(list(argv)))


def test_presets_and_flags():
    seed001 = parse("--preset", "seed001")
    assert (seed001.model, seed001.lr, seed001.momentum, seed001.batch_size, seed001.epochs) == \
        ("mnist_resnet", 0.01, 0.5, 64, 10)
    assert seed001.std == (0.3801,) and seed001.crop_padding == 0
    d2l = parse("--preset", "d2l", "--epochs", "3")
    assert (d2l.model, d2l.lr, d2l.batch_size, d2l.image_size, d2l.dataset, d2l.epochs) == \
        ("d2l_resnet18", 0.05, 256, 96, "fashion_mnist", 3)
    assert parse() == TrainConfig() and dataclasses.replace(parse("--nesterov"), nesterov=False) == TrainConfig()
    assert parse("--model", "resnet20", "--shortcut", "B").model_options == {"shortcut": "B"}
    assert set(PRESETS) >= {"seed001", "d2l"}
    assert set(PRESET_SUMMARIES) == set(PRESETS) - {"default"}
    help_text = " ".join(parser_with_train_arguments().format_help().split())
    assert all(f"{name}: {' '.join(summary.split())}" in help_text for name, summary in PRESET_SUMMARIES.items())


NEEDS_NAME = {f"--{name.replace('_', '-')}": name for name in NEEDS}
# Each flag alone, then beside the setting it needs.
DEPENDENT_FLAGS = [
    (("--ra-reps", "4"), ("--ra-sampler",)),
    (("--model-ema-steps", "8"), ("--model-ema",)),
    (("--model-ema-decay", "0.9"), ("--model-ema",)),
    (("--mixup-mode", "timm"), ("--cutmix-alpha", "1.0")),
    (("--warmup-start", "0.01"), ("--warmup-epochs", "1")),
    (("--milestones", "5", "10"), ("--schedule", "multistep")),
    (("--gamma", "0.5"), ("--schedule", "multistep")),
]


@pytest.mark.parametrize("alone, needed", DEPENDENT_FLAGS, ids=[alone[0] for alone, _ in DEPENDENT_FLAGS])
def test_a_flag_its_settings_would_ignore_is_refused(alone, needed):
    wanted = NEEDS[NEEDS_NAME[alone[0]]][0]
    assert needed[0] in wanted
    with pytest.raises(ConfigError, match=f"^{alone[0]} acts only with {re.escape(wanted)}, which these settings"):
        parse(*alone)
    config = parse(*alone, *needed)
    assert getattr(config, NEEDS_NAME[alone[0]]) != getattr(TrainConfig(), NEEDS_NAME[alone[0]])


def test_a_presets_own_values_are_not_the_users():
    """imagenet_tv2 keeps its ra_reps when the sampler is turned off."""
    assert parse("--preset", "imagenet_tv2", "--no-ra-sampler").ra_reps == 4


def run_script_in_process(capsys, *argv):
    """scripts/train.py's main() here, so the compiled steps and data are not rebuilt."""
    script = load_script("train")
    try:
        code = script.main(list(argv))
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def test_script_refuses_bad_settings_in_one_line(tmp_path):
    """As a user runs it: a subprocess, one line on stderr, exit 2, nothing created."""
    command = [sys.executable, str(REPO / "scripts" / "train.py"), "--model", "resnet9000",
               "--workdir", str(tmp_path / "run")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"train.py: error: unknown model 'resnet9000'; valid models: {', '.join(MODELS)}"]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, message", [
    (("--lr", "-1"), "lr must be a positive number, got -1.0"),
    (("--optimizer", "sgdd"), "invalid choice: 'sgdd'"),
    (("--model", "resnet20", "--maxpool", "true"), "resnet20 does not take option(s) maxpool; valid options: shortcut"),
    (("--schedule", "multistep", "--milestones", "3", "2"), "milestones must be increasing epochs"),
    (("--batch-size", "1000"), "batch_size 1000 is larger than the 64 training images of mnist"),
    (("--image-size", "32"), "mnist_resnet cannot take 32x32x1 images"),
    (("--coordinator-address", "127.0.0.1:1234", "--num-processes", "2"),
     "give coordinator_address, num_processes and process_id together"),
    (("--framework", "torch", "--coordinator-address", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "0"),
     "the torch trainer runs in one process"),
    (("--coordinator-address", "localhost", "--num-processes", "2", "--process-id", "2"),
     "coordinator_address must be HOST:PORT"),
])
def test_bad_settings_are_refused(argv, message, mnist_dir, tmp_path, capsys):
    code, stderr = run_script_in_process(capsys, "--dataset", "mnist", "--data-dir", str(mnist_dir), *argv,
                                         "--workdir", str(tmp_path / "run"))
    assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_script_reports_divergence_without_a_traceback(mnist_dir, tmp_path, capsys):
    code, stderr = run_script_in_process(capsys, "--dataset", "mnist", "--data-dir", str(mnist_dir),
                                         "--batch-size", "16", "--lr", "1e4", "--epochs", "1", "--no-progress",
                                         "--workdir", str(tmp_path / "nan"))
    assert code == 1 and "training diverged" in stderr and "no checkpoint was written yet" in stderr
    assert "Traceback" not in stderr and not (tmp_path / "nan" / "metrics.jsonl").exists()
