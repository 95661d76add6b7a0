"""Where a run stands, and what happens after each train step. Plain Python, shared by both trainers.

A checkpoint holds the train state and a `Progress`: the finished epochs' records, the position in
the epoch under way and that epoch's metric sums so far. A resumed run therefore continues in the
middle of an epoch with the same remaining batches and augmentation (both are functions of the
epoch and the step), and ends with the same metrics.jsonl as an uninterrupted one.

`StepEvents` is called after every train step: it feeds the live curves, writes the
--checkpoint-every checkpoints and stops the run when a signal asked for it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flax_resnet.core.run.interrupts import StopRequests, TrainingInterrupted
from flax_resnet.core.run.workdir import TrainingDiverged

TOTALS = ("loss", "correct", "count")  # the train metric sums of an epoch
DAMAGED_FOLDER = "damaged-checkpoints"  # in the run folder: checkpoints found damaged, set aside


class UnreadableCheckpoints(RuntimeError):
    """A run folder holds checkpoints but none of them can be read. Resuming would start from scratch
    and overwrite the run's metrics, so nothing is done; the message lists what is wrong with each."""


@dataclasses.dataclass
class Progress:
    """Everything a checkpoint holds besides the train state. JSON-ready."""

    history: list[dict] = dataclasses.field(default_factory=list)  # the finished epochs (metrics.jsonl)
    step: int = 0  # train steps done in the whole run
    epoch: int = 1  # the epoch under way, from 1
    steps_done: int = 0  # its train steps done (all of them: its evaluation is still to come)
    totals: dict[str, float] | None = None  # their metric sums
    train_seconds: float = 0.0  # the time they took
    data: dict[str, Any] = dataclasses.field(default_factory=dict)  # the data source's position (opaque here)

    @classmethod
    def after_epoch(cls, history: list[dict], step: int) -> Progress:
        """The position after the last epoch of `history`, evaluation included."""
        return cls(list(history), step, len(history) + 1)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> Progress:
        """The inverse of `to_json`; ValueError if `values` is not one."""
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(values, dict) or set(values) != names:
            raise ValueError("the run's position is missing or incomplete")
        progress = cls(**values)
        if progress.totals is not None and set(progress.totals) != set(TOTALS):
            raise ValueError("the partial epoch's metric sums are incomplete")
        return progress

    def describe(self, steps_per_epoch: int) -> str:
        """'after epoch 2' or 'in epoch 3 after step 5 of 16'."""
        if self.steps_done == 0:
            return f"after epoch {self.epoch - 1}"
        return f"in epoch {self.epoch} after step {self.steps_done} of {steps_per_epoch}"


class StepEvents:
    """After-step work of one run: live curves, periodic checkpoints, stopping on a signal.

    `save(progress)` (given with each step) writes a checkpoint of the current state. Call
    `begin_epoch` before an epoch's first step and `end_epoch` after its checkpoint.
    """

    def __init__(self, *, steps_per_epoch: int, checkpoint_every: int, stop: StopRequests, curves, workdir,
                 main: bool = True):
        """`main`: this is the process that prints (process 0)."""
        self.steps_per_epoch, self.checkpoint_every = steps_per_epoch, checkpoint_every
        self.stop, self.curves, self.workdir, self.main = stop, curves, workdir, main
        self.epoch, self.history, self._started, self._seconds_before = 1, [], 0.0, 0.0

    def begin_epoch(self, epoch: int, history: list[dict], resumed: Progress | None = None) -> None:
        """`resumed`: the restored position, when this epoch is the one it is in."""
        self.epoch, self.history = epoch, history
        self._started = time.perf_counter()
        self._seconds_before = resumed.train_seconds if resumed is not None else 0.0
        self.curves.begin_epoch()

    def after_step(self, steps_done: int, totals: dict, metrics: dict, *, save: Callable[[Progress], None],
                   data: dict | None = None) -> None:
        """Step `steps_done` of the epoch has run; `totals` are the epoch's metric sums so far."""
        step = (self.epoch - 1) * self.steps_per_epoch + steps_done
        self.curves.step(step, metrics)
        if steps_done == self.steps_per_epoch:
            self.curves.flush()  # before the evaluation, which the throughput should not include
        signum = self.stop.check(step)
        # At the epoch's last step the epoch-end checkpoint follows (after the evaluation).
        due = (self.checkpoint_every and step % self.checkpoint_every == 0 and steps_done < self.steps_per_epoch)
        if not (signum or due):
            return
        progress = Progress(list(self.history), step, self.epoch, steps_done,
                            {key: float(totals[key]) for key in TOTALS},
                            self._seconds_before + time.perf_counter() - self._started, dict(data or {}))
        save(progress)
        if signum:
            self._stop(signum, progress.describe(self.steps_per_epoch))

    def before_first_step(self, progress: Progress) -> None:
        """After the set-up and compilation: a signal that came during them stops the run here, with
        nothing new to checkpoint."""
        signum = self.stop.check_now()
        if signum:
            self._stop(signum, progress.describe(self.steps_per_epoch) if progress.step else "before its first step")

    def end_epoch(self, step: int) -> None:
        """After the epoch's checkpoint: stop here if a signal came during the evaluation or the writes."""
        signum = self.stop.check_now()
        if signum:
            self._stop(signum, Progress.after_epoch(self.history, step).describe(self.steps_per_epoch))

    def _stop(self, signum: int, where: str):
        raise TrainingInterrupted(signum, where, self.workdir, announce=self.main)


def newest_intact(steps: list[int], read: Callable[[int], tuple[Any, str | None]], *, where: Callable[[int], str],
                  describe: Callable[[Any], str], warn: Callable[[str], None],
                  set_aside: Callable[[list[int]], None], folder, metrics: Path) -> Any:
    """The newest checkpoint that `read(step)` -> (result, problem or None) reads, warning about each
    damaged one (`where(step)` names it), which `set_aside` then moves away; None if there are no
    checkpoints and no finished epoch in `metrics` (metrics.jsonl). Both trainers restore this way.
    Raises UnreadableCheckpoints if there are checkpoints, or finished epochs, and none can be read."""
    damaged: list[tuple[int, str]] = []
    for step in sorted(steps, reverse=True):
        result, problem = read(step)
        if problem is not None:
            warn(f"checkpoint {where(step)} is damaged: {problem}")
            damaged.append((step, problem))
            continue
        if damaged:
            warn(f"resuming from the checkpoint before it instead: step {step}, {describe(result)}")
            set_aside([step for step, _ in damaged])
        return result
    if damaged:
        raise UnreadableCheckpoints(f"no checkpoint in {folder} can be read "
                                    f"({'; '.join(f'{step}: {problem}' for step, problem in damaged)}); "
                                    f"move the run folder away to start it again")
    if metrics.exists() and metrics.read_text().strip():
        raise UnreadableCheckpoints(f"{metrics} has finished epochs, but {folder} holds no checkpoint of this "
                                    f"version; move the run folder away to start it again")
    return None


def diverged_parameters(step: int, latest: str | None, folder) -> TrainingDiverged:
    """The error for parameters that became NaN or infinite, found as a checkpoint was to be written."""
    kept = f"the last good checkpoint ({latest}) is kept in {folder}" if latest else "no checkpoint was written yet"
    return TrainingDiverged(f"training diverged: the parameters became NaN or infinite by train step {step}; "
                            f"{kept}. Lower --lr or add --warmup-epochs; re-running with the same --workdir "
                            f"resumes from it")
