"""One training run, written once for both frameworks:
data -> model -> optimizer -> restore -> epochs -> checkpoints -> export.

`run(config, backend)` is the story; the backend (`flax_resnet.training.loop.Backend`,
`torch_ref.training.loop.Backend`, see `core.frameworks.TrainerBackend`) does the numerical work.
`train(config)` picks the backend `config.framework` names.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable

from flax_resnet.core import frameworks
from flax_resnet.core.config import ConfigError, TrainConfig, validate
from flax_resnet.core.data import load_data
from flax_resnet.core.plan import TrainResult, prepare_run
from flax_resnet.core.run.event_files import EventWriter
from flax_resnet.core.run.init_from import open_init, starting_state
from flax_resnet.core.run.progress import Progress, StepEvents
from flax_resnet.core.run.workdir import Workdir, epoch_record, summary_line
from flax_resnet.core.schedule import learning_rate_at_step


def train(config: TrainConfig, *, on_epoch_end: Callable[[dict], None] | None = None) -> TrainResult:
    """Run `config` with the framework it names; see `run`."""
    validate(config)
    return run(config, frameworks.backend(config.framework), on_epoch_end=on_epoch_end)


def _silent(*args, **kwargs) -> None:
    return None


def run(config: TrainConfig, backend: frameworks.TrainerBackend, *,
        on_epoch_end: Callable[[dict], None] | None = None) -> TrainResult:
    """Train as `config` says; resume if its workdir holds a run. `on_epoch_end(record)` is called
    after each epoch's checkpoint and logs (raise KeyboardInterrupt there to stop the run).

    SIGTERM and SIGINT stop the run after the current step, with a checkpoint: TrainingInterrupted.
    Raises ConfigError (bad settings), DataError (unreadable data), TrainingDiverged (NaN/inf loss),
    UnreadableCheckpoints (checkpoints there, none readable).
    """
    validate(config)
    if config.framework != backend.framework:
        raise ConfigError(f"this is the {backend.framework} trainer; framework {config.framework!r} runs with "
                          f"flax_resnet.training.train")
    config = backend.start(config)

    # --- data
    data = load_data(config, shard=backend.shard)
    config, opened = open_init(config, data.image_shape[2])  # --init-from may name the model and preprocessing
    setup = prepare_run(config, data, backend.num_devices)
    workdir = Workdir.open(config, writer=backend.is_main)  # refuses to resume other settings
    # Only the main process prints and draws progress bars.
    config = dataclasses.replace(config, workdir=str(workdir.path), progress=config.progress and workdir.writer)
    log = print if workdir.writer else _silent

    # --- model
    init = None if opened is None else starting_state(opened, config, setup.model_kwargs,
                                                       backend.state_shapes(config, setup))
    backend.build_model(config, setup, data, None if init is None else init.state_dict)
    for note in () if init is None else init.notes:
        log(note)
    workdir.create()

    # --- optimizer, and the steps that use it
    schedule = backend.build_optimizer(config, setup)

    steps_per_epoch = setup.plan.steps_per_epoch
    with (backend.checkpoints(workdir, config.keep_checkpoints, steps_per_epoch=steps_per_epoch,
                              warn=lambda message: log(f"warning: {message}", file=sys.stderr)) as checkpoints,
          backend.stop_requests() as stop,
          EventWriter(workdir.path, learning_rate=lambda steps: schedule.learning_rate(steps // config.grad_accum),
                      enabled=workdir.writer) as curves):
        # --- restore
        progress = backend.restore(checkpoints)
        history = progress.history
        if progress.data:
            data.check_position(progress.data)  # the same images as before the interruption
        title = f"{config.model} on {data.name} ({config.framework})"
        if progress.step:
            changed = workdir.changed_settings(config)
            log(f"resuming {workdir.path} {progress.describe(steps_per_epoch)} (train step {progress.step})"
                + (f" with {', '.join(changed)}" if changed else ""))
            workdir.write_history(history, title)  # as the checkpoint has it, should the last write be newer
        workdir.write_config(config, {**setup.details(data, backend.num_devices),
                                      **({} if init is None else {"init": init.record})})
        curves.open(progress.step)
        log(f"{config.model} on {data.describe()}; {backend.describe()}; {steps_per_epoch} steps per epoch; "
            f"writing to {workdir.path}")
        if len(history) < config.epochs:
            seconds = backend.compile(data)
            if seconds is not None:
                log(f"compiled the train and eval steps in {seconds:.1f} s")
        else:
            log(f"all {config.epochs} epochs are done; a larger --epochs continues the run")
        events = StepEvents(steps_per_epoch=steps_per_epoch, checkpoint_every=config.checkpoint_every, stop=stop,
                            curves=curves, workdir=workdir.path, main=workdir.writer)
        events.before_first_step(progress)

        def save(*args, **kwargs):
            backend.save(checkpoints, *args, **kwargs)

        def on_step(steps_done, totals, metrics, position):
            events.after_step(steps_done, totals, metrics, save=save, data=position)

        # --- epochs
        for epoch in range(progress.epoch, config.epochs + 1):
            start = time.perf_counter()
            resumed = progress if epoch == progress.epoch and progress.steps_done else None
            events.begin_epoch(epoch, history, resumed)
            train_totals, train_seconds = backend.train_epoch(data, epoch, resumed, last_good=checkpoints.latest,
                                                              run_dir=workdir.path, on_step=on_step)
            train_seconds += resumed.train_seconds if resumed else 0.0
            test_totals = backend.evaluate(data)
            ema_totals = backend.evaluate_ema(data) if config.model_ema else None
            step = backend.step
            lr = learning_rate_at_step(schedule, step - 1, config.grad_accum)
            record = epoch_record(epoch, step, train_totals, test_totals, lr, train_seconds,
                                  time.perf_counter() - start, ema_test=ema_totals)
            history.append(record)

            # --- log and checkpoint
            save(Progress.after_epoch(history, step), test_accuracy=record["test_accuracy"])
            workdir.write_history(history, title)
            curves.epoch(record)
            log(summary_line(record, config.epochs))
            if on_epoch_end is not None:
                on_epoch_end(record)
            if epoch < config.epochs:
                events.end_epoch(step)

    # --- export
    data.close()  # stops a streamed dataset's loader workers
    model, state_dict = backend.finish()
    workdir.export_weights(state_dict)
    if config.model_ema:
        workdir.export_weights(backend.ema_state_dict(), workdir.ema_weights_path)
    if history:
        best = max(history, key=lambda r: r["test_accuracy"])
        log(f"done: test accuracy {100 * history[-1]['test_accuracy']:.2f}% (best {100 * best['test_accuracy']:.2f}% "
            f"at epoch {best['epoch']}); weights in {workdir.weights_path}")
    return TrainResult(history, model, workdir.path)
