"""The benchmark: it runs end to end on a tiny config, times the same computation in both
frameworks, and reports failures instead of crashing. No test here asserts a speed."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

from flax_resnet.core import timing
from flax_resnet.core.augment import AugmentSpec
from flax_resnet.core.config import TrainConfig
from flax_resnet.porting.state_dict import load_torch_state_dict
from flax_resnet.studies import benchmark
from flax_resnet.training.device_transforms import eval_transform
from flax_resnet.training.step import data_mesh, jit_train_step, put_batch, split_model
from parity_tests.helpers.relu_patterns import float64_relu_pattern, pinned_flax_relus, pinned_torch_relus
from parity_tests.helpers.scripts import REPO
from parity_tests.helpers.twins import make_twins, relative_error
from torch_ref.studies import benchmark as torch_benchmark

TINY = ["--model", "resnet20", "--batch-size", "4", "--image-size", "16", "--steps", "1", "--warmup", "0"]


def run_bench(*args):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "bench.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def test_cli_prints_a_table_then_one_json_line():
    done = run_bench(*TINY, "--no-torch-compile", "--untuned", "--no-loop")
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert (result["model"], result["batch_size"], result["image_size"]) == ("resnet20", 4, 16)
    for key in ("flax_train", "flax_untuned_train", "torch_train", "flax_eval", "flax_untuned_eval", "torch_eval"):
        assert result[f"{key}_img_per_s"] > 0, key
        assert f"{key.replace('_', ' ')}" in done.stdout  # a table row per contestant
    assert result["torch_compile_train_img_per_s"] is None  # skipped, still present
    assert result["flax_vs_torch_train"] > 0 and result["flax_untuned_vs_torch_eval"] > 0
    assert result["flax_train_xla_buffers_mib"] > 0
    assert "loop_overhead" not in result


def test_bad_options_exit_with_one_line():
    done = run_bench(*TINY, "--stem", "imagenet")  # the CIFAR nets take no stem option
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip().splitlines()[-1].startswith("error: resnet20 does not take option(s) stem")
    assert "Traceback" not in done.stderr


def test_a_failing_torch_compile_is_reported_not_raised(monkeypatch):
    def broken_compile(*args, **kwargs):
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(torch, "compile", broken_compile)
    config = timing.BenchConfig("resnet20", batch_size=2, image_size=16, steps=1, warmup=0, eval=False,
                                measure_memory=False)
    result = timing.run_benchmark(config)
    assert "no C++ compiler here" in result["torch_compile_train_error"]
    assert result["torch_compile_train_img_per_s"] is None
    assert result["flax_train_img_per_s"] > 0 and result["torch_train_img_per_s"] > 0
    assert "failed: RuntimeError: no C++ compiler here" in timing.format_table(result)


def test_both_frameworks_see_the_same_pixels():
    config = timing.BenchConfig("resnet20", batch_size=3, image_size=5)
    pixels, images, labels = timing.bench_batch(config, 3, 10)
    assert pixels.dtype == np.uint8 and images.dtype == np.float32 and labels.dtype == np.int32
    augment = AugmentSpec(mean=(timing.PIXEL_MEAN,) * 3, std=(timing.PIXEL_STD,) * 3)
    flax_view = np.asarray(eval_transform(jnp.asarray(pixels), augment, jnp.float32))
    assert relative_error(flax_view, images.transpose(0, 2, 3, 1)) <= 1e-6


def test_both_contestants_take_the_same_train_step():
    """The Flax contestant is the library's train step; from twin weights, one SGD step of each gives
    the same loss and the same new weights (both at a float64 run's ReLU patterns, see
    parity_tests/relu_patterns.py)."""
    torch_model, flax_model = make_twins("resnet20", seed=2)
    config = timing.BenchConfig("resnet20", batch_size=4, image_size=16)
    pixels, images, labels = timing.bench_batch(config, 3, 10)
    pattern = float64_relu_pattern(torch_model, images, train=True)
    tx = optax.sgd(0.1, momentum=0.9)
    graphdef, _, state = split_model(flax_model, tx)
    mesh = data_mesh(jax.devices()[:1])
    augment = AugmentSpec(mean=(timing.PIXEL_MEAN,) * 3, std=(timing.PIXEL_STD,) * 3)
    # A jitted step of its own: the pattern becomes a constant of the compiled program.
    step = jit_train_step.__wrapped__(graphdef, tx, mesh, augment=augment)
    with pinned_flax_relus(pattern):
        state, metrics = step(state, put_batch({"image": pixels, "label": labels}, mesh), jax.random.key(0))

    optimizer = torch.optim.SGD(torch_model.parameters(), lr=0.1, momentum=0.9)
    torch_step = torch_benchmark.make_torch_train_step(torch_model, optimizer)
    with pinned_torch_relus(pattern):
        torch_loss = torch_step(torch.from_numpy(images), torch.from_numpy(labels).long())

    assert relative_error(float(metrics["loss"]) / 4, torch_loss.item()) <= 1e-5
    load_torch_state_dict(flax_model, torch_model.state_dict())  # torch's new weights, Flax layout
    for ours, theirs in zip(jax.tree.leaves(state.params), jax.tree.leaves(nnx.state(flax_model, nnx.Param))):
        assert relative_error(ours, theirs) <= 1e-4


def test_training_loop_is_timed_against_its_bare_step(mnist_dir):
    config = TrainConfig(dataset="mnist", data_dir=str(mnist_dir), batch_size=16, progress=False)
    result = benchmark.measure_training_loop(config, rounds=1)
    assert result["loop_model"] == config.model and result["loop_batch_size"] == 16
    assert result["loop_dataset"] == "mnist" and result["loop_steps_per_epoch"] == 4  # 64 images
    assert result["loop_step_ms"] > 0 and result["bare_step_ms"] > 0
    assert result["loop_overhead"] == pytest.approx(result["loop_step_ms"] / result["bare_step_ms"] - 1)


def test_peak_heap_increase_sees_an_allocation():
    """The array is held for 0.2 s, so that the sampling thread runs while it lives even on a loaded
    machine (a bare np.ones(...).sum() lives for about 20 ms, and once went unseen)."""
    size_mib = 64

    def allocate_and_hold():
        array = np.ones(size_mib * 2**20 // 8)
        time.sleep(0.2)
        return array.sum()

    peak = timing.peak_heap_increase_mib(allocate_and_hold)
    assert size_mib * 0.95 <= peak <= size_mib * 1.5


def test_loop_cost_is_the_loop_around_a_step_that_does_nothing():
    cost = benchmark.measure_loop_cost(image_shape=(4, 4, 1), batch_size=8, steps=3, rounds=1, progress=False)
    assert (cost["batch_size"], cost["steps_per_epoch"], cost["image_shape"]) == (8, 3, [4, 4, 1])
    assert cost["loop_step_ms"] > 0 and cost["bare_step_ms"] > 0
    assert cost["loop_host_ms"] == pytest.approx(cost["loop_step_ms"] - cost["bare_step_ms"])
    # The table names each target and says how much of its step the loop's host work takes.
    result = {"model": "resnet20", "batch_size": 8, "image_size": 4, "precision": "fp32", "steps": 1,
              "load_average_before": 0.0, "load_average_after": 0.0, "environment": timing.environment(),
              "loop_cost": {"resnet18_cifar_b512": {**cost, "target_step_ms": 17.0, "fraction_of_target": 0.5}},
              "flax_vs_torch_compile_train": 0.8}
    table = timing.format_table(result)
    assert "resnet18_cifar_b512 (8 x 4x4x1)" in table and "50.0% of the 17.0 ms GPU target step" in table
    assert "Flax / torch.compile, train: 0.80x" in table
