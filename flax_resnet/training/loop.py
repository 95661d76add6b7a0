"""The Flax trainer: the JAX half of a run whose story is `flax_resnet.core.run.skeleton.run`.

`Backend` builds the model, the optimizer and the jitted steps, runs an epoch of train steps and
the evaluation, and saves and exports the state; `train(config)` runs a TrainConfig with it.
`torch_ref.training.loop` is its twin; `flax_resnet.training.train` runs whichever the config names.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flax_resnet.core.config import ConfigError, TrainConfig
from flax_resnet.core.data import ProcessShard, TrainingData
from flax_resnet.core.ema import run_decay
from flax_resnet.core.initial_weights import initial_state_dict
from flax_resnet.core.plan import AUGMENT_STREAM, REFRESH_SECONDS, RunSetup, TrainResult, resolve_precision
from flax_resnet.core.run.interrupts import StopRequests, TrainingInterrupted
from flax_resnet.core.run.progress import Progress, UnreadableCheckpoints
from flax_resnet.core.run.skeleton import run
from flax_resnet.core.run.workdir import TrainingDiverged, check_finite, live_metrics, progress_bar
from flax_resnet.models import model_skeleton
from flax_resnet.porting.state_dict import load_torch_state_dict, to_torch_state_dict, torch_shapes
from flax_resnet.training import processes
from flax_resnet.training.ema import init_ema, update_after_step
from flax_resnet.training.optim import make_optimizer
from flax_resnet.training.peers import watch_peers
from flax_resnet.training.run_checkpoints import RunCheckpoints
from flax_resnet.training.step import (
    TrainState,
    batch_sharded,
    data_mesh,
    frozen_bn_graphdef,
    jit_eval_step,
    jit_train_step,
    merge_model,
    prefetch,
    put_batch,
    replicated,
    select_devices,
    split_model,
)

__all__ = ["TrainResult", "TrainingDiverged", "TrainingInterrupted", "UnreadableCheckpoints", "train"]

# With several processes, how often (in train steps) they agree on whether a signal asked them to
# stop: a collective, so not after every step.
STOP_CHECK_STEPS = 10


def build_model(config: TrainConfig, setup: RunSetup, data: TrainingData, initial=None) -> nnx.Module:
    """The model with `initial` weights (a state_dict), by default `initial_weights` drawn from
    `config.seed`; refuses an input size it cannot take."""
    model = model_skeleton(config.model, **setup.model_kwargs)
    if initial is None:
        initial = initial_state_dict(config.model, setup.model_kwargs, torch_shapes(model), config.seed)
    load_torch_state_dict(model, initial)
    size = setup.augment.image_size or data.image_shape[0]
    probe = jax.ShapeDtypeStruct((1, size, size, data.image_shape[2]), jnp.float32)
    try:
        model.eval()
        jax.eval_shape(lambda x: model(x), probe)
    except Exception as error:  # noqa: BLE001 - any failure here means a shape the model cannot take
        reason = str(error).splitlines()[0]
        raise ConfigError(f"{config.model} cannot take {size}x{size}x{data.image_shape[2]} images "
                          f"({reason}); try --image-size or another --model") from None
    return model


def _add(totals, metrics):
    return metrics if totals is None else jax.tree.map(jnp.add, totals, metrics)


def _host(totals) -> dict[str, float]:
    return {key: float(value) for key, value in jax.device_get(totals).items()}


class Backend:
    """The Flax half of a training run; `flax_resnet.core.run.skeleton.run` is the rest."""

    framework = "flax"

    def start(self, config: TrainConfig) -> TrainConfig:
        processes.initialize(config)
        self.mesh = data_mesh(select_devices(config.device))
        self.num_devices = self.mesh.size
        self.is_main = processes.is_main()
        self.shard = ProcessShard(jax.process_index(), jax.process_count())
        return resolve_precision(config, self.mesh.devices.flat[0].platform)

    def describe(self) -> str:
        return (f"{self.mesh.size} {self.mesh.devices.flat[0].platform} device(s)"
                + (f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""))

    def state_shapes(self, config: TrainConfig, setup: RunSetup) -> dict[str, tuple[int, ...]]:
        return torch_shapes(model_skeleton(config.model, **setup.model_kwargs))

    def build_model(self, config: TrainConfig, setup: RunSetup, data: TrainingData, initial) -> None:
        self.model = build_model(config, setup, data, initial)

    def build_optimizer(self, config: TrainConfig, setup: RunSetup):
        self.config, self.setup = config, setup
        tx, schedule = make_optimizer(config, setup.plan, self.model)
        graphdef, self.eval_graphdef, state = split_model(self.model, tx)
        # Frozen BatchNorm: the train step's BatchNorms run in eval mode (running statistics, no updates).
        if config.freeze_bn or config.freeze_backbone:
            graphdef = frozen_bn_graphdef(self.model)
        self.train_step = jit_train_step(graphdef, tx, self.mesh,
                                         augment=setup.augment, precision=config.precision,
                                         label_smoothing=config.label_smoothing, loss=config.loss,
                                         bce_target_threshold=config.bce_target_threshold, tf32=config.tf32)
        self.eval_step = jit_eval_step(self.eval_graphdef, self.mesh, augment=setup.augment,
                                       precision=config.precision, tf32=config.tf32)
        self.state = jax.device_put(jax.device_get(state), replicated(self.mesh))  # the same on every process
        self.rng = jax.jit(lambda: jax.random.fold_in(jax.random.key(config.seed), AUGMENT_STREAM),
                           out_shardings=replicated(self.mesh))()  # made on every device, as every process can
        self.ema = self.update_ema = None
        if config.model_ema:
            self.ema = jax.device_put(jax.device_get(init_ema(self.state.params, self.state.batch_stats)),
                                      replicated(self.mesh))
            self.update_ema = jax.jit(functools.partial(
                update_after_step, decay=run_decay(config), steps_per_epoch=setup.plan.steps_per_epoch,
                every=config.model_ema_steps, warmup_epochs=config.warmup_epochs), donate_argnums=0)
        return schedule

    @contextlib.contextmanager
    def checkpoints(self, workdir, keep: int, *, steps_per_epoch: int, warn) -> Iterator[RunCheckpoints]:
        with (watch_peers(workdir),  # a lost process ends the others at once, saying how to resume
              RunCheckpoints(workdir, keep, steps_per_epoch=steps_per_epoch, warn=warn) as checkpoints):
            yield checkpoints

    def stop_requests(self) -> StopRequests:
        return StopRequests(agree=processes.agree_on_signal if jax.process_count() > 1 else None,
                            every=STOP_CHECK_STEPS)

    def restore(self, checkpoints: RunCheckpoints) -> Progress:
        self.state, progress, self.ema = checkpoints.restore(self.state, self.ema)
        return progress

    def compile(self, data: TrainingData) -> float:
        started = time.perf_counter()
        self.train_step, self.eval_step = compile_ahead(self.train_step, self.eval_step, self.state, self.rng, data,
                                                        self.config, self.setup, self.mesh)
        return time.perf_counter() - started

    def train_epoch(self, data: TrainingData, epoch: int, resumed: Progress | None, *, last_good, run_dir,
                    on_step) -> tuple[dict[str, float], float]:
        def after_step(state, steps_done, totals, metrics, position):
            self.state = state
            if self.ema is not None:  # the step just done is number state.step - 1
                self.ema = self.update_ema(self.ema, state.params, state.batch_stats, state.step - 1)
            on_step(steps_done, totals, metrics, position)

        self.state, totals, seconds = train_epoch(
            self.train_step, self.state, self.rng, data, self.config, epoch, self.mesh, last_good=last_good,
            run_dir=run_dir, start=resumed.steps_done if resumed else 0,
            totals=jax.device_put(_device_totals(resumed.totals), replicated(self.mesh)) if resumed else None,
            on_step=after_step)
        return totals, seconds

    def evaluate(self, data: TrainingData) -> dict[str, float]:
        return evaluate(self.eval_step, self.state, data, self.setup.eval_batch_size, self.mesh)

    def evaluate_ema(self, data: TrainingData) -> dict[str, float]:
        return evaluate(self.eval_step, self._ema_as_state(), data, self.setup.eval_batch_size, self.mesh)

    def _ema_as_state(self) -> TrainState:
        # The train state's structure, which the compiled eval step takes, holding the average.
        return self.state._replace(params=self.ema.params, batch_stats=self.ema.batch_stats)

    @property
    def step(self) -> int:
        return int(self.state.step)

    def save(self, checkpoints: RunCheckpoints, progress: Progress, **kwargs) -> None:
        checkpoints.save(self.state, progress, ema=self.ema, **kwargs)

    def finish(self):
        model = merge_model(self.eval_graphdef, _local(self.state))
        return model, to_torch_state_dict(model)

    def ema_state_dict(self) -> dict[str, np.ndarray]:
        return to_torch_state_dict(merge_model(self.eval_graphdef, _local(self._ema_as_state())))


def _local(tree):
    """This process's copy of a replicated tree."""
    return jax.tree.map(lambda a: jnp.asarray(a.addressable_data(0)), tree)



def train(config: TrainConfig, *, on_epoch_end: Callable[[dict], None] | None = None) -> TrainResult:
    """Train `config` (framework 'flax') in JAX; see `flax_resnet.core.run.skeleton.run`."""
    return run(config, Backend(), on_epoch_end=on_epoch_end)


def _device_totals(totals: dict[str, float]) -> dict[str, np.ndarray]:
    # float32, as the step's metric sums: the resumed epoch adds up exactly as the uninterrupted one
    return {key: np.float32(value) for key, value in totals.items()}


def compile_ahead(train_step, eval_step, state, rng, data: TrainingData, config: TrainConfig, setup: RunSetup,
                  mesh):
    """Compile both steps before the loop, so the first epoch's img/s is not the compiler's."""
    def batch(size, with_mask):
        shape = data.eval_image_shape if with_mask else data.image_shape
        spec = {"image": jax.ShapeDtypeStruct((size, *shape), np.uint8, sharding=batch_sharded(mesh)),
                "label": jax.ShapeDtypeStruct((size,), np.int32, sharding=batch_sharded(mesh))}
        if with_mask:
            spec["mask"] = jax.ShapeDtypeStruct((size,), np.float32, sharding=batch_sharded(mesh))
        return spec

    return (train_step.lower(state, batch(config.batch_size, False), rng).compile(),
            eval_step.lower(state, batch(setup.eval_batch_size, True)).compile())


def train_epoch(train_step, state, rng, data: TrainingData, config: TrainConfig, epoch: int, mesh, *,
                last_good: str | None, run_dir, start: int = 0, totals=None, on_step=None):
    """One pass over the shuffled training set, from batch `start` on (`totals`: the sums of the
    batches before it). `on_step(state, steps_done, totals, metrics, position)` runs after every
    step; `position` is the data's resumable position (`EpochBatches.state_at`).
    Returns (state, metric sums, seconds); the sums include `skipped_images`, the undecodable
    images replaced (over all processes, in the batches from `start` on)."""
    batches = data.train_batches(epoch, seed=config.seed, batch_size=config.batch_size, start_step=start)
    steps = data.steps_per_epoch(config.batch_size)
    # This process's part of each global batch, placed one step ahead of its use.
    on_device = prefetch(lambda batch: put_batch(batch, mesh), batches)
    start_time, last_refresh = time.perf_counter(), 0.0
    sums = _host(totals) if totals is not None else None
    with batches, progress_bar(steps, epoch, config.epochs, config.progress) as bar:
        bar.update(start)
        for index, batch in enumerate(on_device, start + 1):
            state, metrics = train_step(state, batch, rng)
            previous, totals = totals, _add(totals, metrics)
            now = time.perf_counter()
            if index == steps:
                sums = _host(totals)
                check_finite(sums["loss"], epoch=epoch, step=index, last_good=last_good, workdir=run_dir)
            elif now - last_refresh >= REFRESH_SECONDS and previous is not None:
                # Waits for the sums up to the step before: the step just dispatched keeps the device busy.
                last_refresh, sums = now, _host(previous)
                check_finite(sums["loss"], epoch=epoch, step=index - 1, last_good=last_good, workdir=run_dir)
                bar.set_postfix(live_metrics(sums, now - start_time), refresh=False)
            bar.update()
            if on_step is not None:
                on_step(state, index, totals, metrics, batches.state_at(index))
    return state, {**sums, "skipped_images": _over_processes(batches.skipped_images)}, time.perf_counter() - start_time


def evaluate(eval_step, state, data: TrainingData, batch_size: int, mesh) -> dict:
    """Loss and accuracy sums over the held-out set, BatchNorm using its running averages."""
    totals = None
    with data.eval_batches(batch_size) as batches:
        for batch in batches:
            totals = _add(totals, eval_step(state, put_batch(batch, mesh)))
    return {**_host(totals), "skipped_images": _over_processes(batches.skipped_images)}


def _over_processes(count: int) -> int:
    """A per-process count summed over every process."""
    if jax.process_count() == 1:
        return count
    from jax.experimental import multihost_utils

    return int(np.sum(multihost_utils.process_allgather(np.int32(count))))
