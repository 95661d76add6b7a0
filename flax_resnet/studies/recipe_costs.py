"""What today's recipe pieces cost per train step: batch mixing, random erasing, stochastic depth
and the moving average of the weights, each against the plain step of the same net and batch.

`measure_recipe_costs` compiles one jitted train step per piece (the trainer's own `jit_train_step`)
and times them in turns on one batch already on the device; the moving average is the plain step
followed by the trainer's jitted update of the average, once updating after every step (its
worst case) and once every 32 steps (torchvision's --model-ema-steps).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx

import flax_resnet
from flax_resnet.core.augment import MixSpec, default_augment
from flax_resnet.training.ema import init_ema, update_after_step
from flax_resnet.training.step import data_mesh, jit_train_step, put_batch, split_model

PIECES = ("plain", "mixup/cutmix", "random erase", "drop path", "EMA every step", "EMA every 32 steps")


def _step_and_state(model_name: str, spec, mesh, num_classes: int, **options):
    model = flax_resnet.create_model(model_name, num_classes=num_classes, rngs=nnx.Rngs(0), **options)
    tx = optax.sgd(0.1, momentum=0.9)
    graphdef, _, state = split_model(model, tx)
    return jit_train_step(graphdef, tx, mesh, augment=spec), state


def measure_recipe_costs(model: str = "resnet20", batch_size: int = 128, image_size: int = 32, steps: int = 8,
                         rounds: int = 3, num_classes: int = 10, drop_path_rate: float = 0.1,
                         progress=lambda message: None) -> dict[str, Any]:
    """Median ms per train step of each of `PIECES` (over `rounds` turns of `steps` steps) and its
    cost as a fraction of the plain step's."""
    mesh = data_mesh()
    rng = np.random.default_rng(0)
    batch = put_batch({"image": rng.integers(0, 256, (batch_size, image_size, image_size, 3), dtype=np.uint8),
                       "label": rng.integers(0, num_classes, batch_size).astype(np.int32)}, mesh)
    key = jax.random.key(0)
    plain = default_augment((image_size, image_size, 3), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    builds = {
        "plain": lambda: _step_and_state(model, plain, mesh, num_classes),
        "mixup/cutmix": lambda: _step_and_state(
            model, dataclasses.replace(plain, mixing=MixSpec("torchvision", 0.2, 1.0, num_classes)), mesh,
            num_classes),
        "random erase": lambda: _step_and_state(model, dataclasses.replace(plain, random_erase=0.25), mesh,
                                                num_classes),
        "drop path": lambda: _step_and_state(model, plain, mesh, num_classes, drop_path_rate=drop_path_rate),
    }
    runners = {}
    for name, build in builds.items():
        progress(f"compiling: {name}")
        step, state = build()
        runners[name] = _plain_runner(step, state, batch, key)
    for name, every in (("EMA every step", 1), ("EMA every 32 steps", 32)):
        progress(f"compiling: {name}")
        step, state = builds["plain"]()  # a state of its own: each step donates the one it takes
        runners[name] = _ema_runner(step, state, batch, key, every=every, steps_per_epoch=32 * steps)

    times: dict[str, list[float]] = {name: [] for name in runners}
    for round_ in range(rounds):
        for name, run in runners.items():
            progress(f"round {round_ + 1}/{rounds}: {name}")
            times[name].append(run(steps))
    medians = {name: float(np.median(values)) for name, values in times.items()}
    best = {name: float(min(values)) for name, values in times.items()}
    return {"model": model, "batch_size": batch_size, "image_size": image_size, "steps": steps, "rounds": rounds,
            "drop_path_rate": drop_path_rate, "step_ms": {name: 1e3 * value for name, value in medians.items()},
            "cost": {name: medians[name] / medians["plain"] - 1 for name in medians if name != "plain"},
            "best_step_ms": {name: 1e3 * value for name, value in best.items()},
            "best_cost": {name: best[name] / best["plain"] - 1 for name in best if name != "plain"},
            "rounds_ms": {name: [1e3 * t for t in values] for name, values in times.items()},
            "load_average": os.getloadavg()[0], "devices": str(jax.devices())}


def _plain_runner(step, state, batch, key):
    holder = {"state": state}
    holder["state"], metrics = step(holder["state"], batch, key)  # compile and warm up
    jax.block_until_ready(metrics)

    def run(steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            holder["state"], metrics = step(holder["state"], batch, key)
        jax.block_until_ready(metrics)
        return (time.perf_counter() - start) / steps

    return run


def _ema_runner(step, state, batch, key, *, every: int, steps_per_epoch: int):
    update = jax.jit(functools.partial(update_after_step, decay=0.999, steps_per_epoch=steps_per_epoch, every=every,
                                       warmup_epochs=0.0), donate_argnums=0)
    holder = {"state": state, "ema": init_ema(state.params, state.batch_stats)}

    def one():
        holder["state"], metrics = step(holder["state"], batch, key)
        new = holder["state"]
        holder["ema"] = update(holder["ema"], new.params, new.batch_stats, new.step - 1)
        return metrics

    jax.block_until_ready((one(), holder["ema"]))

    def run(steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            metrics = one()
        jax.block_until_ready((metrics, holder["ema"]))
        return (time.perf_counter() - start) / steps

    return run


def format_costs(result: dict[str, Any]) -> str:
    """The measurement as a Markdown table."""
    lines = ["| piece | ms per step, median | cost over the plain step | ms per step, best | cost, best |",
             "|---|---|---|---|---|"]
    for name, ms in result["step_ms"].items():
        cost = "" if name == "plain" else f"{100 * result['cost'][name]:+.1f} %"
        best_cost = "" if name == "plain" else f"{100 * result['best_cost'][name]:+.1f} %"
        lines.append(f"| {name} | {ms:.1f} | {cost} | {result['best_step_ms'][name]:.1f} | {best_cost} |")
    return "\n".join(lines)
