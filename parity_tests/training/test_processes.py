"""Two JAX processes over 127.0.0.1 train as one process with two devices does.

scripts/launch.py starts two processes of scripts/train.py, one CPU device each, joined by gloo;
each process reads only its half of every global batch (from the in-memory arrays, or decoding its
own share of an ImageFolder tree) and puts it on its device, and BatchNorm normalizes over the
whole batch through the collectives. The reference is one process with two devices
(XLA_FLAGS=--xla_force_host_platform_device_count=2): the same program, partitioned the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from parity_tests.helpers.image_trees import write_digit_tree
from parity_tests.helpers.scripts import REPO
from parity_tests.helpers.training_fixtures import exported_weights

DEADLINE = 400  # seconds for either command


def run(command: list[str], devices: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", "JAX_DEFAULT_MATMUL_PRECISION": "highest",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    # subprocess.run kills the command when the deadline passes; the launcher's processes die with it.
    return subprocess.run([sys.executable, *command], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=DEADLINE)


def assert_same_run(folder, reference):
    """metrics.jsonl and the exported weights of two runs agree to float tolerance."""
    histories = [[json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
                 for path in (folder, reference)]
    assert len(histories[0]) == len(histories[1])
    for a, b in zip(*histories):
        for key in ("train_loss", "test_loss", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), (a["epoch"], key)
        assert a["train_accuracy"] == pytest.approx(b["train_accuracy"], abs=1 / 64)
    weights, expected = exported_weights(folder), exported_weights(reference)
    for key, value in expected.items():  # BatchNorm running statistics included
        np.testing.assert_allclose(weights[key], value, rtol=1e-4, atol=1e-5, err_msg=key)


def test_two_processes_train_as_one_process_with_two_devices(mnist_dir, tmp_path):
    # resnet20 has BatchNorm; a small lr keeps the random-label training from amplifying the
    # summation-order differences of the two programs (see test_training_devices).
    argv = ["scripts/train.py", "--model", "resnet20", "--dataset", "mnist", "--data-dir", str(mnist_dir),
            "--batch-size", "16", "--epochs", "1", "--lr", "0.002", "--crop-padding", "2",
            "--eval-batch-size", "16", "--no-progress"]
    two = run(["scripts/launch.py", "--nproc", "2", "--", *argv, "--workdir", str(tmp_path / "two")], devices=1)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    one = run([*argv, "--workdir", str(tmp_path / "one")], devices=2)
    assert one.returncode == 0, one.stderr[-3000:]

    # Only process 0 wrote and printed; process 1's lines (gloo's, jax's) say whose they are.
    assert "2 cpu device(s) in 2 processes" in two.stdout
    assert all(line.startswith("[process 1] ") or "[process" not in line for line in two.stdout.splitlines())
    assert "epoch   1/1" in two.stdout and "[process 1] epoch" not in two.stdout
    assert len(list((tmp_path / "two").glob("events.out.tfevents.*"))) == 1

    assert_same_run(tmp_path / "two", tmp_path / "one")


# scripts/train.py as one process of a launched run; process 1 alone sends itself SIGTERM right
# after train step `at_step`. argv: at_step, then train.py's arguments (the launcher's at the end).
SIGNALLING_DRIVER = """
import os, signal, sys
sys.path.insert(0, {repo!r})
at_step = int(sys.argv.pop(1))
if sys.argv[sys.argv.index("--process-id") + 1] == "1":
    from flax_resnet.core.run import progress
    original = progress.StepEvents.after_step
    def after_step(self, steps_done, *args, **kwargs):
        if (self.epoch - 1) * self.steps_per_epoch + steps_done == at_step:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, steps_done, *args, **kwargs)
    progress.StepEvents.after_step = after_step
import runpy
sys.argv[0] = {train!r}
runpy.run_path({train!r}, run_name="__main__")
"""


def test_streamed_processes_stop_together_on_one_signal_and_resume_as_one_run(tmp_path):
    """An ImageFolder tree streamed by two processes, 7 steps an epoch. Process 1 alone gets SIGTERM
    after step 8; the processes agree on stopping at the next agreement step (10: epoch 2, step 3),
    checkpoint there and exit with 143; the same command resumes mid-epoch. The result is the
    uninterrupted one-process run's. (A signal in epoch 1 would stop both at its end, step 7.)"""
    tree = write_digit_tree(tmp_path / "digits", train_per_class=6, val_per_class=2)  # 7 steps of 8
    argv = ["--model", "resnet20", "--dataset", "imagefolder", "--data-dir", str(tree), "--image-size", "28",
            "--batch-size", "8", "--epochs", "2", "--lr", "0.002", "--eval-batch-size", "8", "--workers", "0",
            "--no-progress"]
    driver = tmp_path / "signalling_train.py"
    driver.write_text(SIGNALLING_DRIVER.format(repo=str(REPO), train=str(REPO / "scripts" / "train.py")))
    two = ["--workdir", str(tmp_path / "two")]

    stopped = run(["scripts/launch.py", "--nproc", "2", "--", str(driver), "8", *argv, *two], devices=1)
    assert stopped.returncode == 143, stopped.stdout[-3000:] + stopped.stderr[-3000:]
    assert "stopped by SIGTERM in epoch 2 after step 3 of 7" in stopped.stderr
    assert "to resume, run the same command" in stopped.stderr
    assert len((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()) == 1  # epoch 1 finished

    resumed = run(["scripts/launch.py", "--nproc", "2", "--", "scripts/train.py", *argv, *two], devices=1)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "in epoch 2 after step 3 of 7 (train step 10)" in resumed.stdout

    one = run(["scripts/train.py", *argv, "--workdir", str(tmp_path / "one")], devices=2)
    assert one.returncode == 0, one.stderr[-3000:]
    assert_same_run(tmp_path / "two", tmp_path / "one")
