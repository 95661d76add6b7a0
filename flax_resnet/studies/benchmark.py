"""The Flax contestants of the benchmark, and the cost of the training loop around the step.

The contestants are the Flax jit train and eval steps (the ones `scripts/train.py` compiles) and,
with `untuned`, the same steps as plain lax with XLA's defaults. `torch_ref.studies.benchmark`
is the twin; `flax_resnet.core.timing.run_benchmark` times both sides in turns.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import flax_resnet
from flax_resnet.core.augment import AugmentSpec
from flax_resnet.core.config import TrainConfig
from flax_resnet.core.timing import PIXEL_MEAN, PIXEL_STD, BenchConfig, Contestant, timed
from flax_resnet.models import xla_cpu
from flax_resnet.training.step import data_mesh, jit_eval_step, jit_train_step, put_batch, select_devices, split_model


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
        mesh = data_mesh(select_devices(config.device)[:1])
        augment = AugmentSpec(mean=(PIXEL_MEAN,) * pixels.shape[-1], std=(PIXEL_STD,) * pixels.shape[-1])
        tx = optax.sgd(0.01, momentum=0.9)
        graphdef, eval_graphdef, state = split_model(model, tx)
        batch = {"image": pixels, "label": labels}
        if mode == "train":
            step = jit_train_step(graphdef, tx, mesh, augment=augment, precision=config.precision, cpu_tuned=tuned,
                                  tf32=config.tf32)
            args = [state, put_batch(batch, mesh), jax.random.key(config.seed)]
        else:
            batch["mask"] = np.ones(len(labels), np.float32)
            step = jit_eval_step(eval_graphdef, mesh, augment=augment, precision=config.precision, cpu_tuned=tuned,
                                 tf32=config.tf32)
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
        if mesh.devices.flat[0].platform != "cpu":
            contestant.memory = lambda: None  # the heap is not where the step's buffers live; see XLA MiB
        contestant.first_step_seconds, _ = timed(run_step)

    contestant.setup = setup
    return contestant


def contestants(config: BenchConfig, pixels: np.ndarray, labels: np.ndarray, mode: str) -> list[Contestant]:
    """The Flax contestants for `mode` ('train' or 'eval'): the tuned step, and with
    `config.untuned` the same step as plain lax with XLA's defaults. pixels: uint8 NHWC."""
    select_devices(config.device)  # no such device: ConfigError now, not a failed contestant
    found = [_flax_contestant(config, pixels, labels, mode, tuned=True)]
    if config.untuned:
        found.append(_flax_contestant(config, pixels, labels, mode, tuned=False))
    return found


def details() -> dict[str, Any]:
    """What the summary records about how the Flax steps were compiled."""
    return {"xla_compiler_options": xla_cpu.compiler_options() or {}}


def _loop_against_bare(step, state, batch, rng, data, config: TrainConfig, mesh, steps: int, rounds: int):
    """Median seconds per step of `train_epoch` with `step`, and of `step` alone on a placed batch,
    the two alternating `rounds` times."""
    from flax_resnet.training.loop import train_epoch

    state, metrics = step(state, batch, rng)  # warm-up
    jax.block_until_ready(metrics)
    loop, bare = [], []
    for epoch in range(1, rounds + 1):
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = step(state, batch, rng)
        jax.block_until_ready(metrics)
        bare.append((time.perf_counter() - start) / steps)
        state, _, seconds = train_epoch(step, state, rng, data, config, epoch, mesh, last_good=0,
                                        run_dir=Path(config.workdir or "."))
        loop.append(seconds / steps)
    return float(np.median(loop)), float(np.median(bare))


def measure_training_loop(config: TrainConfig | None = None, rounds: int = 3) -> dict[str, Any]:
    """The per-step time of `scripts/train.py`'s epoch loop (batch gathering, transfer, augmentation
    on device, metric sums, progress bar, divergence checks) against the same compiled step called
    on a batch already on the device. Epoch and bare pass alternate; medians over `rounds`."""
    from flax_resnet.core.data import load_data
    from flax_resnet.core.plan import AUGMENT_STREAM, prepare_run
    from flax_resnet.training.loop import build_model, compile_ahead
    from flax_resnet.training.optim import make_optimizer

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
    loop_step, bare_step = _loop_against_bare(train_step, state, batch, rng, data, config, mesh, steps, rounds)
    return {"loop_model": config.model, "loop_dataset": data.name, "loop_batch_size": config.batch_size,
            "loop_steps_per_epoch": steps, "loop_step_ms": 1e3 * loop_step, "bare_step_ms": 1e3 * bare_step,
            "loop_overhead": loop_step / bare_step - 1}


# The GPU step times the loop must keep up with: resnet50 at 224 in bf16, batch 256 at 3,000 img/s,
# and resnet18 with the CIFAR stem, batch 512 at 30,000 img/s. `steps`: batches per timed epoch
# (the images are held in memory: 590 MiB and 150 MiB).
LOOP_TARGETS = {
    "resnet50_224_b256": {"image_shape": (224, 224, 3), "batch_size": 256, "target_step_ms": 1e3 * 256 / 3000,
                          "steps": 16},
    "resnet18_cifar_b512": {"image_shape": (32, 32, 3), "batch_size": 512, "target_step_ms": 1e3 * 512 / 30000,
                            "steps": 100},
}


def _noop_step(state, batch, rng):
    """A train step that does nothing but read one pixel of its batch (so it waits for the transfer)."""
    pixel = batch["image"].reshape(-1)[0].astype(jnp.float32)
    count = jnp.asarray(batch["label"].shape[0], jnp.float32)
    return state, {"loss": pixel * 0, "correct": pixel * 0, "count": count}


def measure_loop_cost(image_shape=(32, 32, 3), batch_size: int = 512, steps: int = 40, rounds: int = 3,
                      progress: bool = True, device: str = "auto") -> dict[str, Any]:
    """What `train_epoch` (the loop of `scripts/train.py`) costs per step outside the step itself.

    The loop runs a jitted step that does nothing over an in-memory dataset of random uint8 images
    (`steps` batches per epoch: batch gathering, transfer, prefetching, metric sums, progress bar);
    the bare step is the same no-op called on a batch already on the device. Epoch and bare pass
    alternate; medians over `rounds`. `loop_host_ms` is the difference per step.
    """
    from flax_resnet.core.data import Dataset

    rng_np = np.random.default_rng(0)
    images = rng_np.integers(0, 256, (steps * batch_size, *image_shape), dtype=np.uint8)
    labels = rng_np.integers(0, 10, steps * batch_size).astype(np.int32)
    data = Dataset("random", "memory", images, labels, images[:batch_size], labels[:batch_size], 10)
    config = TrainConfig(batch_size=batch_size, epochs=rounds, progress=progress)
    mesh = data_mesh(select_devices(device))
    step = jax.jit(_noop_step, donate_argnums=0)
    rng, state = jax.random.key(0), jnp.zeros(())
    batch = put_batch({"image": images[:batch_size], "label": labels[:batch_size]}, mesh)
    loop_step, bare_step = _loop_against_bare(step, state, batch, rng, data, config, mesh, steps, rounds)
    return {"image_shape": list(image_shape), "batch_size": batch_size, "steps_per_epoch": steps,
            "loop_step_ms": 1e3 * loop_step, "bare_step_ms": 1e3 * bare_step,
            "loop_host_ms": 1e3 * (loop_step - bare_step)}


def measure_loop_costs(rounds: int = 3, progress: bool = True) -> dict[str, Any]:
    """`measure_loop_cost` at the shapes of `LOOP_TARGETS`, each as a fraction of its target step time."""
    found = {}
    for name, target in LOOP_TARGETS.items():
        cost = measure_loop_cost(target["image_shape"], target["batch_size"], steps=target["steps"], rounds=rounds,
                                 progress=progress)
        cost["target_step_ms"] = target["target_step_ms"]
        cost["fraction_of_target"] = cost["loop_host_ms"] / target["target_step_ms"]
        found[name] = cost
    return {"loop_cost": found}
