"""Each framework's half of a role, loaded by name, and what that half must provide.

The neutral core drives training, evaluation and the studies; the JAX or torch code that does the
numerical work is imported only when a run asks for that framework, so importing the core imports
neither. One table says where every half lives; a `Protocol` per role says what it provides.

    backend(framework)           a TrainerBackend for `core.run.skeleton.run`
    module(role, framework)      the module playing `role` (a key of MODULES) for that framework
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any, Protocol

from flax_resnet.core.files import InputError

FRAMEWORKS = ("flax", "torch")

# role -> framework -> module. The roles:
#   trainer        a `Backend` class: the framework's half of a training run
#   predictor      `eval_pixels(spec)` and `Predictor(name, kwargs, state_dict)`: evaluation's logits
#   weights        reading weights people have (`read_source`, `resolve_variant`), in twin keys
#   fine_tuning    the weights a fine-tuning run starts from (`open_source`, `starting_state`)
#   pretrained     catalog weights by name (`from_pretrained`, `logits`): what predict.py runs
#   gradient_flow  `initial_model`, `model_gradient_norms`: the vanishing-gradient study
#   benchmark      timed train and eval steps (`contestants`)
#   loader         the torchvision DataLoader the loader benchmark measures against
MODULES: Mapping[str, Mapping[str, str]] = {
    "trainer": {"flax": "flax_resnet.training.loop", "torch": "torch_ref.training.loop"},
    "predictor": {"flax": "flax_resnet.evaluation.predict", "torch": "torch_ref.evaluation.predict"},
    "weights": {"flax": "flax_resnet.porting.sources"},
    "fine_tuning": {"flax": "flax_resnet.porting.fine_tune"},
    "pretrained": {"flax": "flax_resnet.pretrained", "torch": "torch_ref.pretrained"},
    "gradient_flow": {"flax": "flax_resnet.studies.gradient_flow", "torch": "torch_ref.studies.gradient_flow"},
    "benchmark": {"flax": "flax_resnet.studies.benchmark", "torch": "torch_ref.studies.benchmark"},
    "loader": {"torch": "torch_ref.studies.data_loading"},
}


class UnknownFramework(InputError):
    """A framework or role name that has no module; the message lists the valid ones."""


def module(role: str, framework: str = "flax") -> ModuleType:
    """The module that plays `role` for `framework`, imported now."""
    if role not in MODULES:
        raise UnknownFramework(f"no role {role!r}; the roles are {', '.join(MODULES)}")
    halves = MODULES[role]
    if framework not in halves:
        closest = difflib.get_close_matches(framework, list(halves), n=len(halves), cutoff=0.0)
        raise UnknownFramework(f"no {role} for framework {framework!r}; choose from {', '.join(closest)}")
    return importlib.import_module(halves[framework])


def backend(framework: str) -> TrainerBackend:
    """A fresh TrainerBackend of `framework` ('flax' or 'torch')."""
    return module("trainer", framework).Backend()


class TrainerBackend(Protocol):
    """A framework's half of a training run. `core.run.skeleton.run` calls these in this order:

    start -> state_shapes -> build_model -> build_optimizer -> checkpoints / stop_requests ->
    restore -> compile -> (train_epoch -> evaluate [-> evaluate_ema] -> save) per epoch -> finish
    [-> ema_state_dict]. The bracketed calls come only with config.model_ema.
    """

    framework: str
    num_devices: int  # over every process
    is_main: bool  # the process that writes the run folder and prints
    shard: Any  # the data's ProcessShard for this process

    def start(self, config) -> Any:
        """Join the other processes, pick the devices; the config with precision resolved."""

    def describe(self) -> str:
        """Where the run computes, for the opening line ('1 cpu device(s)', 'torch 2.x on cuda')."""

    def state_shapes(self, config, setup) -> dict[str, tuple[int, ...]]:
        """The model's torch-layout state_dict shapes, with nothing allocated."""

    def build_model(self, config, setup, data, initial: Mapping[str, Any] | None) -> None:
        """The model from `initial` (a numpy state_dict), or `initial_weights` drawn from the seed."""

    def build_optimizer(self, config, setup) -> Any:
        """The optimizer and the steps that use it; returns the Schedule."""

    def checkpoints(self, workdir, keep: int, *, steps_per_epoch: int, warn: Callable[[str], None]) -> Any:
        """The run's checkpoints, a context manager."""

    def stop_requests(self) -> Any:
        """SIGTERM/SIGINT watching, a context manager (`core.run.interrupts.StopRequests`)."""

    def restore(self, checkpoints) -> Any:
        """Load the newest intact checkpoint, if any; its Progress."""

    def compile(self, data) -> float | None:
        """Prepare the steps before the first epoch; seconds spent compiling, or None."""

    def train_epoch(self, data, epoch: int, resumed, *, last_good: str | None, run_dir,
                    on_step: Callable[..., None]) -> tuple[dict[str, float], float]:
        """One epoch of train steps from `resumed`'s position (None: from its start); calls
        `on_step(steps_done, totals, metrics, position)` after each. (metric sums, seconds)."""

    def evaluate(self, data) -> dict[str, float]:
        """Loss and accuracy sums over the held-out set."""

    def evaluate_ema(self, data) -> dict[str, float]:
        """`evaluate` for the moving average of the weights (config.model_ema)."""

    @property
    def step(self) -> int:
        """Train steps done."""

    def save(self, checkpoints, progress, **kwargs) -> None:
        """A checkpoint of the current state."""

    def finish(self) -> tuple[Any, dict[str, Any]]:
        """(the trained model in eval mode, its torch-layout state_dict to export)."""

    def ema_state_dict(self) -> dict[str, Any]:
        """The moving average's torch-layout state_dict to export (config.model_ema)."""
