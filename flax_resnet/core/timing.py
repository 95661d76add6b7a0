"""Timing contestants side by side in one process: the framework-neutral half of the benchmark.

Each contestant (a train or eval step of one framework) is set up and warmed up, then the
contestants take turns step by step, so a load change on a shared machine hits them alike.
Throughput is the median over the timed steps. `flax_resnet.studies.benchmark` builds the Flax
contestants and `torch_ref.studies.benchmark` the torch ones.
"""

from __future__ import annotations

import ctypes
import dataclasses
import importlib.metadata
import json
import os
import platform
import resource
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from flax_resnet.core import frameworks
from flax_resnet.core.registry import resolve

PRECISIONS = ("fp32", "bf16")
# Both frameworks see the same normalized pixels: Flax gets uint8 and normalizes inside its step,
# as `scripts/train.py` does; torch gets the normalized float32 batch.
PIXEL_MEAN, PIXEL_STD = 0.5, 0.25


@dataclasses.dataclass
class BenchConfig:
    """What to measure. `options` are the model's registry options (e.g. {'stem': 'cifar'})."""

    model: str
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    batch_size: int = 128
    image_size: int = 32
    precision: str = "fp32"
    steps: int = 10
    warmup: int = 2
    seed: int = 0
    torch_compile: bool = True
    train: bool = True
    eval: bool = True
    untuned: bool = False  # also time the Flax steps without the xla_cpu formulations and options
    measure_memory: bool = True
    device: str = "auto"  # 'auto' (a GPU if the framework sees one), 'cpu' or 'gpu'
    tf32: bool = False  # TF32 for float32 matmuls and convolutions on NVIDIA GPUs, in both frameworks
    torch_channels_last: bool = False  # add torch eager channels_last; torch.compile runs channels_last too


@dataclasses.dataclass
class Contestant:
    """One thing being timed: `step()` runs one synchronized step; `setup()` builds and warms it."""

    name: str
    framework: str
    mode: str
    setup: Callable[[], None]
    step: Callable[[], None]
    compile_seconds: float | None = None
    first_step_seconds: float | None = None
    step_seconds: list[float] = dataclasses.field(default_factory=list)
    peak_memory_mib: float | None = None
    xla_memory_mib: float | None = None
    error: str | None = None
    memory: Callable[[], float | None] | None = None  # the step's peak memory in MiB; None: the heap's growth


# --------------------------------------------------------------------------- contestants


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
        "keepcost")]


def _heap_in_use_reader() -> Callable[[], int] | None:
    """A function returning the bytes malloc has handed out and not yet taken back (glibc only)."""
    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallInfo2

    def in_use() -> int:
        info = mallinfo2()
        return info.uordblks + info.hblkhd  # heap chunks in use + mmap()ed chunks

    return in_use


def peak_heap_increase_mib(fn: Callable[[], Any], interval: float = 0.0005) -> float | None:
    """Run `fn` once; return the peak of malloc'ed bytes in use meanwhile, minus the bytes before.

    A thread samples glibc's `mallinfo2` every `interval` seconds. Both XLA:CPU and PyTorch take
    their buffers from malloc, so this is the step's working memory (activations, gradients,
    workspace) on top of what already sat in memory (parameters, inputs). Unlike the resident set
    size it does not hide memory that malloc keeps for reuse. None where glibc is not the libc.
    """
    in_use = _heap_in_use_reader()
    if in_use is None:
        return None
    baseline, peak, done = in_use(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], in_use())
            time.sleep(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return (max(peak[0], in_use()) - baseline) / 2**20


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def bench_batch(config: BenchConfig, in_channels: int, num_classes: int):
    """(uint8 NHWC images, the same normalized as float32 NCHW, int32 labels)."""
    rng = np.random.default_rng(config.seed)
    shape = (config.batch_size, config.image_size, config.image_size, in_channels)
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    normalized = ((pixels / 255.0 - PIXEL_MEAN) / PIXEL_STD).astype(np.float32).transpose(0, 3, 1, 2)
    labels = rng.integers(0, num_classes, config.batch_size).astype(np.int32)
    return pixels, np.ascontiguousarray(normalized), labels


def check_config(config: BenchConfig) -> None:
    """Raise ValueError for settings nothing can be measured with."""
    if config.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {config.precision!r}")
    for field in ("batch_size", "image_size", "steps"):
        if getattr(config, field) < 1:
            raise ValueError(f"{field} must be a positive integer, got {getattr(config, field)}")


# Each framework's contestants, by module: `contestants(config, images, labels, mode)` and `details()`.
# Flax takes the uint8 NHWC pixels and normalizes in its step; torch the normalized float32 NCHW batch.


def run_benchmark(config: BenchConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every contestant `config` asks for, from both frameworks, timed in turns (see `summarize`)."""
    check_config(config)
    _, num_classes, in_channels, _ = resolve(config.model, None, None, config.options)
    pixels, images, labels = bench_batch(config, in_channels, num_classes)
    modules = {name: frameworks.module("benchmark", name) for name in frameworks.FRAMEWORKS}
    modes = [mode for mode, wanted in (("train", config.train), ("eval", config.eval)) if wanted]
    contestants = [contestant for mode in modes
                   for contestant in (modules["flax"].contestants(config, pixels, labels, mode)
                                      + modules["torch"].contestants(config, images, labels, mode))]
    result = race(config, contestants, progress)
    for module in modules.values():
        result.update(module.details())
    return result


def race(config: BenchConfig, contestants: list[Contestant],
         progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Set up every contestant, time them in turns, and return the summary (see `summarize`)."""
    report = progress or (lambda message: None)
    load_before = os.getloadavg()
    for contestant in contestants:
        report(f"setting up {contestant.name}")
        try:
            contestant.setup()
            for _ in range(config.warmup):
                contestant.step()
        except Exception as error:  # torch.compile may not work here; report, don't abort
            contestant.error = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:200]}"
    live = [c for c in contestants if c.error is None]
    for index in range(config.steps):
        report(f"timed round {index + 1}/{config.steps}")
        for contestant in live:
            seconds, _ = timed(contestant.step)
            contestant.step_seconds.append(seconds)
    if config.measure_memory:
        for contestant in live:
            contestant.peak_memory_mib = (contestant.memory() if contestant.memory is not None
                                          else peak_heap_increase_mib(contestant.step))
    return summarize(config, contestants, load_before, os.getloadavg())


# --------------------------------------------------------------------------- results


ROWS = tuple((f"{key}_{mode}", f"{label} {mode}") for mode in ("train", "eval") for key, label in (
    ("flax", "flax"), ("flax_untuned", "flax untuned"), ("torch", "torch"),
    ("torch_channels_last", "torch channels_last"), ("torch_compile", "torch.compile")))
# Each Flax contestant against each torch one, by key: flax_vs_torch_train, flax_vs_torch_compile_eval, ...
RATIOS = tuple((flax, torch_) for flax in ("flax", "flax_untuned")
               for torch_ in ("torch", "torch_channels_last", "torch_compile"))


def _key(contestant: Contestant) -> str:
    return f"{contestant.framework.replace('.', '_')}_{contestant.mode}"


def _paired_ratio(flax: Contestant | None, torch_: Contestant | None) -> float | None:
    """Median over rounds of torch's step time / Flax's step time in the same round (>1: Flax faster)."""
    if not flax or not torch_ or not flax.step_seconds or not torch_.step_seconds:
        return None
    return float(np.median(np.asarray(torch_.step_seconds) / np.asarray(flax.step_seconds)))


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU's model name and its widest vector units, e.g. 'AMD EPYC (avx512)' (Linux; else the
    architecture)."""
    name, flags = None, set()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == "model name" and name is None:
            name = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
            break
    units = [label for flag, label in (("avx512f", "avx512"), ("amx_bf16", "amx")) if flag in flags]
    units = units or (["avx2"] if "avx2" in flags else [])
    name = name or platform.processor() or platform.machine()
    return f"{name} ({', '.join(units)})" if units else name


def environment() -> dict[str, Any]:
    """Versions and hardware the figures came from."""
    return {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        **{package: _version(package) for package in ("jax", "jaxlib", "flax", "torch")},
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def summarize(config: BenchConfig, contestants: list[Contestant], load_before, load_after) -> dict[str, Any]:
    """One flat dict: the configuration, then per contestant img/s, compile s, memory, error."""
    result: dict[str, Any] = {
        "model": config.model,
        **({"options": config.options} if config.options else {}),
        "batch_size": config.batch_size,
        "image_size": config.image_size,
        "precision": config.precision,
        "steps": config.steps,
    }
    by_key = {_key(c): c for c in contestants}
    for key, _ in ROWS:
        contestant = by_key.get(key)
        seconds = contestant.step_seconds if contestant else []
        result[f"{key}_img_per_s"] = config.batch_size / float(np.median(seconds)) if seconds else None
        if contestant is not None:
            result[f"{key}_compile_s"] = contestant.compile_seconds
            result[f"{key}_peak_mib"] = contestant.peak_memory_mib
            if contestant.xla_memory_mib is not None:
                result[f"{key}_xla_buffers_mib"] = contestant.xla_memory_mib
            if contestant.error:
                result[f"{key}_error"] = contestant.error
    for mode in ("train", "eval"):
        for flax, torch_ in RATIOS:
            ratio = _paired_ratio(by_key.get(f"{flax}_{mode}"), by_key.get(f"{torch_}_{mode}"))
            if ratio is not None or (flax, torch_) == ("flax", "torch"):
                result[f"{flax}_vs_{torch_}_{mode}"] = ratio
    result["load_average_before"] = round(load_before[0], 2)
    result["load_average_after"] = round(load_after[0], 2)
    result["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["environment"] = environment()
    return result


def format_table(result: dict[str, Any]) -> str:
    """The summary as an aligned text table, one row per contestant."""
    header = f"{'contestant':<22}{'img/s':>10}{'compile s':>11}{'step MiB':>10}{'XLA MiB':>9}"
    lines = [
        f"{result['environment']['cpu']}, {result['environment']['cpu_count']} cores"
        + (f"; {result['torch_cuda_device']}" if result.get("torch_cuda_device") else ""),
        f"{result['model']} {result.get('options', '')} batch {result['batch_size']}, "
        f"{result['image_size']}x{result['image_size']}, {result['precision']}, "
        f"{result['steps']} timed steps (load {result['load_average_before']} -> {result['load_average_after']})",
        header, "-" * len(header),
    ]

    def cell(value, width, digits):
        return f"{value:>{width}.{digits}f}" if isinstance(value, (int, float)) else f"{'-':>{width}}"

    for key, label in ROWS:
        if f"{key}_compile_s" not in result and f"{key}_error" not in result:
            continue
        if result.get(f"{key}_error"):
            lines.append(f"{label:<22}failed: {result[f'{key}_error']}")
            continue
        lines.append(f"{label:<22}{cell(result[f'{key}_img_per_s'], 10, 1)}"
                     f"{cell(result.get(f'{key}_compile_s'), 11, 1)}{cell(result.get(f'{key}_peak_mib'), 10, 0)}"
                     f"{cell(result.get(f'{key}_xla_buffers_mib'), 9, 0)}")
    names = {"flax": "Flax", "flax_untuned": "Flax untuned", "torch": "torch eager",
             "torch_channels_last": "torch channels_last", "torch_compile": "torch.compile"}
    for mode in ("train", "eval"):
        for flax, torch_ in RATIOS:
            ratio = result.get(f"{flax}_vs_{torch_}_{mode}")
            if ratio is not None:
                lines.append(f"{names[flax]} / {names[torch_]}, {mode}: {ratio:.2f}x (median of per-round ratios)")
    if "loop_overhead" in result:
        lines.append(f"training loop of scripts/train.py ({result['loop_model']}, batch {result['loop_batch_size']}): "
                     f"{result['loop_step_ms']:.1f} ms/step vs {result['bare_step_ms']:.1f} ms for the bare step, "
                     f"{100 * result['loop_overhead']:+.1f}%")
    for name, cost in result.get("loop_cost", {}).items():
        lines.append(f"training loop around a no-op step, {name} ({cost['batch_size']} x "
                     f"{'x'.join(map(str, cost['image_shape']))}): {cost['loop_host_ms']:.2f} ms/step of host work, "
                     f"{100 * cost['fraction_of_target']:.1f}% of the {cost['target_step_ms']:.1f} ms GPU target step")
    return "\n".join(lines)


def _figure(value, digits: int = 1, suffix: str = "") -> str:
    return f"{value:.{digits}f}{suffix}" if isinstance(value, (int, float)) else "-"


def markdown_rows(results: list[dict[str, Any]], mode: str) -> str:
    """A markdown table of benchmark summaries for `mode` ('train' or 'eval'): img/s per
    contestant, Flax's paired ratio against each torch contestant, and peak step memory."""
    header = (f"| model, batch, input, precision | Flax {mode} | torch eager | torch channels_last | torch.compile "
              f"| Flax / eager | Flax / channels_last | Flax / compile | Flax MiB (XLA) | torch MiB |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for result in results:
        options = "".join(f", {k} {v}" for k, v in result.get("options", {}).items())
        lines.append(
            f"| {result['model']}{options}, {result['batch_size']}, {result['image_size']}x{result['image_size']}, "
            f"{result['precision']} | " + " | ".join(
                [_figure(result.get(f"{key}_{mode}_img_per_s")) for key in ("flax", "torch", "torch_channels_last",
                                                                           "torch_compile")]
                + [_figure(result.get(f"flax_vs_{key}_{mode}"), 2, "x") for key in ("torch", "torch_channels_last",
                                                                                   "torch_compile")]
                + [_figure(result.get(f"flax_{mode}_xla_buffers_mib"), 0),
                   _figure(result.get(f"torch_{mode}_peak_mib"), 0)]) + " |")
    return "\n".join(lines)


def gpu_check_table(folder: str | Path) -> str:
    """The summary `scripts/gpu_check.sh` writes: the GPU, every benchmark found in `folder`
    (train and eval tables), the loop's cost, eval parity, and what ran out of time."""
    folder = Path(folder)
    gpu = (folder / "gpu.txt").read_text().strip() if (folder / "gpu.txt").exists() else "unknown GPU"
    results, loop_cost = [], None
    for path in sorted(folder.glob("*.json")):
        found = json.loads(path.read_text())
        if "loop_cost" in found:
            loop_cost = found["loop_cost"]
        elif "model" in found:
            results.append(found)
    lines = [f"# GPU check: {gpu}", ""]
    if results:
        environment = results[0]["environment"]
        lines += [f"{environment['date']}; jax {environment['jax']}, torch {environment['torch']}; "
                  f"CPU {environment['cpu']}", "", "## Train", "", markdown_rows(results, "train"), "",
                  "## Eval", "", markdown_rows(results, "eval"), ""]
    if loop_cost:
        lines += ["## Training loop around a no-op step", ""]
        lines += [f"- {name}: {cost['loop_host_ms']:.2f} ms of host work per step, "
                  f"{100 * cost['fraction_of_target']:.1f}% of the {cost['target_step_ms']:.1f} ms target"
                  for name, cost in loop_cost.items()] + [""]
    for name, title in (("eval_parity.txt", "Eval parity (pytest)"), ("skipped.txt", "Not finished")):
        if (folder / name).exists():
            lines += [f"## {title}", "", (folder / name).read_text().strip(), ""]
    return "\n".join(lines)
