"""Runs stopped by SIGTERM, SIGINT or SIGKILL, then resumed, end exactly as uninterrupted runs.

Each interrupted run is `scripts/train.py` in a subprocess, as a user runs it. To stop it at a known
step, its driver sends the signal to itself right after a --checkpoint-every checkpoint (or kills
itself inside orbax's write of one); the torch SIGKILL comes from this process instead, once the
checkpoint file of a known step has appeared. The resumed runs and the uninterrupted ones run here.
Every subprocess has a deadline and is killed if the test fails.

tiny(): 4 steps an epoch, 3 epochs. grad_accum 3: optimizer updates after steps 3, 6, 9, 12, so
every stop below falls inside an accumulation window and inside an epoch.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from flax_resnet.training import train
from parity_tests.helpers.scripts import REPO
from parity_tests.helpers.training_fixtures import assert_same_history, tiny

SETTINGS = dict(grad_accum=3, optimizer="sgd", momentum=0.9, weight_decay=5e-4)
DEADLINE = 300  # seconds for any one subprocess

# scripts/train.py's main(), with a signal sent at a known point. argv: mode, step, train.py's arguments.
DRIVER = """
import os, signal, sys
sys.path.insert(0, os.getcwd())
signal.signal(signal.SIGINT, signal.SIG_DFL)  # a test runner may have handed it down ignored
mode, step, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]

if mode in ("SIGTERM", "SIGINT"):  # after the checkpoint of `step`, as if the signal came then
    import flax_resnet.training.run_checkpoints as flax_checkpoints, torch_ref.training.run_checkpoints as torch_checkpoints
    for module in (flax_checkpoints, torch_checkpoints):
        def save(self, *args, _original=module.RunCheckpoints.save, **kwargs):
            _original(self, *args, **kwargs)
            if args[-1].step == step:
                os.kill(os.getpid(), getattr(signal, mode))
        module.RunCheckpoints.save = save
elif mode == "SIGKILL-inside-orbax":  # while orbax writes the checkpoint of `step`: state done, progress not
    from orbax.checkpoint._src.handlers import json_checkpoint_handler as handler
    original = handler.JsonCheckpointHandler._save_fn
    async def save_fn(self, item, directory):
        if isinstance(item, dict) and item.get("step") == step and "steps_done" in item:
            os.kill(os.getpid(), signal.SIGKILL)
        return await original(self, item, directory)
    handler.JsonCheckpointHandler._save_fn = save_fn

sys.argv = ["scripts/train.py", *argv]
sys.path.insert(0, "scripts")
import runpy
runpy.run_path("scripts/train.py", run_name="__main__")
"""


def arguments(config) -> list[str]:
    """scripts/train.py's command line for a tiny() config."""
    argv = ["--framework", config.framework, "--dataset", config.dataset, "--data-dir", config.data_dir,
            "--batch-size", str(config.batch_size), "--epochs", str(config.epochs), "--lr", str(config.lr),
            "--crop-padding", str(config.crop_padding), "--eval-batch-size", str(config.eval_batch_size),
            "--grad-accum", str(config.grad_accum), "--momentum", str(config.momentum),
            "--weight-decay", str(config.weight_decay), "--no-progress", "--workdir", config.workdir]
    if config.checkpoint_every:
        argv += ["--checkpoint-every", str(config.checkpoint_every)]
    return argv


def start(mode: str, step: int, config) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", "JAX_DEFAULT_MATMUL_PRECISION": "highest"}
    return subprocess.Popen([sys.executable, "-c", DRIVER, mode, str(step), *arguments(config)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=DEADLINE)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return process.returncode, out, err


@pytest.fixture(scope="module")
def uninterrupted(mnist_dir, tmp_path_factory):
    """The reference runs, one per framework, made on first use."""
    runs = {}

    def run(framework):
        if framework not in runs:
            workdir = tmp_path_factory.mktemp(f"{framework}-whole")
            runs[framework] = train(tiny(mnist_dir, workdir, framework=framework, **SETTINGS))
        return runs[framework]

    return run


def assert_resumed_equals(resumed, whole):
    assert_same_history(resumed.history, whole.history)
    weights = load_file(Path(resumed.workdir) / "model.safetensors")
    for key, value in load_file(Path(whole.workdir) / "model.safetensors").items():
        np.testing.assert_array_equal(weights[key], value, err_msg=key)


@pytest.mark.parametrize("framework, signal_name, status, after, where, finished", [
    ("flax", "SIGTERM", 143, 6, "in epoch 2 after step 3 of 4", [1]),
    ("torch", "SIGINT", 130, 3, "in epoch 1 after step 4 of 4", []),  # before the epoch's evaluation
], ids=["flax-SIGTERM-mid-epoch", "torch-SIGINT-before-evaluation"])
def test_signal_stops_after_the_step_with_a_checkpoint_and_resumes_exactly(framework, signal_name, status, after,
                                                                            where, finished, mnist_dir, tmp_path,
                                                                            uninterrupted):
    """The signal comes right after the checkpoint of step `after`: the run finishes the next step
    (inside an accumulation window), checkpoints it, says how to resume and exits with 128 + the
    signal's number. The same command resumes it; it ends as the uninterrupted run."""
    config = tiny(mnist_dir, tmp_path / "run", framework=framework, checkpoint_every=3, **SETTINGS)
    code, _, err = finish(start(signal_name, after, config))
    assert code == status, err[-3000:]
    assert f"stopped by {signal_name} {where}" in err and "Traceback" not in err
    command = err.split("to resume, run the same command with the same --workdir:\n", 1)[1].strip()
    assert shlex.split(command)[2:] == arguments(config)
    metrics = tmp_path / "run" / "metrics.jsonl"
    if finished:
        assert [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()] == finished
    else:
        assert not metrics.exists()

    resumed = train(config)
    assert_resumed_equals(resumed, uninterrupted(framework))


def test_sigkill_inside_a_checkpoint_write_resumes_from_the_one_before(mnist_dir, tmp_path, uninterrupted):
    """Killed while orbax writes the checkpoint of step 6 (its arrays written, its progress not):
    that checkpoint never appears; the run resumes from step 3's, and ends as the uninterrupted run."""
    config = tiny(mnist_dir, tmp_path / "run", checkpoint_every=3, **SETTINGS)
    code, _, err = finish(start("SIGKILL-inside-orbax", 6, config))
    assert code == -signal.SIGKILL, err[-3000:]
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(os.listdir(checkpoints))[:2] == ["3", "4"] and any("tmp" in name for name in os.listdir(checkpoints))

    resumed = train(config)
    assert all(name.isdigit() for name in os.listdir(checkpoints)) and "12" in os.listdir(checkpoints)  # leftover gone
    assert_resumed_equals(resumed, uninterrupted("flax"))


def test_sigkill_at_any_moment_resumes_from_the_last_complete_checkpoint(mnist_dir, tmp_path, uninterrupted):
    """The torch twin, killed by this process as soon as the checkpoint of step 5 exists: with a
    checkpoint after every step, the kill lands in a step or in a write. The run resumes from the
    last complete checkpoint and ends as the uninterrupted run."""
    config = tiny(mnist_dir, tmp_path / "run", framework="torch", checkpoint_every=1, **SETTINGS)
    marker = tmp_path / "run" / "checkpoints" / "step_00000005.json"
    process = start("none", 0, config)
    try:
        deadline = time.monotonic() + DEADLINE
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        code, _, err = finish(process)
    assert code == -signal.SIGKILL, err[-3000:]
    names = os.listdir(tmp_path / "run" / "checkpoints")
    assert "step_00000005.json" in names and "step_00000012.json" not in names

    resumed = train(config)
    assert not [name for name in os.listdir(tmp_path / "run" / "checkpoints") if name.endswith(".tmp")]
    assert_resumed_equals(resumed, uninterrupted("torch"))
