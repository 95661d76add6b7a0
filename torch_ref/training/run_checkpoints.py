"""The torch trainer's checkpoints: the twin of `flax_resnet.training.run_checkpoints`.

    checkpoints/step_<N>.pt     model state_dict, optimizer state and any partly accumulated gradient
    checkpoints/step_<N>.json   the run's Progress, and the .pt file's size and CRC-32

Both files are written under temporary names and renamed; the .json comes last, so a checkpoint
counts only once it is complete, and a process killed mid-write leaves nothing that looks complete
(the leftovers are removed at the next start). A .pt damaged later (torch.load reads garbled
tensors without noticing) fails its CRC-32: the checkpoint is set aside in damaged-checkpoints/
with a warning and the one before it is used. Files are read with weights_only=True.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch

from flax_resnet.core.files import atomic_file, checksum_problem, file_checksum, write_json
from flax_resnet.core.run.progress import DAMAGED_FOLDER, Progress, diverged_parameters, newest_intact
from flax_resnet.core.run.workdir import Workdir
from torch_ref.training.optim import load_optimizer_state

PATTERN = re.compile(r"^step_(\d+)\.json$")


class RunCheckpoints:
    """The checkpoints of one run folder: the latest `keep` and the epoch-end one with the best test accuracy."""

    def __init__(self, workdir: Workdir, keep: int, *, steps_per_epoch: int, warn: Callable[[str], None]):
        self.folder = workdir.checkpoints_path.absolute()
        self.damaged_folder = workdir.path.absolute() / DAMAGED_FOLDER
        self.metrics = workdir.metrics_path
        self.keep, self.steps_per_epoch, self.warn = keep, steps_per_epoch, warn
        self.latest: str | None = None  # where the newest checkpoint written or restored stands
        self._remove_leftovers()

    def __enter__(self) -> RunCheckpoints:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first."""
        if not self.folder.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.folder.iterdir() if (m := PATTERN.match(p.name)))

    def _paths(self, step: int) -> tuple[Path, Path]:
        return self.folder / f"step_{step:08d}.pt", self.folder / f"step_{step:08d}.json"

    def _remove_leftovers(self) -> None:
        """Temporary files and .pt files without their .json: checkpoints whose writing was killed."""
        if not self.folder.is_dir():
            return
        complete = {self._paths(step)[0].name for step in self.steps()}
        for path in self.folder.iterdir():
            if (path.name.endswith(".tmp") and path.name.startswith(".step_")) or \
                    (path.suffix == ".pt" and path.name not in complete):
                path.unlink()

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, ema=None) -> Progress:
        """Load the newest intact checkpoint into `model`, `optimizer` (and `ema`, the moving average
        of the weights, when the run keeps one) and return its Progress (a fresh one if there is
        none). Raises UnreadableCheckpoints if none can be read."""
        progress = newest_intact(self.steps(), lambda step: self._read(step, model, optimizer, ema),
                                 where=lambda step: str(self._paths(step)[0]),
                                 describe=lambda progress: progress.describe(self.steps_per_epoch), warn=self.warn,
                                 set_aside=self._set_aside, folder=self.folder, metrics=self.metrics)
        if progress is None:
            return Progress()
        self.latest = progress.describe(self.steps_per_epoch)
        return progress

    def _read(self, step: int, model, optimizer, ema) -> tuple[Progress | None, str | None]:
        weights, record = self._paths(step)
        try:
            saved = json.loads(record.read_text())
            progress = Progress.from_json(saved["progress"])
            problem = checksum_problem(self.folder, {weights.name: saved["file"]})
        except (OSError, ValueError, KeyError, TypeError) as error:
            return None, f"{record.name} is unreadable ({error})"
        if problem is not None:
            return None, problem
        if progress.step != step:
            return None, f"it says it is at step {progress.step}"
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            model.load_state_dict(state["model"], strict=True)
            load_optimizer_state(optimizer, state["optimizer"])
            if ema is not None:
                ema.load_state_dict(state["model_ema"], strict=True)
            parameters = dict(model.named_parameters())
            for name, parameter in parameters.items():
                parameter.grad = state["grads"][name].clone() if name in state["grads"] else None
        except Exception as error:  # noqa: BLE001 - unpickling and loading raise many kinds for bad files
            return None, f"torch cannot load it ({str(error).strip().splitlines()[0][:200]})"
        return progress, None

    def _set_aside(self, steps: list[int]) -> None:
        self.damaged_folder.mkdir(exist_ok=True)
        for step in steps:
            for path in reversed(self._paths(step)):  # the .json first: the pair stops counting at once
                if path.exists():
                    os.rename(path, self.damaged_folder / path.name)
            self.warn(f"moved the damaged checkpoint {step} to {self.damaged_folder}")

    def save(self, model, optimizer, progress: Progress, *, test_accuracy: float | None = None, ema=None) -> None:
        """Checkpoint the model, optimizer, accumulated gradients (and `ema`, if given) at `progress`
        (an epoch end when `test_accuracy` is given), then drop the checkpoints no longer kept."""
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            raise diverged_parameters(progress.step, self.latest, self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        weights, record = self._paths(progress.step)
        record.unlink(missing_ok=True)  # a checkpoint at the same step (an interrupted evaluation) is replaced
        grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
        buffer = io.BytesIO()
        saved = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "grads": grads}
        if ema is not None:
            saved["model_ema"] = ema.state_dict()  # as torchvision's checkpoint['model_ema']
        torch.save(saved, buffer)
        with atomic_file(weights) as temporary:
            Path(temporary).write_bytes(buffer.getbuffer())
        write_json(record, {"progress": progress.to_json(), "file": file_checksum(weights),
                            "test_accuracy": test_accuracy})
        self.latest = progress.describe(self.steps_per_epoch)
        self._prune()

    def _prune(self) -> None:
        steps = self.steps()
        accuracies = {}
        for step in steps:
            try:
                accuracies[step] = json.loads(self._paths(step)[1].read_text()).get("test_accuracy")
            except (OSError, ValueError):
                accuracies[step] = None
        with_accuracy = [step for step in steps if accuracies[step] is not None]
        kept = set(steps[-self.keep:])
        if with_accuracy:
            kept.add(max(with_accuracy, key=lambda step: (accuracies[step], -step)))
        for step in steps:
            if step not in kept:
                for path in reversed(self._paths(step)):
                    path.unlink(missing_ok=True)
