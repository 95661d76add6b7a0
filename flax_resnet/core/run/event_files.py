"""Live curves: TensorBoard event files in the run folder, beside metrics.jsonl. Plain Python.

    tensorboard --logdir runs/

Per train step: `train/loss` (the batch's mean loss) and `train/lr`; every few seconds
`train/images_per_sec`; per epoch every number of its metrics.jsonl record, under `epoch/`. The step
axis is the train step of the whole run. A resumed run marks its first step as a restart, so
TensorBoard drops what an interrupted run had logged after its last checkpoint.

Written with tensorboardX's event writer and protocol buffers, one record per step, from the
training thread: its SummaryWriter sends every value through a multiprocessing queue, about 50 us
of CPU each (100 us a step for loss and lr, measured on the 2-core CPU); this way costs about 20 us
a step, buffering included.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

FLUSH_SECONDS = 5.0  # between writes of the buffered per-step values (each waits for the device)


def _tensorboardx():
    # tensorboardX imports torch, when it is installed, only to recognize torch tensors; the Flax
    # trainer gives it Python floats and should not pay seconds and hundreds of megabytes for torch.
    # Hide torch for the import if this process has not loaded it.
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # makes `import torch` raise ImportError
    try:
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog
        from tensorboardX.proto.summary_pb2 import Summary
    finally:
        if hide:
            del sys.modules["torch"]
    return EventsWriter, Event, SessionLog, Summary


class EventWriter:
    """Writes the curves of one run (only where `enabled`: process 0 of a multi-process run).

    `step(...)` only buffers: the values may still be on the device, and reading them is a sync
    point, so they are fetched together every FLUSH_SECONDS and at the end of each epoch's steps.
    """

    def __init__(self, folder: Path, *, learning_rate: Callable[[np.ndarray], np.ndarray], enabled: bool = True):
        """`learning_rate(steps)`: the lr each train step (from 0) ran with, for an array of them."""
        self.folder, self.enabled, self.learning_rate = Path(folder), enabled, learning_rate
        self._writer, self._pending = None, []
        self._window_started, self._window_images = time.perf_counter(), 0.0

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self, resumed_step: int) -> None:
        """Start writing; a run resumed after `resumed_step` steps hides later points of earlier runs."""
        if not self.enabled:
            return
        EventsWriter, self._event, session_log, self._summary = _tensorboardx()
        # tensorboardX names the file by the second; a run resumed within the same second would
        # overwrite the earlier file. The nanoseconds keep both, in the order TensorBoard reads them.
        self._writer = EventsWriter(os.path.join(self.folder, "events"),
                                    filename_suffix=f".{time.time_ns() % 10**9:09d}")
        if resumed_step:  # TensorBoard drops earlier files' events from this step on
            self._writer.write_event(self._event(wall_time=time.time(), step=resumed_step + 1,
                                                 session_log=session_log(status=session_log.START)))
            self._writer.flush()

    def begin_epoch(self) -> None:
        self._window_started, self._window_images = time.perf_counter(), 0.0

    def step(self, step: int, metrics: dict) -> None:
        """Train step `step` (from 1) ran; `metrics` are its sums (loss, count), on the device or not."""
        if self._writer is None:
            return
        self._pending.append((step, time.time(), metrics))
        if time.perf_counter() - self._window_started >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Write the buffered steps, and the throughput since the last flush."""
        if self._writer is None or not self._pending:
            return
        lrs = self.learning_rate(np.array([step - 1 for step, _, _ in self._pending]))
        for index, ((step, wall_time, metrics), lr) in enumerate(zip(self._pending, lrs)):
            count = float(metrics["count"])
            self._window_images += count
            values = {"train/loss": float(metrics["loss"]) / count, "train/lr": float(lr)}
            if index == len(self._pending) - 1:
                now = time.perf_counter()
                values["train/images_per_sec"] = self._window_images / max(now - self._window_started, 1e-9)
                self._window_started, self._window_images = now, 0.0
            self._write(step, values, wall_time)
        self._pending = []
        self._writer.flush()

    def epoch(self, record: dict) -> None:
        """One metrics.jsonl record, at the run's step count after that epoch."""
        if self._writer is None:
            return
        self.flush()
        self._write(record["step"], {f"epoch/{key}": value for key, value in record.items()
                                     if key not in ("epoch", "step")}, time.time())
        self._writer.flush()

    def _write(self, step: int, values: dict[str, float], wall_time: float) -> None:
        summary = self._summary(value=[self._summary.Value(tag=tag, simple_value=value)
                                       for tag, value in values.items()])
        self._writer.write_event(self._event(wall_time=wall_time, step=step, summary=summary))

    def close(self) -> None:
        if self._writer is not None:
            self.flush()
            self._writer.close()
            self._writer = None
