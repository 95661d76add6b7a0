"""Training, start to finish: data -> model -> optimizer -> restore -> loop -> log -> checkpoint -> export.

`train(config)` runs one TrainConfig in JAX (or, with framework='torch', hands it to
`torch_ref.trainer`, which mirrors this file) and returns the history and the trained model.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

import flax_resnet
from flax_resnet.augment import AugmentSpec, channel_statistics, default_augment
from flax_resnet.config import ConfigError, TrainConfig, validate
from flax_resnet.data import Dataset, load_dataset
from flax_resnet.optim import StepPlan, learning_rate, make_optimizer
from flax_resnet.porting import to_torch_state_dict
from flax_resnet.registry import resolve
from flax_resnet.train_step import (batch_sharded, data_mesh, jit_eval_step, jit_train_step, merge_model,
                                    put_batch, replicated, split_model)
from flax_resnet.workdir import (TrainingDiverged, Workdir, check_finite, epoch_record, live_metrics,
                                 progress_bar, summary_line)

__all__ = ["TrainResult", "TrainingDiverged", "train"]

# Seconds between progress-bar refreshes. Each refresh waits for the device, so not every step.
REFRESH_SECONDS = 0.5
AUGMENT_STREAM = 1  # the augmentation key is fold_in(key(seed), 1); initialization uses key(seed)


@dataclasses.dataclass
class TrainResult:
    """What `train` returns: per-epoch metrics (as in metrics.jsonl), the trained model, the folder."""

    history: list[dict[str, Any]]
    model: Any  # nnx.Module in eval mode; torch.nn.Module for framework='torch'
    workdir: Any


@dataclasses.dataclass(frozen=True)
class RunSetup:
    """What a config means for a given dataset: shared by the Flax and torch trainers."""

    plan: StepPlan
    augment: AugmentSpec
    model_kwargs: dict[str, Any]
    eval_batch_size: int

    def details(self, data: Dataset, num_devices: int) -> dict[str, Any]:
        """The derived settings recorded in config.json beside the TrainConfig."""
        return {
            "model_kwargs": self.model_kwargs,
            "augment": dataclasses.asdict(self.augment),
            "data": {"name": data.name, "source": data.source, "train_images": len(data.train_labels),
                     "test_images": len(data.test_labels), "image_shape": list(data.image_shape)},
            "steps_per_epoch": self.plan.steps_per_epoch,
            "devices": num_devices,
        }


def prepare_run(config: TrainConfig, data: Dataset, num_devices: int = 1) -> RunSetup:
    """Check the config against the data and fill in what depends on it. Raises ConfigError."""
    train_count, channels = len(data.train_labels), data.image_shape[2]
    if config.batch_size > train_count:
        raise ConfigError(f"batch_size {config.batch_size} is larger than the {train_count} training images "
                          f"of {data.name}")
    if config.batch_size % num_devices:
        raise ConfigError(f"batch_size {config.batch_size} must be a multiple of the {num_devices} devices")
    if config.mean is None:
        mean, std = channel_statistics(data.train_images)
    else:
        mean, std = config.mean, config.std
    if len(mean) != channels or len(std) != channels:
        raise ConfigError(f"mean and std need {channels} value(s) for {data.name}'s {channels}-channel "
                          f"images, got {len(mean)} and {len(std)}")
    augment = default_augment(data.image_shape, crop_padding=config.crop_padding, flip=config.flip,
                              image_size=config.image_size, mean=mean, std=std)
    _, num_classes, in_channels, options = resolve(config.model, data.num_classes, channels,
                                                   dict(config.model_options))
    eval_batch = min(config.eval_batch_size, len(data.test_labels))
    eval_batch = -(-eval_batch // num_devices) * num_devices
    plan = StepPlan(train_count // config.batch_size, config.grad_accum, config.epochs)
    return RunSetup(plan, augment, {"num_classes": num_classes, "in_channels": in_channels, **options},
                    eval_batch)


def build_model(config: TrainConfig, setup: RunSetup, data: Dataset) -> nnx.Module:
    """The model, initialized from `config.seed`; refuses an input size the model cannot take."""
    model = flax_resnet.create_model(config.model, rngs=nnx.Rngs(config.seed), **setup.model_kwargs)
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


def epoch_order(seed: int, epoch: int, count: int, batch_size: int) -> np.ndarray:
    """This epoch's shuffled batches of indices (steps x batch); the partial last batch is dropped."""
    order = np.random.default_rng([seed, epoch]).permutation(count)
    steps = count // batch_size
    return order[: steps * batch_size].reshape(steps, batch_size)


def eval_batches(images: np.ndarray, labels: np.ndarray, batch_size: int):
    """Fixed-size batches over the whole set; the last is zero-padded with mask 0."""
    for start in range(0, len(labels), batch_size):
        end = min(start + batch_size, len(labels))
        pad = batch_size - (end - start)
        yield {
            "image": np.concatenate([images[start:end], np.zeros((pad, *images.shape[1:]), images.dtype)]),
            "label": np.concatenate([labels[start:end], np.zeros((pad,), labels.dtype)]),
            "mask": np.concatenate([np.ones(end - start, np.float32), np.zeros(pad, np.float32)]),
        }


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
    if config.framework == "torch":
        from torch_ref.trainer import train as train_torch

        return train_torch(config, on_epoch_end=on_epoch_end)
    if config.distributed:
        jax.distributed.initialize()
    mesh = data_mesh()

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
                                label_smoothing=config.label_smoothing)
    eval_step = jit_eval_step(eval_graphdef, mesh, augment=setup.augment, precision=config.precision)

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
        log(f"{config.model} on {data.describe()}; {mesh.size} {jax.devices()[0].platform} device(s); "
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
    totals, start, last_refresh = None, time.perf_counter(), 0.0
    with progress_bar(len(batches), epoch, config.epochs, config.progress) as bar:
        for index, indices in enumerate(batches, 1):
            batch = put_batch({"image": data.train_images[indices], "label": data.train_labels[indices]}, mesh)
            state, metrics = train_step(state, batch, rng)
            totals = _add(totals, metrics)
            now = time.perf_counter()
            if now - last_refresh >= REFRESH_SECONDS or index == len(batches):
                last_refresh, sums = now, _host(totals)  # waits for the device: a sync point
                check_finite(sums["loss"], epoch=epoch, step=index, last_good=last_good, workdir=run_dir)
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
