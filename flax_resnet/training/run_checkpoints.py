"""The Flax trainer's checkpoints: checkpoints/<train step>/, written by orbax, by all processes together.

    <step>/state/       the TrainState: parameters, BatchNorm statistics, optimizer state, step count
    <step>/progress/    the run's Progress: finished epochs, position in the epoch, partial metric sums
    <step>/files.json   every file's size and CRC-32, written once orbax has finished the rest

Orbax writes a checkpoint into a temporary folder and renames it when complete, so a process killed
mid-write leaves no checkpoint that looks complete (the temporary folder is removed at the next
start). Files damaged later (a truncated copy, a bad disk) are found by files.json before orbax
reads anything: orbax would read garbled array data without noticing, and a failed read leaves its
other reads pending on an event loop it has already closed ("RuntimeError: Event loop is closed"
printed from orbax's threads, often while the interpreter exits). A damaged checkpoint is set
aside in damaged-checkpoints/ with a warning, and the one before it is used.
`torch_ref.training.run_checkpoints` is the twin.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from flax_resnet.core.files import checksum_problem, folder_checksums, write_json
from flax_resnet.core.run.progress import DAMAGED_FOLDER, Progress, diverged_parameters, newest_intact
from flax_resnet.core.run.workdir import Workdir
from flax_resnet.training import processes

MANIFEST = "files.json"


def keep_latest_and_best(latest: int):
    """Orbax policy: keep the `latest` most recent checkpoints and the epoch-end one with the best
    test accuracy (checkpoints taken within an epoch have no test accuracy)."""
    policies = ocp.checkpoint_managers.preservation_policy
    return policies.AnyPreservationPolicy([
        policies.LatestN(latest),
        policies.BestN(get_metric_fn=lambda metrics: metrics["test_accuracy"], n=1,
                       keep_checkpoints_without_metrics=False),
    ])


class RunCheckpoints:
    """The checkpoints of one run folder. Use as a context manager; every process must make the same calls."""

    def __init__(self, workdir: Workdir, keep: int, *, steps_per_epoch: int, warn: Callable[[str], None]):
        self.folder = workdir.checkpoints_path.absolute()
        self.damaged_folder = workdir.path.absolute() / DAMAGED_FOLDER
        self.metrics = workdir.metrics_path
        self.writer, self.steps_per_epoch, self.warn = workdir.writer, steps_per_epoch, warn
        # Synchronous saves: files.json is written right after, and a stop on SIGTERM needs the
        # checkpoint finished before the process exits anyway.
        options = ocp.CheckpointManagerOptions(preservation_policy=keep_latest_and_best(keep),
                                               enable_async_checkpointing=False, cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.folder, options=options)
        self.latest: str | None = None  # where the newest checkpoint written or restored stands

    def __enter__(self) -> RunCheckpoints:
        return self

    def __exit__(self, *exc) -> None:
        self.manager.close()

    def restore(self, state, ema=None) -> tuple[object, Progress, object]:
        """(state, progress, ema) of the newest intact checkpoint, shaped and placed like `state` (and
        `ema`, the moving average of the weights, when the run keeps one); (`state`, a fresh Progress,
        `ema`) when there is none. Raises UnreadableCheckpoints if there are checkpoints and none of
        them can be read."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, (state, ema))
        restored = newest_intact(self.manager.all_steps(), lambda step: self._read(step, *abstract),
                                 where=lambda step: str(self.folder / str(step)),
                                 describe=lambda restored: restored[1].describe(self.steps_per_epoch), warn=self.warn,
                                 set_aside=self._set_aside, folder=self.folder, metrics=self.metrics)
        if restored is None:
            return state, Progress(), ema
        self.latest = restored[1].describe(self.steps_per_epoch)
        return restored

    def _read(self, step: int, abstract, abstract_ema):
        step_folder = self.folder / str(step)
        try:
            problem = checksum_problem(step_folder, _read_manifest(step_folder))
        except (OSError, ValueError, KeyError, TypeError) as error:
            return None, f"{MANIFEST} is unreadable ({error})"
        if problem is not None:
            return None, problem
        try:
            items = {"state": ocp.args.StandardRestore(abstract), "progress": ocp.args.JsonRestore()}
            if abstract_ema is not None:
                items["ema"] = ocp.args.StandardRestore(abstract_ema)
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
            progress = Progress.from_json(restored.progress)
            if progress.step != step or int(restored.state.step) != step:
                return None, f"it says it is at step {progress.step}, and its state at {int(restored.state.step)}"
        except Exception as error:  # noqa: BLE001 - orbax and tensorstore raise many kinds for bad files
            return None, f"orbax cannot read it ({str(error).strip().splitlines()[0][:200]})"
        return (restored.state, progress, restored.ema if abstract_ema is not None else None), None

    def _set_aside(self, steps: list[int]) -> None:
        """Move damaged checkpoints out of orbax's folder (a later save may need their step numbers)."""
        if not steps:
            return
        if self.writer:
            self.damaged_folder.mkdir(exist_ok=True)
            for step in steps:
                target = self.damaged_folder / str(step)
                suffix = 1
                while target.exists():
                    target, suffix = self.damaged_folder / f"{step}-{suffix}", suffix + 1
                os.rename(self.folder / str(step), target)
                self.warn(f"moved the damaged checkpoint {step} to {target}")
        processes.sync("damaged checkpoints set aside")
        self.manager.reload()

    def save(self, state, progress: Progress, *, test_accuracy: float | None = None, ema=None) -> None:
        """Checkpoint `state` (and `ema`, the moving average of the weights, if given) at `progress`
        (an epoch end when `test_accuracy` is given). A checkpoint at the same step (an epoch whose
        evaluation a stop interrupted) is replaced."""
        if not _all_finite(state.params):
            raise diverged_parameters(progress.step, self.latest, self.folder)
        step = progress.step
        if step in self.manager.all_steps():
            self.manager.delete(step)
        metrics = None if test_accuracy is None else {"test_accuracy": test_accuracy}
        items = {"state": ocp.args.StandardSave(state), "progress": ocp.args.JsonSave(progress.to_json())}
        if ema is not None:
            items["ema"] = ocp.args.StandardSave(ema)
        self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)
        if self.writer:
            step_folder = self.folder / str(step)
            write_json(step_folder / MANIFEST, {"files": folder_checksums(step_folder, exclude=(MANIFEST,))})
        processes.sync("checkpoint written")
        self.latest = progress.describe(self.steps_per_epoch)


def _read_manifest(step_folder: Path) -> dict:
    path = step_folder / MANIFEST
    if not path.exists():
        return {}  # finished by orbax, but the process stopped before writing the list: trust orbax
    return json.loads(path.read_text())["files"]


@jax.jit
def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.floating)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)
