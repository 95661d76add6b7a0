"""The Flax contestants of the benchmark, and the cost of the training loop around the step.

The contestants are the Flax jit train and eval steps (the ones `scripts/train.py` compiles) and,
with `untuned`, the same steps as plain lax with XLA's defaults. `torch_ref.studies.benchmark`
is the twin; `flax_resnet.studies.timing.run_benchmark` times both sides in turns.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx

import flax_resnet
from flax_resnet.models import xla_cpu
from flax_resnet.studies.timing import PIXEL_MEAN, PIXEL_STD, BenchConfig, Contestant, timed
from flax_resnet.training.augment import AugmentSpec
from flax_resnet.training.config import TrainConfig
from flax_resnet.training.step import data_mesh, jit_eval_step, jit_train_step, put_batch, split_model


def _xla_memory_mib(compiled) -> float | None:
    """Buffers the compiled executable needs at once: arguments + outputs + temporaries - aliased."""
    try:
        stats = compiled.memory_analysis()
        total = (stats.argument_size_in_bytes + stats.output_size_in_bytes
                 + stats.temp_size_in_bytes - stats.alias_size_in_bytes)
        return total / 2**20
    except Exception:  # not every backend reports it
        return None


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
            contestant.compile_seconds, compiled = timed(lambda: step.lower(*args).compile())
        contestant.xla_memory_mib = _xla_memory_mib(compiled)

        def run_step():
            if mode == "train":
                args[0], metrics = compiled(*args)
            else:
                metrics = compiled(*args)
            jax.block_until_ready(metrics)

        contestant.step = run_step
        contestant.first_step_seconds, _ = timed(run_step)

    contestant.setup = setup
    return contestant


def contestants(config: BenchConfig, pixels: np.ndarray, labels: np.ndarray, mode: str) -> list[Contestant]:
    """The Flax contestants for `mode` ('train' or 'eval'): the tuned step, and with
    `config.untuned` the same step as plain lax with XLA's defaults. pixels: uint8 NHWC."""
    found = [_flax_contestant(config, pixels, labels, mode, tuned=True)]
    if config.untuned:
        found.append(_flax_contestant(config, pixels, labels, mode, tuned=False))
    return found


def details() -> dict[str, Any]:
    """What the summary records about how the Flax steps were compiled."""
    return {"xla_compiler_options": xla_cpu.compiler_options() or {}}


def measure_training_loop(config: TrainConfig | None = None, rounds: int = 3) -> dict[str, Any]:
    """The per-step time of `scripts/train.py`'s epoch loop (batch gathering, transfer, augmentation
    on device, metric sums, progress bar, divergence checks) against the same compiled step called
    on a batch already on the device. Epoch and bare pass alternate; medians over `rounds`."""
    from flax_resnet.training.data import load_data
    from flax_resnet.training.optim import make_optimizer
    from flax_resnet.training.loop import build_model, compile_ahead, train_epoch
    from flax_resnet.training.setup import AUGMENT_STREAM, prepare_run

    config = config or TrainConfig()
    data = load_data(config)
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
    with data.train_batches(0, seed=config.seed, batch_size=config.batch_size) as batches:
        steps, batch = len(batches), put_batch(next(batches), mesh)
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
