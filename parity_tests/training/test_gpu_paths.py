"""The GPU code paths, as far as a machine without a GPU can check them: the CUDA install chosen
when nvidia-smi finds a GPU, device selection in both frameworks, the TF32 flag, prefetching,
and the GPU check script's refusals and table. No test here measures a speed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

from flax_resnet.core import timing
from flax_resnet.core.augment import AugmentSpec
from flax_resnet.core.config import ConfigError, OneLineErrorParser, TrainConfig, add_train_arguments, config_from_args
from flax_resnet.core.data.gather import gather_batch
from flax_resnet.models import model_skeleton
from flax_resnet.training.step import data_mesh, jit_eval_step, matmul_precision, prefetch, select_devices
from parity_tests.helpers.scripts import REPO
from torch_ref.training.loop import memory_format, prefetch_to
from torch_ref.training.step import select_device, set_tf32

FAKE_NVIDIA_SMI = """#!/bin/sh
if [ "$1" = "-L" ]; then echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)"; exit 0; fi
echo "| NVIDIA-SMI 550.54.15   Driver Version: 550.54.15   CUDA Version: {cuda}.4 |"
"""


def fake_gpu_path(tmp_path, cuda="12"):
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    script = folder / "nvidia-smi"
    script.write_text(FAKE_NVIDIA_SMI.format(cuda=cuda))
    script.chmod(0o755)
    return f"{folder}{os.pathsep}{os.environ['PATH']}"


def make_dry_run(tmp_path, *args, path=None):
    """The commands `make install` would run (make -n), then the value make exports for JAX's preallocation."""
    env = dict(os.environ, PATH=path or os.environ["PATH"])
    env.pop("XLA_PYTHON_CLIENT_PREALLOCATE", None)

    def make(*extra):
        done = subprocess.run(["make", f"VENV={tmp_path / 'venv'}", *args, *extra], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    shown = make("-s", "--eval", "show-env:;@echo PREALLOCATE=$$XLA_PYTHON_CLIENT_PREALLOCATE", "show-env")
    return make("-n", "install") + shown


def installs(output: str) -> str:
    """What the install line installs: the package and its extras."""
    (line,) = [line for line in output.splitlines() if "pip install" in line and " -e " in line]
    return line.split(" -e ", 1)[1].strip()


def test_make_installs_jax_cuda_wheels_only_where_a_gpu_is_found(tmp_path):
    without = make_dry_run(tmp_path, "NVIDIA_SMI=/nonexistent/nvidia-smi")
    assert installs(without) == "'.[dev]'" and ".installed-cpu" in without
    assert without.splitlines()[-1] == "PREALLOCATE="

    found = make_dry_run(tmp_path, path=fake_gpu_path(tmp_path, cuda="12"))  # nvidia-smi on PATH
    assert installs(found) == "'.[dev,cuda12]'" and ".installed-cuda12" in found
    assert found.splitlines()[-1] == "PREALLOCATE=false"
    assert installs(make_dry_run(tmp_path, path=fake_gpu_path(tmp_path, cuda="13"))) == "'.[dev,cuda13]'"

    asked = make_dry_run(tmp_path, "NVIDIA_SMI=/nonexistent/nvidia-smi", "GPU=1")  # the driver's CUDA unknown
    assert installs(asked) == "'.[dev,cuda13]'"
    refused = make_dry_run(tmp_path, "GPU=0", path=fake_gpu_path(tmp_path))
    assert installs(refused) == "'.[dev]'"


def test_pyproject_has_the_extras_the_makefile_names():
    text = (REPO / "pyproject.toml").read_text()
    assert 'cuda12 = ["jax[cuda12]"]' in text and 'cuda13 = ["jax[cuda13]"]' in text


def test_device_selection_in_both_frameworks():
    assert select_devices("auto") == jax.devices()
    assert {d.platform for d in select_devices("cpu")} == {"cpu"}
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if any(d.platform == "gpu" for d in jax.devices()):
        assert {d.platform for d in select_devices("gpu")} == {"gpu"}
    else:
        with pytest.raises(ConfigError, match="no gpu device visible to JAX"):
            select_devices("gpu")
    if torch.cuda.is_available():
        assert select_device("gpu") == torch.device("cuda")
    else:
        with pytest.raises(ConfigError, match="no gpu device visible to torch"):
            select_device("gpu")


def test_device_and_tf32_arguments():
    parser = OneLineErrorParser()
    add_train_arguments(parser)
    config = config_from_args(parser.parse_args(["--device", "gpu", "--tf32"]))
    assert (config.device, config.tf32) == ("gpu", True)
    assert (TrainConfig().device, TrainConfig().tf32) == ("auto", False)
    assert config_from_args(parser.parse_args(["--no-tf32"])).tf32 is False
    with pytest.raises(SystemExit) as stopped:
        parser.parse_args(["--device", "tpu"])
    assert stopped.value.code == 2
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        from flax_resnet.core.config import validate
        validate(TrainConfig(device="tpu"))


# Subprocesses that must see no GPU, whatever the machine has.
NO_GPU = {"CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu"}


def test_a_run_asking_for_a_missing_gpu_stops_before_any_work(tmp_path, monkeypatch):
    from flax_resnet.training import train

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no gpu device visible to torch"):
        train(TrainConfig(framework="torch", device="gpu", workdir=str(tmp_path / "run"), epochs=1))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("tf32,expected", [(False, "HIGHEST"), (True, "HIGH")])
def test_tf32_flag_sets_the_precision_of_every_convolution_and_matmul(tf32, expected):
    from flax import nnx

    from flax_resnet.training.step import TrainState

    model = model_skeleton("resnet20")  # shapes only
    model.eval()
    eval_graphdef, params, batch_stats = nnx.split(model, nnx.Param, ...)
    state = TrainState(params, batch_stats, (), jax.ShapeDtypeStruct((), np.int32))
    step = jit_eval_step(eval_graphdef, data_mesh(jax.devices()[:1]), augment=AugmentSpec(mean=(0.5,) * 3,
                                                                                       std=(0.25,) * 3), tf32=tf32)
    batch = {"image": np.zeros((2, 8, 8, 3), np.uint8), "label": np.zeros(2, np.int32),
             "mask": np.ones(2, np.float32)}
    ops = [line for line in step.lower(state, batch).as_text().splitlines()
           if "stablehlo.convolution" in line or "stablehlo.dot_general" in line]
    assert len(ops) == 20  # 19 convolutions and the classifier
    for line in ops:
        # convolution: precision_config = [#stablehlo<precision X>, ...]; dot_general: precision = [X, X]
        found = re.findall(r"precision (\w+)>", line) or re.findall(r"\w+", line.split("precision = [")[-1].split("]")[0])
        assert found == [expected, expected], line
    assert matmul_precision(tf32) == ("tensorfloat32" if tf32 else "float32")


def test_set_tf32_switches_both_torch_flags():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        set_tf32(True)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        set_tf32(False)
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_prefetch_keeps_order_and_makes_the_next_batch_first():
    made = []

    def make(item):
        made.append(item)
        return item * 10

    seen = []
    for value in prefetch(make, range(5), size=2):
        seen.append((value, list(made)))
    assert [value for value, _ in seen] == [0, 10, 20, 30, 40]
    # When batch k is handed out, batch k + 1 has already been made (the last has no successor).
    assert [made_then[-1] for _, made_then in seen] == [1, 2, 3, 4, 4]
    assert list(prefetch(make, [], size=2)) == []


def test_prefetch_passes_errors_on():
    def make(item):
        if item == 2:
            raise ValueError("bad batch")
        return item

    with pytest.raises(ValueError, match="bad batch"):
        list(prefetch(make, range(4)))


@pytest.mark.parametrize("count", [1, 7])
def test_gather_batch_is_fancy_indexing_into_aligned_buffers(count):
    rng = np.random.default_rng(count)
    arrays = {"image": rng.integers(0, 256, (20, 5, 3, 3), dtype=np.uint8), "label": np.arange(20, dtype=np.int32)}
    indices = rng.permutation(20)[:count]
    batch = gather_batch(arrays, indices)
    for key, array in arrays.items():
        np.testing.assert_array_equal(batch[key], array[indices])
        assert batch[key].dtype == array.dtype and batch[key].ctypes.data % 64 == 0
        assert not np.shares_memory(batch[key], array)


def test_torch_batches_stay_as_they_are_on_the_cpu_and_go_channels_last_on_cuda():
    images, labels = torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.long)
    (moved,) = list(prefetch_to(torch.device("cpu"), [(images, labels, 0.1)]))
    assert moved[0] is images and moved[1] is labels and moved[2] == 0.1
    assert memory_format(torch.device("cpu")) == torch.contiguous_format
    assert memory_format(torch.device("cuda")) == torch.channels_last


def test_bench_refuses_a_missing_gpu_with_one_line():
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "bench.py"), "--model", "resnet20", "--batch-size",
                           "2", "--image-size", "8", "--steps", "1", "--device", "gpu", "--no-loop"],
                          cwd=REPO, env=dict(os.environ, **NO_GPU), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines()[-1].startswith("error: no gpu device visible to")
    assert "Traceback" not in done.stderr


def test_gpu_check_refuses_to_run_without_a_gpu(tmp_path):
    script = str(REPO / "scripts" / "gpu_check.sh")
    env = dict(os.environ, PATH=f"/nonexistent{os.pathsep}/usr/bin{os.pathsep}/bin")
    done = subprocess.run(["bash", script, str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "no NVIDIA GPU here" in done.stderr and not (tmp_path / "out").exists()
    # nvidia-smi answers, but JAX has no GPU to use.
    env = dict(os.environ, PATH=fake_gpu_path(tmp_path), PYTHON=sys.executable, **NO_GPU)
    done = subprocess.run(["bash", script, str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "JAX sees no GPU" in done.stderr and not (tmp_path / "out").exists()


def test_gpu_check_table_lists_every_result(tmp_path):
    base = {"batch_size": 256, "image_size": 224, "precision": "bf16", "steps": 10,
            "environment": {"date": "2026-12-01", "jax": "0.10.2", "torch": "2.14.1", "cpu": "some CPU"}}
    (tmp_path / "gpu.txt").write_text("NVIDIA H100, 550.54, 81559 MiB\n")
    (tmp_path / "a.json").write_text(json.dumps({**base, "model": "resnet50", "flax_train_img_per_s": 3100.0,
                                                 "torch_train_img_per_s": 2500.0, "flax_vs_torch_train": 1.24,
                                                 "flax_vs_torch_compile_train": 0.97, "flax_train_xla_buffers_mib": 9000}))
    (tmp_path / "b.json").write_text(json.dumps({**base, "model": "resnet18", "options": {"stem": "cifar"},
                                                 "batch_size": 512, "image_size": 32, "flax_eval_img_per_s": 90000.0}))
    (tmp_path / "loop.json").write_text(json.dumps({"loop_cost": {"resnet18_cifar_b512": {
        "loop_host_ms": 0.5, "fraction_of_target": 0.03, "target_step_ms": 17.1}}}))
    (tmp_path / "eval_parity.txt").write_text("5 passed in 20.00s\n")
    (tmp_path / "skipped.txt").write_text("gpu_check: resnet18_cifar_b512_fp32 skipped, out of time\n")
    table = timing.gpu_check_table(tmp_path)
    assert table.startswith("# GPU check: NVIDIA H100")
    assert "| resnet50, 256, 224x224, bf16 | 3100.0 | 2500.0 | - | - | 1.24x | - | 0.97x | 9000 | - |" in table
    assert "| resnet18, stem cifar, 512, 32x32, bf16 | 90000.0 |" in table
    assert "0.50 ms of host work per step, 3.0% of the 17.1 ms target" in table
    assert "5 passed" in table and "skipped, out of time" in table
