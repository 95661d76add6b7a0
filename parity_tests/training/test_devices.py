"""Data parallel: a run over 2 devices matches the same run on 1 device.

The batch is split across the devices and BatchNorm must normalize with the statistics of the
whole batch; per-device statistics would move the numbers far beyond the tolerance here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from flax_resnet.training import train
from parity_tests.helpers.scripts import REPO
from parity_tests.helpers.training_fixtures import tiny

TWO_DEVICES = """
import json, sys
import jax
from flax_resnet.core.config import TrainConfig
from flax_resnet.training import train
assert jax.device_count() == 2, jax.devices()
print(json.dumps(train(TrainConfig.from_json(json.loads(sys.argv[1]))).history))
"""


def test_two_devices_match_one(mnist_dir, tmp_path):
    assert jax.device_count() == 1
    # A small lr: with random labels a large one makes training chaotic, and 1e-7 summation-order
    # differences between the two programs grow past any tolerance within a few steps.
    settings = dict(model="resnet20", epochs=1, lr=0.002, momentum=0.9, weight_decay=5e-4)
    config = tiny(mnist_dir, tmp_path / "two", **settings)
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_DEFAULT_MATMUL_PRECISION": "highest"}
    result = subprocess.run([sys.executable, "-c", TWO_DEVICES, json.dumps(config.to_json())],
                            capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    two = json.loads(result.stdout.strip().splitlines()[-1])
    assert json.loads((tmp_path / "two" / "config.json").read_text())["devices"] == 2

    one = train(tiny(mnist_dir, tmp_path / "one", **settings))
    for a, b in zip(two, one.history):
        for key in ("train_loss", "test_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), (a["epoch"], key)
        assert a["train_accuracy"] == pytest.approx(b["train_accuracy"], abs=1 / 64)
    weights_two = load_file(tmp_path / "two" / "model.safetensors")
    weights_one = load_file(tmp_path / "one" / "model.safetensors")
    for key, value in weights_one.items():  # BatchNorm running statistics included
        # atol: BN biases start at 0 and move by ~1e-4 in 4 steps, so their relative error is ill-posed.
        np.testing.assert_allclose(weights_two[key], value, rtol=1e-4, atol=1e-5, err_msg=key)
