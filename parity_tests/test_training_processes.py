"""Two JAX processes over 127.0.0.1 train as one process with two devices does.

scripts/launch.py starts two processes of scripts/train.py, one CPU device each, joined by gloo;
each process puts its half of every global batch on its device, and BatchNorm normalizes over the
whole batch through the collectives. The reference is one process with two devices
(XLA_FLAGS=--xla_force_host_platform_device_count=2): the same program, partitioned the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from parity_tests.training_fixtures import exported_weights

REPO = Path(__file__).resolve().parent.parent
DEADLINE = 400  # seconds for either command


def run(command: list[str], devices: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", "JAX_DEFAULT_MATMUL_PRECISION": "highest",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    # subprocess.run kills the command when the deadline passes; the launcher's processes die with it.
    return subprocess.run([sys.executable, *command], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=DEADLINE)


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

    histories = [[json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
                 for name in ("two", "one")]
    for a, b in zip(*histories):
        for key in ("train_loss", "test_loss", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), (a["epoch"], key)
        assert a["train_accuracy"] == pytest.approx(b["train_accuracy"], abs=1 / 64)
    weights_two, weights_one = exported_weights(tmp_path / "two"), exported_weights(tmp_path / "one")
    for key, value in weights_one.items():  # BatchNorm running statistics included
        np.testing.assert_allclose(weights_two[key], value, rtol=1e-4, atol=1e-5, err_msg=key)
