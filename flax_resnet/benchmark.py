"""Throughput of one model in both frameworks, measured side by side in one process.

Each contestant (the Flax jit train step, torch_ref eager, torch_ref under `torch.compile`, and
the same three for inference) is warmed up, then the contestants take turns step by step, so a
load change on a shared machine hits them alike. Throughput is the median over the timed steps.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import platform
import resource
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax
import jax
import numpy as np
import optax
import torch
from flax import nnx

import flax_resnet
import torch_ref
from flax_resnet import xla_cpu
from flax_resnet.augment import AugmentSpec
from flax_resnet.config import TrainConfig
from flax_resnet.registry import resolve
from flax_resnet.train_step import data_mesh, jit_eval_step, jit_train_step, put_batch, split_model

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


# --------------------------------------------------------------------------- torch steps


def make_torch_train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                          precision: str = "fp32", compile: bool = False):
    """`step(images, labels) -> loss`: forward, cross-entropy, backward, optimizer step.

    bf16 runs under `torch.autocast` (parameters stay float32). With `compile`, forward and
    backward go through `torch.compile`; the optimizer step stays eager, as most scripts have it.
    """
    model.train()
    forward = torch.compile(model) if compile else model

    def step(images, labels):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = torch.nn.functional.cross_entropy(forward(images).float(), labels)
        loss.backward()
        optimizer.step()
        return loss

    return step


def make_torch_eval_step(model: torch.nn.Module, precision: str = "fp32", compile: bool = False):
    """`step(images) -> logits` in eval mode under `torch.inference_mode`."""
    model.eval()
    forward = torch.compile(model) if compile else model

    def step(images):
        with torch.inference_mode(), torch.autocast(
                "cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            return forward(images)

    return step


# --------------------------------------------------------------------------- measuring


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


def _xla_memory_mib(compiled) -> float | None:
    """Buffers the compiled executable needs at once: arguments + outputs + temporaries - aliased."""
    try:
        stats = compiled.memory_analysis()
        total = (stats.argument_size_in_bytes + stats.output_size_in_bytes
                 + stats.temp_size_in_bytes - stats.alias_size_in_bytes)
        return total / 2**20
    except Exception:  # not every backend reports it
        return None


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


# --------------------------------------------------------------------------- contestants


def _batch(config: BenchConfig, in_channels: int, num_classes: int):
    """(uint8 NHWC images, the same normalized as float32 NCHW, int32 labels)."""
    rng = np.random.default_rng(config.seed)
    shape = (config.batch_size, config.image_size, config.image_size, in_channels)
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    normalized = ((pixels / 255.0 - PIXEL_MEAN) / PIXEL_STD).astype(np.float32).transpose(0, 3, 1, 2)
    labels = rng.integers(0, num_classes, config.batch_size).astype(np.int32)
    return pixels, np.ascontiguousarray(normalized), labels


def _flax_contestant(config: BenchConfig, pixels, labels, mode: str, tuned: bool) -> Contestant:
    """The train or eval step `scripts/train.py` compiles, on one device; untuned: XLA as it comes."""
    framework = "flax" if tuned else "flax_untuned"
    contestant = Contestant(f"{framework.replace('_', ' ')} {mode}", framework, mode, setup=lambda: None,
                            step=lambda: None)

    def setup():
        model = flax_resnet.create_model(config.model, rngs=nnx.Rngs(config.seed), **config.options)
        mesh = data_mesh(jax.devices()[:1])
        augment = AugmentSpec(mean=(PIXEL_MEAN,) * pixels.shape[-1], std=(PIXEL_STD,) * pixels.shape[-1])
        tx = optax.sgd(0.01, momentum=0.9)
        graphdef, eval_graphdef, state = split_model(model, tx)
        batch = {"image": pixels, "label": labels}
        if mode == "train":
            step = jit_train_step(graphdef, tx, mesh, augment=augment, precision=config.precision, cpu_tuned=tuned)
            args = [state, put_batch(batch, mesh), jax.random.key(config.seed)]
        else:
            batch["mask"] = np.ones(len(labels), np.float32)
            step = jit_eval_step(eval_graphdef, mesh, augment=augment, precision=config.precision, cpu_tuned=tuned)
            args = [state, put_batch(batch, mesh)]
        with contextlib.nullcontext() if tuned else xla_cpu.disabled():
            contestant.compile_seconds, compiled = _timed(lambda: step.lower(*args).compile())
        contestant.xla_memory_mib = _xla_memory_mib(compiled)

        def run_step():
            if mode == "train":
                args[0], metrics = compiled(*args)
            else:
                metrics = compiled(*args)
            jax.block_until_ready(metrics)

        contestant.step = run_step
        contestant.first_step_seconds, _ = _timed(run_step)

    contestant.setup = setup
    return contestant


def _torch_contestant(config: BenchConfig, images, labels, mode: str, compile: bool) -> Contestant:
    """torch_ref's model, eager or under `torch.compile`, on the normalized float32 NCHW batch."""
    name = f"torch{'.compile' if compile else ''} {mode}"
    contestant = Contestant(name, "torch.compile" if compile else "torch", mode, setup=lambda: None,
                            step=lambda: None)
    images_t, labels_t = torch.from_numpy(images), torch.from_numpy(labels).long()

    def setup():
        torch.manual_seed(config.seed)
        model = torch_ref.create_model(config.model, **config.options)
        if mode == "train":
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            step = make_torch_train_step(model, optimizer, config.precision, compile)
            contestant.step = lambda: step(images_t, labels_t)
        else:
            step = make_torch_eval_step(model, config.precision, compile)
            contestant.step = lambda: step(images_t)
        # torch.compile compiles on the first call (forward and backward graphs).
        contestant.first_step_seconds, _ = _timed(contestant.step)
        if compile:
            contestant.compile_seconds = contestant.first_step_seconds

    contestant.setup = setup
    return contestant


def build_contestants(config: BenchConfig) -> list[Contestant]:
    """The contestants `config` asks for, in the order they take turns."""
    _, num_classes, in_channels, _ = resolve(config.model, None, None, config.options)
    pixels, images, labels = _batch(config, in_channels, num_classes)
    modes = [m for m, wanted in (("train", config.train), ("eval", config.eval)) if wanted]
    contestants = []
    for mode in modes:
        contestants.append(_flax_contestant(config, pixels, labels, mode, tuned=True))
        if config.untuned:
            contestants.append(_flax_contestant(config, pixels, labels, mode, tuned=False))
        contestants.append(_torch_contestant(config, images, labels, mode, compile=False))
        if config.torch_compile:
            contestants.append(_torch_contestant(config, images, labels, mode, compile=True))
    return contestants


def run_benchmark(config: BenchConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Set up every contestant, time them in turns, and return the summary (see `summarize`)."""
    if config.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {config.precision!r}")
    for field in ("batch_size", "image_size", "steps"):
        if getattr(config, field) < 1:
            raise ValueError(f"{field} must be a positive integer, got {getattr(config, field)}")
    report = progress or (lambda message: None)
    load_before = os.getloadavg()
    contestants = build_contestants(config)
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
            seconds, _ = _timed(contestant.step)
            contestant.step_seconds.append(seconds)
    if config.measure_memory:
        for contestant in live:
            contestant.peak_memory_mib = peak_heap_increase_mib(contestant.step)
    return summarize(config, contestants, load_before, os.getloadavg())


# --------------------------------------------------------------------------- results


ROWS = (("flax_train", "flax train"), ("flax_untuned_train", "flax untuned train"),
        ("torch_train", "torch train"), ("torch_compile_train", "torch.compile train"),
        ("flax_eval", "flax eval"), ("flax_untuned_eval", "flax untuned eval"),
        ("torch_eval", "torch eval"), ("torch_compile_eval", "torch.compile eval"))


def _key(contestant: Contestant) -> str:
    return f"{contestant.framework.replace('.', '_')}_{contestant.mode}"


def _paired_ratio(flax: Contestant | None, torch_: Contestant | None) -> float | None:
    """Median over rounds of torch's step time / Flax's step time in the same round (>1: Flax faster)."""
    if not flax or not torch_ or not flax.step_seconds or not torch_.step_seconds:
        return None
    return float(np.median(np.asarray(torch_.step_seconds) / np.asarray(flax.step_seconds)))


def environment() -> dict[str, Any]:
    """Versions and hardware the figures came from."""
    return {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "jax_backend": jax.default_backend(),
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
        result[f"flax_vs_torch_{mode}"] = _paired_ratio(by_key.get(f"flax_{mode}"), by_key.get(f"torch_{mode}"))
        if config.untuned:
            result[f"flax_untuned_vs_torch_{mode}"] = _paired_ratio(by_key.get(f"flax_untuned_{mode}"),
                                                                    by_key.get(f"torch_{mode}"))
    result["xla_compiler_options"] = xla_cpu.compiler_options() or {}
    result["load_average_before"] = round(load_before[0], 2)
    result["load_average_after"] = round(load_after[0], 2)
    result["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["environment"] = environment()
    return result


def format_table(result: dict[str, Any]) -> str:
    """The summary as an aligned text table, one row per contestant."""
    header = f"{'contestant':<22}{'img/s':>10}{'compile s':>11}{'step MiB':>10}{'XLA MiB':>9}"
    lines = [
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
    for mode in ("train", "eval"):
        for flax_key, label in (("flax", "Flax"), ("flax_untuned", "Flax untuned")):
            ratio = result.get(f"{flax_key}_vs_torch_{mode}")
            if ratio is not None:
                lines.append(f"{label} / torch eager, {mode}: {ratio:.2f}x (median of per-round ratios)")
    if "loop_overhead" in result:
        lines.append(f"training loop of scripts/train.py ({result['loop_model']}, batch {result['loop_batch_size']}): "
                     f"{result['loop_step_ms']:.1f} ms/step vs {result['bare_step_ms']:.1f} ms for the bare step, "
                     f"{100 * result['loop_overhead']:+.1f}%")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the training loop


def measure_training_loop(config: TrainConfig | None = None, rounds: int = 3) -> dict[str, Any]:
    """The per-step time of `scripts/train.py`'s epoch loop (batch gathering, transfer, augmentation
    on device, metric sums, progress bar, divergence checks) against the same compiled step called
    on a batch already on the device. Epoch and bare pass alternate; medians over `rounds`."""
    from flax_resnet.data import load_dataset
    from flax_resnet.optim import make_optimizer
    from flax_resnet.trainer import AUGMENT_STREAM, build_model, compile_ahead, epoch_order, prepare_run, train_epoch

    config = config or TrainConfig()
    data = load_dataset(config.dataset, config.data_dir)
    mesh = data_mesh()
    setup = prepare_run(config, data, mesh.size)
    model = build_model(config, setup, data)
    tx, _ = make_optimizer(config, setup.plan)
    graphdef, eval_graphdef, state = split_model(model, tx)
    rng = jax.random.fold_in(jax.random.key(config.seed), AUGMENT_STREAM)
    train_step = jit_train_step(graphdef, tx, mesh, augment=setup.augment, precision=config.precision,
                                label_smoothing=config.label_smoothing)
    eval_step = jit_eval_step(eval_graphdef, mesh, augment=setup.augment, precision=config.precision)
    train_step, _ = compile_ahead(train_step, eval_step, state, rng, data, config, setup, mesh)
    indices = epoch_order(config.seed, 0, len(data.train_labels), config.batch_size)
    batch = put_batch({"image": data.train_images[indices[0]], "label": data.train_labels[indices[0]]}, mesh)
    steps = len(indices)
    state, metrics = train_step(state, batch, rng)  # warm-up
    jax.block_until_ready(metrics)
    loop, bare = [], []
    for epoch in range(1, rounds + 1):
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = train_step(state, batch, rng)
        jax.block_until_ready(metrics)
        bare.append((time.perf_counter() - start) / steps)
        state, _, seconds = train_epoch(train_step, state, rng, data, config, epoch, mesh, last_good=0,
                                        run_dir=Path(config.workdir or "."))
        loop.append(seconds / steps)
    loop_step, bare_step = float(np.median(loop)), float(np.median(bare))
    return {"loop_model": config.model, "loop_dataset": data.name, "loop_batch_size": config.batch_size,
            "loop_steps_per_epoch": steps, "loop_step_ms": 1e3 * loop_step, "bare_step_ms": 1e3 * bare_step,
            "loop_overhead": loop_step / bare_step - 1}
