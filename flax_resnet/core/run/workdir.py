"""A training run's folder and the files in it, shared by the Flax and torch trainers.

    config.json        every setting, plus `model_kwargs`, the augmentation and data actually used
    metrics.jsonl      one JSON object per epoch
    curves.png         loss and accuracy per epoch, train vs test
    model.safetensors  final weights in the torch twin's layout
    model_ema.safetensors  the final moving average of them, with --model-ema
    checkpoints/       the latest few checkpoints and the best one
    events.out.tfevents.*  TensorBoard curves (`training.event_files`)

Every file is written to a temporary name and renamed, so none is ever half-written.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy

from flax_resnet.core.config import LAUNCH_SETTINGS, ConfigError, TrainConfig, resume_differences
from flax_resnet.core.files import atomic_file, write_json, write_text


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite. The message names the last good checkpoint."""


def default_workdir(config: TrainConfig) -> Path:
    """runs/<framework>-<model>-<dataset>-<YYYYmmdd-HHMMSS>."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.framework}-{config.model}-{config.dataset}-{stamp}"


class Workdir:
    """The run folder. `open` checks that a run already there may be resumed with `config`."""

    def __init__(self, path: Path, *, writer: bool = True):
        self.path = Path(path)
        self.writer = writer  # only one process of a multi-host run writes files

    config_path = property(lambda self: self.path / "config.json")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    curves_path = property(lambda self: self.path / "curves.png")
    weights_path = property(lambda self: self.path / "model.safetensors")
    ema_weights_path = property(lambda self: self.path / "model_ema.safetensors")
    checkpoints_path = property(lambda self: self.path / "checkpoints")

    @classmethod
    def open(cls, config: TrainConfig, *, writer: bool = True) -> Workdir:
        """The run folder for `config`, not yet created. Raises ConfigError if it holds a run
        whose settings differ in something a resumption may not change."""
        workdir = cls(Path(config.workdir) if config.workdir else default_workdir(config), writer=writer)
        if workdir.config_path.exists():
            stored = json.loads(workdir.config_path.read_text())
            differences = resume_differences(stored, config)
            if differences:
                raise ConfigError(f"{workdir.path} holds a run with other settings ({'; '.join(differences)}); "
                                  f"use another --workdir, or the same settings to resume it")
        return workdir

    def create(self) -> None:
        """Make the folder (once every check has passed)."""
        if self.writer:
            self.path.mkdir(parents=True, exist_ok=True)

    def changed_settings(self, config: TrainConfig) -> list[str]:
        """Resumable settings that differ from the stored run's (e.g. a new lr), for a notice."""
        if not self.config_path.exists():
            return []
        stored = json.loads(self.config_path.read_text())
        return [f"{k} {stored.get(k)!r} -> {v!r}" for k, v in config.to_json().items()
                if k in stored and stored[k] != v and k not in LAUNCH_SETTINGS]

    def write_config(self, config: TrainConfig, details: dict[str, Any]) -> None:
        """config.json: every setting, then `model_kwargs` and what was derived from the data."""
        if self.writer:
            write_json(self.config_path, {**config.to_json(), **details})

    def write_history(self, history: list[dict], title: str) -> None:
        """metrics.jsonl and curves.png for the epochs so far."""
        if not self.writer:
            return
        write_text(self.metrics_path, "".join(json.dumps(record) + "\n" for record in history))
        plot_curves(history, self.curves_path, title)

    def export_weights(self, state_dict, path: Path | None = None) -> None:
        """model.safetensors (or `path`) in the torch twin's layout (loads with strict=True); numpy or
        torch values."""
        if not self.writer:
            return
        # np.array, not np.ascontiguousarray, which turns num_batches_tracked's 0-d arrays into 1-d.
        arrays = {key: np.array(value.detach().cpu().numpy() if hasattr(value, "detach") else value, order="C")
                  for key, value in state_dict.items()}
        with atomic_file(path or self.weights_path) as temporary:
            safetensors.numpy.save_file(arrays, temporary, metadata={"format": "pt"})


def epoch_record(epoch: int, step: int, train: dict, test: dict, lr: float, train_seconds: float,
                 seconds: float, ema_test: dict | None = None) -> dict[str, Any]:
    """One line of metrics.jsonl from the metric sums of an epoch (`ema_test`: the moving
    average's evaluation, with --model-ema)."""
    ema = {} if ema_test is None else {"ema_test_loss": ema_test["loss"] / ema_test["count"],
                                       "ema_test_accuracy": ema_test["correct"] / ema_test["count"]}
    return {
        "epoch": epoch,
        "step": step,
        "train_loss": train["loss"] / train["count"],
        "train_accuracy": train["correct"] / train["count"],
        "test_loss": test["loss"] / test["count"],
        "test_accuracy": test["correct"] / test["count"],
        **ema,
        "lr": lr,
        "images_per_sec": train["count"] / train_seconds,
        "seconds": seconds,
        # images that could not be decoded: replaced in training, left out of the evaluation
        "skipped_images": int(train.get("skipped_images", 0) + test.get("skipped_images", 0)),
    }


def summary_line(record: dict[str, Any], epochs: int) -> str:
    """The one line printed after each epoch."""
    return (f"epoch {record['epoch']:>3}/{epochs}  train loss {record['train_loss']:.4f} "
            f"acc {100 * record['train_accuracy']:6.2f}%  test loss {record['test_loss']:.4f} "
            f"acc {100 * record['test_accuracy']:6.2f}%  "
            + (f"ema acc {100 * record['ema_test_accuracy']:6.2f}%  " if "ema_test_accuracy" in record else "")
            + f"lr {record['lr']:.3g}  "
            f"{record['images_per_sec']:.0f} img/s  {record['seconds']:.1f} s")


def live_metrics(sums: dict, seconds: float) -> dict[str, str]:
    """The progress bar's postfix: running loss, accuracy and throughput of the epoch so far."""
    return {"loss": f"{sums['loss'] / sums['count']:.4f}", "acc": f"{sums['correct'] / sums['count']:.4f}",
            "img/s": f"{sums['count'] / seconds:.0f}"}


def check_finite(loss_sum: float, *, epoch: int, step: int, last_good: str | None, workdir: Path) -> None:
    """Raise TrainingDiverged if the running loss is NaN or infinite. `last_good`: where the newest
    checkpoint stands ('after epoch 3'), None if there is none."""
    if math.isfinite(loss_sum):
        return
    kept = (f"the last good checkpoint ({last_good}) is kept in {workdir / 'checkpoints'}"
            if last_good else "no checkpoint was written yet")
    raise TrainingDiverged(
        f"training diverged: the loss became {loss_sum} in epoch {epoch} (by step {step}); {kept}. "
        f"Lower --lr or add --warmup-epochs; re-running with the same --workdir resumes from that checkpoint")


def plot_curves(history: list[dict], path: Path, title: str) -> None:
    """Loss and accuracy per epoch, train vs test, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for axis, key, label in ((loss_axis, "loss", "loss"), (accuracy_axis, "accuracy", "accuracy")):
        axis.plot(epochs, [r[f"train_{key}"] for r in history], "o-", label="train")
        axis.plot(epochs, [r[f"test_{key}"] for r in history], "s-", label="test")
        if all(f"ema_test_{key}" in r for r in history):
            axis.plot(epochs, [r[f"ema_test_{key}"] for r in history], "^--", label="test, moving average")
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title)
    figure.subplots_adjust(left=0.08, right=0.98, bottom=0.13, top=0.88, wspace=0.25)
    with atomic_file(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    plt.close(figure)


def progress_bar(total: int, epoch: int, epochs: int, enabled: bool):
    """A tqdm bar for one epoch's steps; it disappears when the epoch's summary line is printed."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"epoch {epoch}/{epochs}", unit="step", leave=False,
                disable=not enabled, dynamic_ncols=True)
