"""The Flax trainer: data -> model -> optimizer -> restore -> loop -> log -> checkpoint -> export.

`train(config)` runs one TrainConfig in JAX and returns the history and the trained model.
`torch_ref.training.loop` is its twin; `flax_resnet.training.train` runs whichever the config names.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flax_resnet.core.config import ConfigError, TrainConfig, validate
from flax_resnet.core.data import ProcessShard, TrainingData, load_data
from flax_resnet.core.initial_weights import initial_state_dict
from flax_resnet.core.plan import AUGMENT_STREAM, REFRESH_SECONDS, RunSetup, TrainResult, prepare_run, resolve_precision
from flax_resnet.core.run.event_files import EventWriter
from flax_resnet.core.run.init_from import open_init, starting_state
from flax_resnet.core.run.interrupts import StopRequests, TrainingInterrupted
from flax_resnet.core.run.progress import Progress, StepEvents, UnreadableCheckpoints
from flax_resnet.core.run.workdir import (
    TrainingDiverged,
    Workdir,
    check_finite,
    epoch_record,
    live_metrics,
    progress_bar,
    summary_line,
)
from flax_resnet.core.schedule import learning_rate_at_step
from flax_resnet.models import model_skeleton
from flax_resnet.porting.state_dict import load_torch_state_dict, to_torch_state_dict, torch_shapes
from flax_resnet.training import processes
from flax_resnet.training.optim import make_optimizer
from flax_resnet.training.run_checkpoints import RunCheckpoints
from flax_resnet.training.step import (
    batch_sharded,
    data_mesh,
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


def train(config: TrainConfig, *, on_epoch_end: Callable[[dict], None] | None = None) -> TrainResult:
    """Train as `config` says; resume if its workdir holds a run. `on_epoch_end(record)` is called
    after each epoch's checkpoint and logs (raise KeyboardInterrupt there to stop the run).

    SIGTERM and SIGINT stop the run after the current step, with a checkpoint: TrainingInterrupted.
    Raises ConfigError (bad settings), DataError (unreadable data), TrainingDiverged (NaN/inf loss),
    UnreadableCheckpoints (checkpoints there, none readable).
    """
    validate(config)
    if config.framework != "flax":
        raise ConfigError(f"this is the Flax trainer; framework {config.framework!r} runs with "
                          f"flax_resnet.training.train")
    processes.initialize(config)
    mesh = data_mesh(select_devices(config.device))

    # --- data
    config = resolve_precision(config, mesh.devices.flat[0].platform)
    data = load_data(config, shard=ProcessShard(jax.process_index(), jax.process_count()))
    config, opened = open_init(config, data.image_shape[2])  # --init-from may name the model and preprocessing
    setup = prepare_run(config, data, mesh.size)
    workdir = Workdir.open(config, writer=processes.is_main())  # refuses to resume other settings
    # Only process 0 prints and draws progress bars.
    config = dataclasses.replace(config, workdir=str(workdir.path), progress=config.progress and workdir.writer)
    log = print if workdir.writer else (lambda *args, **kwargs: None)

    # --- model
    init = None if opened is None else starting_state(
        opened, config, setup.model_kwargs, torch_shapes(model_skeleton(config.model, **setup.model_kwargs)))
    model = build_model(config, setup, data, None if init is None else init.state_dict)
    for note in () if init is None else init.notes:
        log(note)
    workdir.create()

    # --- optimizer, and the steps that use it
    tx, schedule = make_optimizer(config, setup.plan)
    graphdef, eval_graphdef, state = split_model(model, tx)
    # Frozen BatchNorm: the train step runs the eval-mode graph (running statistics, no updates).
    frozen_bn = config.freeze_bn or config.freeze_backbone
    train_step = jit_train_step(eval_graphdef if frozen_bn else graphdef, tx, mesh, augment=setup.augment,
                                precision=config.precision, label_smoothing=config.label_smoothing,
                                tf32=config.tf32)
    eval_step = jit_eval_step(eval_graphdef, mesh, augment=setup.augment, precision=config.precision,
                              tf32=config.tf32)
    state = jax.device_put(jax.device_get(state), replicated(mesh))  # the same on every process

    steps_per_epoch = setup.plan.steps_per_epoch
    with (RunCheckpoints(workdir, config.keep_checkpoints, steps_per_epoch=steps_per_epoch,
                         warn=lambda message: log(f"warning: {message}", file=sys.stderr)) as checkpoints,
          StopRequests(agree=processes.agree_on_signal if jax.process_count() > 1 else None,
                       every=STOP_CHECK_STEPS) as stop,
          EventWriter(workdir.path, learning_rate=lambda steps: schedule.learning_rate(steps // config.grad_accum),
                      enabled=workdir.writer) as curves):
        # --- restore
        state, progress = checkpoints.restore(state)
        history = progress.history
        if progress.data:
            data.check_position(progress.data)  # the same images as before the interruption
        title = f"{config.model} on {data.name} ({config.framework})"
        if progress.step:
            changed = workdir.changed_settings(config)
            log(f"resuming {workdir.path} {progress.describe(steps_per_epoch)} (train step {progress.step})"
                + (f" with {', '.join(changed)}" if changed else ""))
            workdir.write_history(history, title)  # as the checkpoint has it, should the last write be newer
        workdir.write_config(config, {**setup.details(data, mesh.size),
                                      **({} if init is None else {"init": init.record})})
        curves.open(progress.step)
        rng = jax.jit(lambda: jax.random.fold_in(jax.random.key(config.seed), AUGMENT_STREAM),
                      out_shardings=replicated(mesh))()  # made on every device, as every process can
        log(f"{config.model} on {data.describe()}; {mesh.size} {mesh.devices.flat[0].platform} device(s)"
            + (f" in {jax.process_count()} processes" if jax.process_count() > 1 else "")
            + f"; {steps_per_epoch} steps per epoch; writing to {workdir.path}")
        if len(history) < config.epochs:
            started = time.perf_counter()
            train_step, eval_step = compile_ahead(train_step, eval_step, state, rng, data, config, setup, mesh)
            log(f"compiled the train and eval steps in {time.perf_counter() - started:.1f} s")
        else:
            log(f"all {config.epochs} epochs are done; a larger --epochs continues the run")
        events = StepEvents(steps_per_epoch=steps_per_epoch, checkpoint_every=config.checkpoint_every, stop=stop,
                            curves=curves, workdir=workdir.path, main=workdir.writer)
        events.before_first_step(progress)

        # --- loop
        for epoch in range(progress.epoch, config.epochs + 1):
            start = time.perf_counter()
            resumed = progress if epoch == progress.epoch and progress.steps_done else None
            events.begin_epoch(epoch, history, resumed)

            def on_step(state, steps_done, totals, metrics, position):
                events.after_step(steps_done, totals, metrics, save=functools.partial(checkpoints.save, state),
                                  data=position)

            state, train_totals, train_seconds = train_epoch(
                train_step, state, rng, data, config, epoch, mesh, last_good=checkpoints.latest, run_dir=workdir.path,
                start=resumed.steps_done if resumed else 0,
                totals=jax.device_put(_device_totals(resumed.totals), replicated(mesh)) if resumed else None,
                on_step=on_step)
            train_seconds += resumed.train_seconds if resumed else 0.0
            test_totals = evaluate(eval_step, state, data, setup.eval_batch_size, mesh)
            step = int(state.step)
            lr = learning_rate_at_step(schedule, step - 1, config.grad_accum)
            record = epoch_record(epoch, step, train_totals, test_totals, lr, train_seconds,
                                  time.perf_counter() - start)
            history.append(record)

            # --- log and checkpoint
            checkpoints.save(state, Progress.after_epoch(history, step), test_accuracy=record["test_accuracy"])
            workdir.write_history(history, title)
            curves.epoch(record)
            log(summary_line(record, config.epochs))
            if on_epoch_end is not None:
                on_epoch_end(record)
            if epoch < config.epochs:
                events.end_epoch(step)

    # --- export
    data.close()  # stops a streamed dataset's loader workers
    model = merge_model(eval_graphdef, jax.tree.map(lambda a: jnp.asarray(a.addressable_data(0)), state))
    workdir.export_weights(to_torch_state_dict(model))
    if history:
        best = max(history, key=lambda r: r["test_accuracy"])
        log(f"done: test accuracy {100 * history[-1]['test_accuracy']:.2f}% (best {100 * best['test_accuracy']:.2f}% "
            f"at epoch {best['epoch']}); weights in {workdir.weights_path}")
    return TrainResult(history, model, workdir.path)


def _device_totals(totals: dict[str, float]) -> dict[str, np.ndarray]:
    # float32, as the step's metric sums: the resumed epoch adds up exactly as the uninterrupted one
    return {key: np.float32(value) for key, value in totals.items()}


def compile_ahead(train_step, eval_step, state, rng, data: TrainingData, config: TrainConfig, setup: RunSetup,
                  mesh):
    """Compile both steps before the loop, so the first epoch's img/s is not the compiler's."""
    def batch(size, with_mask):
        spec = {"image": jax.ShapeDtypeStruct((size, *data.image_shape), np.uint8, sharding=batch_sharded(mesh)),
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
