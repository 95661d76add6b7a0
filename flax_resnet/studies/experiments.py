"""Comparisons: several models trained under identical settings, and what the seeds set out to show.

    presets -> one TrainConfig per model -> for each model: gradient norms at initialization ->
    train (its own subfolder) -> gradient norms at the end -> the comparison files:

    summary.json     {"models": {name: {train_loss, train_accuracy, test_loss, test_accuracy, params, seconds}}}
    summary.md       the same as a table, the settings, and the gradient flow in numbers
    comparison.png   train loss and test accuracy per epoch, every model overlaid
    grad_norms.json  the gradient norm of every layer, input to output, at initialization and at the end
    grad_norms.png   the same on a log scale, plain nets dashed: vanishing gradients show as a slope

Identical settings means one seed (so the same data order and augmentation, and initial weights
drawn the same way), one optimizer and one schedule; only the model changes. The `seeds` preset is
the exception: each study note's model keeps its own recipe.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from flax_resnet.core import frameworks
from flax_resnet.core.config import EMBEDDED_MNIST, PRESETS, ConfigError, TrainConfig, config_from_args
from flax_resnet.core.data import Dataset, load_dataset
from flax_resnet.core.files import atomic_file, write_json
from flax_resnet.core.plan import prepare_run
from flax_resnet.core.registry import MODELS, OPTION_CHOICES, accepted_options
from flax_resnet.core.run.workdir import Workdir
from flax_resnet.training import train
from flax_resnet.training.device_transforms import eval_transform

SUMMARY_KEYS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "params", "seconds")


# ---------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Experiment:
    """A named comparison. `settings` are the full-size run's shared TrainConfig values (command-line
    names, model options included); `model_settings` are one model's own, applied after them;
    `embedded_settings` shrink the run to a few minutes of CPU when the dataset is the embedded
    MNIST digits (the offline default). Flags given on the command line override all three."""

    description: str
    models: tuple[str, ...]
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    model_settings: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    embedded_settings: dict[str, Any] = dataclasses.field(default_factory=dict)


def _recipe(name: str, *, keep_dataset: bool = False) -> dict[str, Any]:
    """A training preset of config.py as settings: without its model (and dataset, unless kept)."""
    values = dict(PRESETS[name])
    values.pop("model", None)
    if not keep_dataset:
        values.pop("dataset", None)
    options = values.pop("model_options", {})
    return {**values, **options}


# On a 2-core CPU, 16x16 digits cost a third of 28x28 ones; batch 64 with lr 0.05 keeps He et al.'s
# ratio of learning rate to batch size while giving a short run twice the steps, and the warmup
# keeps the deep nets' first steps from blowing up. Crop and flip go back to the automatic choice
# for digits (1 pixel, no flips), whatever a colour-image recipe says.
_CPU_SIZED = dict(image_size=16, batch_size=64, lr=0.05, warmup_epochs=0.5, schedule="cosine", milestones=None,
                  crop_padding=None, flip=None)

EXPERIMENTS: dict[str, Experiment] = {
    "degradation": Experiment(
        "He et al. 2015, Fig. 6: plain vs residual CIFAR nets, 20 and 56 layers",
        ("plain20", "plain56", "resnet20", "resnet56"),
        # He et al.: batch 128, lr 0.1 divided by 10 at 50% and 75% of the 164 epochs (epochs 82
        # and 123); milestones=None keeps those fractions when --epochs changes.
        settings={**_recipe("he2015_cifar"), "milestones": None},
        embedded_settings=dict(_CPU_SIZED, epochs=3),
    ),
    "blocks": Experiment(
        "seed 003: ResNet-18 without and with shortcuts, the bottleneck ResNet-50, pre-activation",
        ("plain18", "resnet18", "resnet50", "preact_resnet18"),
        # The CIFAR-style stem (3x3/1, no max-pool) usual for ResNet-18 on CIFAR-10; seed 003's 100 epochs.
        settings=dict(stem="cifar", optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4,
                      batch_size=128, schedule="cosine", epochs=100),
        # Full-size digits: XLA's CPU convs ran these wide nets 3x slower per step at 16x16 than at 28x28.
        embedded_settings=dict(_CPU_SIZED, image_size=None, epochs=1),
    ),
    "seeds": Experiment(
        "the study notes' own models, each with its own recipe",
        ("mnist_resnet", "d2l_resnet18"),
        model_settings={"mnist_resnet": _recipe("seed001"), "d2l_resnet18": _recipe("d2l")},
        embedded_settings=dict(epochs=1),
    ),
}


def comparison_configs(models: list[str] | None, explicit: dict[str, Any], *, experiment: str | None = None,
                       recipe: str | None = None) -> tuple[Path, dict[str, TrainConfig]]:
    """(comparison folder, {model: TrainConfig}) for a comparison.

    models: the names to compare (default: the experiment's). explicit: the settings given on the
    command line, by TrainConfig name or model-option name. Precedence, lowest first: TrainConfig
    defaults, the experiment's shared settings, `recipe` (a training preset of config.py, without
    its model), the experiment's per-model settings, its embedded-data settings (only when the
    dataset is the embedded one), `explicit`. A model option (stem, maxpool, ...) goes to the
    models that take it. Each model trains in <folder>/<model>. Raises ConfigError.
    """
    explicit = dict(explicit)
    if "model" in explicit:
        raise ConfigError("give the models to compare with --models NAME,NAME,... (not --model)")
    if experiment is not None and experiment not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {experiment!r}; choose from {', '.join(EXPERIMENTS)}")
    preset = EXPERIMENTS[experiment] if experiment else Experiment("", ())
    names = list(models) if models else list(preset.models)
    if not names:
        raise ConfigError("nothing to compare: give --models NAME,NAME,... or --preset "
                          f"({', '.join(EXPERIMENTS)})")
    unknown = [name for name in names if name not in MODELS]
    if unknown:
        raise ConfigError(f"unknown model(s) {', '.join(unknown)}; valid models: {', '.join(MODELS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"a model is listed twice in {','.join(names)}")
    if recipe is not None and recipe not in PRESETS:
        raise ConfigError(f"unknown recipe {recipe!r}; choose from {', '.join(PRESETS)}")
    for key in OPTION_CHOICES:
        if key in explicit and not any(key in accepted_options(MODELS[name]) for name in names):
            raise ConfigError(f"none of {', '.join(names)} takes the model option {key}")
    root = explicit.pop("workdir", None)
    recipe_values = _recipe(recipe, keep_dataset=True) if recipe else {}

    configs = {}
    for name in names:
        values = {**preset.settings, **recipe_values, **preset.model_settings.get(name, {})}
        if {**values, **explicit}.get("dataset", EMBEDDED_MNIST) == EMBEDDED_MNIST:
            values.update(preset.embedded_settings)
        values.update(explicit)
        values = {key: value for key, value in values.items()
                  if key not in OPTION_CHOICES or key in accepted_options(MODELS[name])}
        configs[name] = config_from_args(argparse.Namespace(**values, model=name), user_given=explicit)
    first = next(iter(configs.values()))
    if root is None:
        label = experiment or "models"
        root = Path("runs") / f"compare-{label}-{first.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    root = Path(root)
    configs = {name: dataclasses.replace(config, workdir=str(root / name)) for name, config in configs.items()}
    return root, configs


def gradient_batch(data: Dataset, augment, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The batch the gradient norms are measured on: the first `batch_size` training images,
    normalized and resized as in training but not augmented (NHWC float32, int32 labels)."""
    count = min(batch_size, len(data.train_labels))
    return np.asarray(eval_transform(data.train_images[:count], augment)), data.train_labels[:count]


# ---------------------------------------------------------------------------------------------
# Running a comparison
# ---------------------------------------------------------------------------------------------

def gradient_flow(framework: str):
    """The module that measures gradient flow in `framework`: `flax_resnet.studies.gradient_flow`
    or its twin `torch_ref.studies.gradient_flow` (each offers initial_model, model_gradient_norms
    and count_parameters)."""
    return frameworks.module("gradient_flow", framework)


def compare(configs: dict[str, TrainConfig], root: str | Path, *, title: str = "") -> dict[str, Any]:
    """Train every config in turn (each in its own workdir) and write the comparison files into
    `root`, updated after each model, so an interrupted comparison keeps what it finished.
    Re-running with the same folder resumes each model's run. Returns the summary.

    Raises what `trainer.train` raises (ConfigError, DataError, TrainingDiverged).
    """
    # Every model is checked against its data and its folder, and its starting gradients measured,
    # before any training: a model that cannot run fails in seconds, not after the others trained.
    datasets: dict[tuple, Dataset] = {}
    batches, initial = {}, {}
    for name, config in configs.items():
        print(f"gradients of {name} at initialization", flush=True)
        Workdir.open(config)  # refuses a folder that holds a run with other settings
        key = (config.dataset, config.data_dir)
        if key not in datasets:
            datasets[key] = load_dataset(config.dataset, config.data_dir)
        data = datasets[key]
        setup = prepare_run(config, data)
        batches[name] = gradient_batch(data, setup.augment, config.batch_size)
        framework = gradient_flow(config.framework)
        initial[name] = framework.model_gradient_norms(framework.initial_model(config, setup, data),
                                                       *batches[name])
    datasets.clear()

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"models": {}}
    flow: dict[str, Any] = {"layer": "conv and linear weights, in the order the forward pass reads them",
                            "norm": "L2 norm of d(mean cross-entropy)/d(weight) on one training batch "
                                    "(not augmented), BatchNorm in training mode",
                            "models": {}}
    histories: dict[str, list[dict]] = {}
    for index, (name, config) in enumerate(configs.items(), 1):
        print(f"[{index}/{len(configs)}] {name} -> {config.workdir}", flush=True)
        result = train(config)
        framework = gradient_flow(config.framework)
        final = framework.model_gradient_norms(result.model, *batches[name])
        histories[name] = result.history
        summary["models"][name] = summary_record(result.history, framework.count_parameters(result.model))
        flow["models"][name] = {"batch_images": len(batches[name][1]), "layers": list(initial[name]),
                                "initial": list(initial[name].values()),
                                "final": [final[layer] for layer in initial[name]]}
        write_outputs(root, summary, flow, histories, configs, title)
    return summary


def summary_record(history: list[dict], params: int) -> dict[str, Any]:
    """One model's line of summary.json: the last epoch's metrics, the parameter count, and the
    seconds spent training and evaluating (summed over epochs; compilation not included)."""
    last = history[-1]
    return {"train_loss": last["train_loss"], "train_accuracy": last["train_accuracy"],
            "test_loss": last["test_loss"], "test_accuracy": last["test_accuracy"], "params": params,
            "seconds": sum(record["seconds"] for record in history)}


# ---------------------------------------------------------------------------------------------
# The comparison files
# ---------------------------------------------------------------------------------------------

def write_outputs(root: Path, summary: dict, flow: dict, histories: dict[str, list[dict]],
                  configs: dict[str, TrainConfig], title: str) -> None:
    """summary.json, summary.md, comparison.png, grad_norms.json and grad_norms.png, each atomically."""
    write_json(root / "summary.json", summary)
    write_json(root / "grad_norms.json", flow)
    with atomic_file(root / "summary.md") as temporary:
        Path(temporary).write_text(summary_markdown(summary, flow, configs, title))
    plot_comparison(histories, root / "comparison.png", title)
    plot_gradient_norms(flow, root / "grad_norms.png", title)


# Settings worth a line in summary.md, in this order.
_SHOWN_SETTINGS = ("framework", "dataset", "image_size", "epochs", "batch_size", "optimizer", "lr", "momentum",
                   "weight_decay", "schedule", "milestones", "warmup_epochs", "precision", "seed", "model_options")


def describe_settings(configs: dict[str, TrainConfig]) -> list[str]:
    """'setting: value' for settings every model shares, 'setting: model=value, ...' where they differ."""
    lines = []
    for key in _SHOWN_SETTINGS:
        values = {name: getattr(config, key) for name, config in configs.items()}
        distinct = {repr(value) for value in values.values()}
        if distinct == {"None"} or distinct == {"{}"}:
            continue
        if len(distinct) == 1:
            lines.append(f"{key}: {next(iter(values.values()))}")
        else:
            lines.append(f"{key}: " + ", ".join(f"{name}={value}" for name, value in values.items()))
    return lines


def summary_markdown(summary: dict, flow: dict, configs: dict[str, TrainConfig], title: str) -> str:
    """summary.md: the settings, the results table, and the first and last layers' gradient norms."""
    lines = [f"# {title or 'Comparison'}", "", *(f"- {line}" for line in describe_settings(configs)), "",
             "| model | params | train loss | train acc | test loss | test acc | seconds |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, record in summary["models"].items():
        lines.append(f"| {name} | {record['params']:,} | {record['train_loss']:.4f} | "
                     f"{100 * record['train_accuracy']:.2f}% | {record['test_loss']:.4f} | "
                     f"{100 * record['test_accuracy']:.2f}% | {record['seconds']:.0f} |")
    lines += ["", f"Gradient norms ({flow['norm']}): the first layer (input side), the last conv layer "
                  "and the classifier, at initialization and after training:", "",
              "| model | layers | init: first | init: last conv | init: classifier | end: first | "
              "end: last conv | end: classifier |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, entry in flow["models"].items():
        cells = [f"{entry[key][index]:.3g}" for key in ("initial", "final") for index in (0, -2, -1)]
        lines.append(f"| {name} | {len(entry['layers'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _style(name: str, index: int) -> dict[str, Any]:
    """One colour per model; plain nets (no shortcuts) dashed."""
    return {"color": f"C{index % 10}", "linestyle": "-" if MODELS[name].residual else "--"}


def _save_figure(figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_file(path) as temporary:
        figure.savefig(temporary, format="png", dpi=90)
    plt.close(figure)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_comparison(histories: dict[str, list[dict]], path: Path, title: str) -> None:
    """Train loss (log scale) and test accuracy per epoch, every model overlaid."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for index, (name, history) in enumerate(histories.items()):
        epochs = [record["epoch"] for record in history]
        loss_axis.plot(epochs, [r["train_loss"] for r in history], marker="o", label=name, **_style(name, index))
        accuracy_axis.plot(epochs, [100 * r["test_accuracy"] for r in history], marker="o", label=name,
                           **_style(name, index))
    loss_axis.set_yscale("log")
    for axis, label in ((loss_axis, "train loss"), (accuracy_axis, "test accuracy (%)")):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3, which="both")
        axis.legend()
    figure.suptitle(title)
    figure.subplots_adjust(left=0.08, right=0.98, bottom=0.13, top=0.88, wspace=0.25)
    _save_figure(figure, path)


def plot_gradient_norms(flow: dict, path: Path, title: str) -> None:
    """Every layer's gradient norm, input to output, at initialization and at the end (log scale)."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for index, (name, entry) in enumerate(flow["models"].items()):
        layers = np.arange(1, len(entry["layers"]) + 1)
        for axis, key in zip(axes, ("initial", "final")):
            axis.plot(layers, entry[key], marker=".", label=name, **_style(name, index))
    for axis, label in zip(axes, ("at initialization", "after training")):
        axis.set_yscale("log")
        axis.set_title(label)
        axis.set_xlabel("layer (1 = input side; last = classifier)")
        axis.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("gradient norm")
    axes[0].legend()
    figure.suptitle(f"{title}: gradient norm per layer" if title else "gradient norm per layer")
    figure.subplots_adjust(left=0.08, right=0.98, bottom=0.13, top=0.86, wspace=0.08)
    _save_figure(figure, path)
