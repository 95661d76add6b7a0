"""The Flax trainer: data -> model -> optimizer -> restore -> loop -> log -> checkpoint -> export.

`train(config)` runs one TrainConfig in JAX and returns the history and the trained model.
`torch_ref.training.loop` is its twin; `flax_resnet.training.train` runs whichever the config names.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from flax_resnet.porting.checkpoint import model_skeleton
from flax_resnet.porting.state_dict import load_torch_state_dict, to_torch_state_dict, torch_shapes
from flax_resnet.training.config import ConfigError, TrainConfig, validate
from flax_resnet.training.data import Dataset, load_dataset
from flax_resnet.training.initial_weights import initial_state_dict
from flax_resnet.training.optim import learning_rate, make_optimizer
from flax_resnet.training.sampling import epoch_order, eval_batches
from flax_resnet.training.setup import AUGMENT_STREAM, REFRESH_SECONDS, RunSetup, TrainResult, prepare_run
from flax_resnet.training.step import (batch_sharded, data_mesh, jit_eval_step, jit_train_step, merge_model,
                                       gather_batch, prefetch, put_batch, replicated, select_devices,
                                       split_model)
from flax_resnet.training.workdir import (TrainingDiverged, Workdir, check_finite, epoch_record, live_metrics,
                                          progress_bar, summary_line)

__all__ = ["TrainResult", "TrainingDiverged", "train"]


def build_model(config: TrainConfig, setup: RunSetup, data: Dataset) -> nnx.Module:
    """The model with `initial_weights` drawn from `config.seed`; refuses an input size it cannot take."""
    model = model_skeleton(config.model, **setup.model_kwargs)
    load_torch_state_dict(model, initial_state_dict(config.model, setup.model_kwargs, torch_shapes(model),
                                                    config.seed))
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

    Raises ConfigError (bad settings), DataError (unreadable data), TrainingDiverged (NaN/inf loss).
    """
    validate(config)
    if config.framework != "flax":
        raise ConfigError(f"this is the Flax trainer; framework {config.framework!r} runs with "
                          f"flax_resnet.training.train")
    if config.distributed:
        jax.distributed.initialize()
    mesh = data_mesh(select_devices(config.device))

    # --- data
    data = load_dataset(config.dataset, config.data_dir)
    setup = prepare_run(config, data, mesh.size)
    workdir = Workdir.open(config, writer=jax.process_index() == 0)  # refuses to resume other settings
    config = dataclasses.replace(config, workdir=str(workdir.path))
    log = print if workdir.writer else (lambda *args: None)

    # --- model
    model = build_model(config, setup, data)
    workdir.create()

    # --- optimizer, and the steps that use it
    tx, schedule = make_optimizer(config, setup.plan)
    graphdef, eval_graphdef, state = split_model(model, tx)
    train_step = jit_train_step(graphdef, tx, mesh, augment=setup.augment, precision=config.precision,
                                label_smoothing=config.label_smoothing, tf32=config.tf32)
    eval_step = jit_eval_step(eval_graphdef, mesh, augment=setup.augment, precision=config.precision,
                              tf32=config.tf32)

    options = ocp.CheckpointManagerOptions(preservation_policy=keep_latest_and_best(config.keep_checkpoints))
    with ocp.CheckpointManager(workdir.checkpoints_path.absolute(), options=options) as checkpoints:
        # --- restore
        history: list[dict] = []
        if checkpoints.latest_step() is not None:
            state, history = restore(checkpoints, state)
            changed = workdir.changed_settings(config)
            log(f"resuming {workdir.path} after epoch {len(history)}"
                + (f" with {', '.join(changed)}" if changed else ""))
        workdir.write_config(config, setup.details(data, mesh.size))
        state = jax.device_put(state, replicated(mesh))
        rng = jax.device_put(jax.random.fold_in(jax.random.key(config.seed), AUGMENT_STREAM), replicated(mesh))
        log(f"{config.model} on {data.describe()}; {mesh.size} {mesh.devices.flat[0].platform} device(s); "
            f"{setup.plan.steps_per_epoch} steps per epoch; writing to {workdir.path}")
        if len(history) < config.epochs:
            started = time.perf_counter()
            train_step, eval_step = compile_ahead(train_step, eval_step, state, rng, data, config, setup, mesh)
            log(f"compiled the train and eval steps in {time.perf_counter() - started:.1f} s")
        else:
            log(f"all {config.epochs} epochs are done; a larger --epochs continues the run")

        # --- loop
        title = f"{config.model} on {data.name} ({config.framework})"
        for epoch in range(len(history) + 1, config.epochs + 1):
            start = time.perf_counter()
            state, train_totals, train_seconds = train_epoch(
                train_step, state, rng, data, config, epoch, mesh, last_good=len(history), run_dir=workdir.path)
            test_totals = evaluate(eval_step, state, data.test_images, data.test_labels,
                                   setup.eval_batch_size, mesh)
            step = int(state.step)
            lr = learning_rate(schedule, step - 1, config.grad_accum)
            record = epoch_record(epoch, step, train_totals, test_totals, lr, train_seconds,
                                  time.perf_counter() - start)
            history.append(record)

            # --- log and checkpoint
            checkpoints.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                            history=ocp.args.JsonSave(history)),
                             metrics={"test_accuracy": record["test_accuracy"]})
            workdir.write_history(history, title)
            log(summary_line(record, config.epochs))
            if on_epoch_end is not None:
                on_epoch_end(record)

    # --- export
    model = merge_model(eval_graphdef, jax.tree.map(lambda a: jnp.asarray(a.addressable_data(0)), state))
    workdir.export_weights(to_torch_state_dict(model))
    if history:
        best = max(history, key=lambda r: r["test_accuracy"])
        log(f"done: test accuracy {100 * history[-1]['test_accuracy']:.2f}% (best {100 * best['test_accuracy']:.2f}% "
            f"at epoch {best['epoch']}); weights in {workdir.weights_path}")
    return TrainResult(history, model, workdir.path)


def compile_ahead(train_step, eval_step, state, rng, data: Dataset, config: TrainConfig, setup: RunSetup,
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


def train_epoch(train_step, state, rng, data: Dataset, config: TrainConfig, epoch: int, mesh, *,
                last_good: int, run_dir):
    """One pass over the shuffled training set. Returns (state, metric sums, seconds)."""
    batches = epoch_order(config.seed, epoch, len(data.train_labels), config.batch_size)
    arrays = {"image": data.train_images, "label": data.train_labels}
    on_device = prefetch(lambda indices: put_batch(gather_batch(arrays, indices), mesh), batches)
    totals, start, last_refresh = None, time.perf_counter(), 0.0
    with progress_bar(len(batches), epoch, config.epochs, config.progress) as bar:
        for index, batch in enumerate(on_device, 1):
            state, metrics = train_step(state, batch, rng)
            previous, totals = totals, _add(totals, metrics)
            now = time.perf_counter()
            if index == len(batches):
                sums = _host(totals)
                check_finite(sums["loss"], epoch=epoch, step=index, last_good=last_good, workdir=run_dir)
            elif now - last_refresh >= REFRESH_SECONDS and previous is not None:
                # Waits for the sums up to the step before: the step just dispatched keeps the device busy.
                last_refresh, sums = now, _host(previous)
                check_finite(sums["loss"], epoch=epoch, step=index - 1, last_good=last_good, workdir=run_dir)
                bar.set_postfix(live_metrics(sums, now - start), refresh=False)
            bar.update()
    return state, sums, time.perf_counter() - start


def evaluate(eval_step, state, images: np.ndarray, labels: np.ndarray, batch_size: int, mesh) -> dict:
    """Loss and accuracy sums over a whole set, BatchNorm using its running averages."""
    totals = None
    for batch in eval_batches(images, labels, batch_size):
        totals = _add(totals, eval_step(state, put_batch(batch, mesh)))
    return _host(totals)


def keep_latest_and_best(latest: int):
    """Orbax policy: keep the `latest` most recent checkpoints and the one with the best test accuracy."""
    policies = ocp.checkpoint_managers.preservation_policy
    return policies.AnyPreservationPolicy([
        policies.LatestN(latest),
        policies.BestN(get_metric_fn=lambda metrics: metrics["test_accuracy"], n=1),
    ])


def restore(checkpoints: ocp.CheckpointManager, state):
    """(state, history) from the latest checkpoint, shaped like the freshly built `state`."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    restored = checkpoints.restore(checkpoints.latest_step(), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), history=ocp.args.JsonRestore()))
    return restored.state, list(restored.history)
