"""Live curves: TensorBoard event files in the run folder, beside metrics.jsonl. Plain Python.

    tensorboard --logdir runs/

Per train step: `train/loss` (the batch's mean loss) and `train/lr`; every few seconds
`train/images_per_sec`; per epoch every number of its metrics.jsonl record, under `epoch/`. The step
axis is the train step of the whole run. A resumed run marks its first step as a restart, so
TensorBoard drops what an interrupted run had logged after its last checkpoint.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

FLUSH_SECONDS = 5.0  # between writes of the buffered per-step values (each waits for the device)


def _summary_writer_class():
    # tensorboardX imports torch, when it is installed, only to recognize torch tensors among the
    # values it is given; the Flax trainer gives it Python floats and should not pay seconds and
    # hundreds of megabytes for torch. Hide torch for the import if this process has not loaded it.
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # makes `import torch` raise ImportError
    try:
        from tensorboardX import SummaryWriter
    finally:
        if hide:
            del sys.modules["torch"]
    return SummaryWriter


class EventWriter:
    """Writes the curves of one run (only where `enabled`: process 0 of a multi-process run).

    `step(...)` only buffers: the values may still be on the device, and reading them is a sync point,
    so they are fetched together every FLUSH_SECONDS and at the end of each epoch.
    """

    def __init__(self, folder: Path, *, enabled: bool = True):
        self.folder, self.enabled = Path(folder), enabled
        self._writer, self._pending = None, []
        self._window_started, self._window_images = time.perf_counter(), 0.0

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self, resumed_step: int) -> None:
        """Start writing; a run resumed after `resumed_step` steps discards later points of earlier runs."""
        if self.enabled:
            purge = resumed_step + 1 if resumed_step else None
            self._writer = _summary_writer_class()(str(self.folder), purge_step=purge, flush_secs=30)

    def begin_epoch(self) -> None:
        self._window_started, self._window_images = time.perf_counter(), 0.0

    def step(self, step: int, metrics: dict, lr: float) -> None:
        """Train step `step` (from 1) ran with `lr`; `metrics` are its sums (loss, count), on the device or not."""
        if self._writer is None:
            return
        self._pending.append((step, metrics, lr))
        if time.perf_counter() - self._window_started >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Write the buffered steps, and the throughput since the last flush."""
        if self._writer is None or not self._pending:
            return
        for step, metrics, lr in self._pending:
            count = float(metrics["count"])
            self._writer.add_scalar("train/loss", float(metrics["loss"]) / count, step)
            self._writer.add_scalar("train/lr", lr, step)
            self._window_images += count
        now = time.perf_counter()
        self._writer.add_scalar("train/images_per_sec", self._window_images / max(now - self._window_started, 1e-9),
                                self._pending[-1][0])
        self._pending, self._window_started, self._window_images = [], now, 0.0

    def epoch(self, record: dict) -> None:
        """One metrics.jsonl record, at the run's step count after that epoch."""
        if self._writer is None:
            return
        self.flush()
        for key, value in record.items():
            if key not in ("epoch", "step"):
                self._writer.add_scalar(f"epoch/{key}", value, record["step"])
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self.flush()
            self._writer.close()
            self._writer = None
