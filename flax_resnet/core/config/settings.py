"""Every training setting, documented once: the field's metadata is the command line's help.

`setting(default, help, group, **flag)` declares a field; `core.config.command_line` turns the
fields into flags (the argparse keyword arguments in `flag`), grouped by `group`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flax_resnet.core.files import InputError

FRAMEWORKS = ("flax", "torch")
OPTIMIZERS = ("sgd", "adam", "adamw", "lamb")
SCHEDULES = ("constant", "cosine", "timm_cosine", "multistep", "onecycle")
SCHEDULE_UNITS = ("update", "epoch")
PRECISIONS = ("fp32", "bf16", "auto")
AUTO_PRECISION = "auto"  # bf16 on a GPU or TPU, fp32 on the CPU
DEVICES = ("auto", "cpu", "gpu")
INTERPOLATIONS = ("bilinear", "bicubic")
MIXUP_MODES = ("torchvision", "timm")
LOSSES = ("cross_entropy", "bce")
EMBEDDED_MNIST = "embedded_mnist"
IMAGEFOLDER = "imagefolder"
BOOLEAN = "boolean"  # flag kind: --name / --no-name


class ConfigError(InputError):
    """A setting that cannot work. The message says which and lists the valid choices."""


def setting(default: Any, help: str, group: str, *, factory=None, **flag) -> Any:
    """A TrainConfig field whose help text and flag live beside its default."""
    metadata = {"help": help, "group": group, "flag": flag}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


MODEL, TUNE, DATA, OPTIM, HARDWARE, OUTPUT = "model", "fine-tuning", "data", "optimization", "hardware", "output"
PROCESSES = "several processes (Flax; see scripts/launch.py to start them locally)"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run. The defaults are the zero-argument run: offline MNIST, a few minutes on CPU."""

    # --- what to train
    framework: str = setting("flax", "flax, or torch for the torch_ref twin (same data, optimizer and initial "
                                     "weights)", MODEL, choices=FRAMEWORKS)
    model: str | None = setting("mnist_resnet", "a registry name, e.g. mnist_resnet, resnet20, resnet18, "
                                                "d2l_resnet18 (none with --init-from: the weights' variant)",
                                MODEL, metavar="NAME")
    model_options: dict = setting(None, "create_model options (stem, maxpool, ...); flags of their own", MODEL,
                                  factory=dict)

    # --- fine-tuning
    init_from: str | None = setting(None, "start from these weights: a PyTorch file, a transformers or timm "
                                          "directory, a Flax checkpoint, a run folder or a pretrained name "
                                          "(torchvision:resnet50.IMAGENET1K_V2, hf-hub:timm/...; without "
                                          "--model: their variant)", TUNE, metavar="PATH")
    init_key: str | None = setting(None, "the entry of a saved dict that holds the state_dict, if not a usual one",
                                   TUNE, metavar="NAME")
    freeze_backbone: bool = setting(False, "train only the classifier, BatchNorm statistics frozen", TUNE,
                                    kind=BOOLEAN)
    freeze_bn: bool = setting(False, "BatchNorm uses and keeps its running statistics everywhere", TUNE,
                              kind=BOOLEAN)

    # --- data
    dataset: str = setting(EMBEDDED_MNIST, "embedded_mnist (offline), imagefolder (with --data-dir), a tfds name "
                                             "(mnist, cifar10, imagenette, imagenet2012, ...) or, with --data-dir, a "
                                             "torchvision folder", DATA, metavar="NAME")
    data_dir: str | None = setting(None, "an ImageFolder tree (DIR/train/<class>/<image>, DIR/val/...), a folder "
                                         "holding torchvision-format files (MNIST/raw, cifar-10-batches-py, ...) or "
                                         "a tfds data_dir", DATA, metavar="DIR")
    image_size: int | None = setting(None, "images are SIZE x SIZE: resized on the device for in-memory data "
                                           "(none: kept), cropped on the host for streamed data (none: 224)",
                                     DATA, type=int, metavar="SIZE")
    train_crop_size: int | None = setting(None, "streamed data: RandomResizedCrop's size when training at "
                                                "another size than evaluating (FixRes; none: image_size)", DATA,
                                          type=int, metavar="SIZE")
    val_resize_size: int | None = setting(None, "streamed data: evaluation resizes the shorter side to SIZE, then "
                                                "centre-crops image_size (none: image_size / eval_crop_fraction)",
                                          DATA, type=int, metavar="SIZE")
    crop_scale: tuple[float, float] = setting((0.08, 1.0), "streamed data: RandomResizedCrop's area range", DATA,
                                              type=float, nargs=2, metavar=("MIN", "MAX"))
    interpolation: str = setting("bilinear", "the filter of every resize (PIL's on the host, antialiased; "
                                             "JAX's on the device)", DATA, choices=INTERPOLATIONS)
    eval_crop_fraction: float = setting(0.875, "streamed data: evaluation resizes the shorter side to "
                                               "SIZE / FRACTION, then centre-crops SIZE", DATA, type=float,
                                        metavar="FRACTION")
    workers: int | None = setting(None, "streamed data: loader processes, 0 to decode in the training process "
                                        "(none: one per core)", DATA, type=int, metavar="N")
    mean: tuple[float, ...] | None = setting(None, "per-channel mean in [0, 1] units (none: measured on the "
                                                   "training set)", DATA, type=float, nargs="+")
    std: tuple[float, ...] | None = setting(None, "per-channel std (none: measured on the training set)", DATA,
                                            type=float, nargs="+")
    crop_padding: int | None = setting(None, "pad-and-random-crop pixels, 0 for none (none: size // 8 for colour "
                                             "images, size // 14 for grayscale)", DATA, type=int, metavar="PIXELS")
    auto_augment: str | None = setting(None, "torchvision's policy after the crop and flip, on the host: ta_wide "
                                             "(TrivialAugmentWide), ra (RandAugment), imagenet, cifar10 or svhn "
                                             "(AutoAugment)", DATA, metavar="NAME")
    rand_augment: str | None = setting(None, "timm's RandAugment string, e.g. rand-m7-mstd0.5-inc1, on the host",
                                       DATA, metavar="CONFIG")
    random_erase: float = setting(0.0, "torchvision's RandomErasing on the device, after normalizing: with "
                                       "probability P a box of 2-33%% of a training image's area (aspect 0.3-3.3) "
                                       "becomes 0 (0: off)", DATA, type=float, metavar="P")
    flip: bool | None = setting(None, "random horizontal flips (none: for colour images, not for digits and "
                                      "clothing)", DATA, kind=BOOLEAN)
    ra_sampler: bool = setting(False, "repeated augmentation (torchvision's RASampler): an epoch shows the "
                                      "training set's size rounded down to 256 images, ra_reps augmented copies "
                                      "of each chosen one, sharded across the processes", DATA, kind=BOOLEAN)
    ra_reps: int = setting(3, "with --ra-sampler: the copies of each image an epoch shows", DATA, type=int,
                           metavar="N")

    # --- optimization
    epochs: int = setting(15, "total epochs; re-running a finished workdir with a larger value continues it",
                          OPTIM, type=int)
    batch_size: int = setting(64, "images per step, over all devices (per micro-step with grad_accum)", OPTIM,
                              type=int)
    optimizer: str = setting("sgd", "sgd (momentum, optional nesterov), adam, adamw, or lamb (timm's Lamb: "
                                    "global gradient clipping at norm 1, layer-wise trust ratios)", OPTIM,
                             choices=OPTIMIZERS)
    lr: float = setting(0.05, "peak learning rate", OPTIM, type=float)
    momentum: float = setting(0.9, "sgd momentum (0 for plain sgd); ignored by adam and adamw", OPTIM, type=float)
    nesterov: bool = setting(False, "sgd with Nesterov momentum", OPTIM, kind=BOOLEAN)
    weight_decay: float = setting(5e-4, "sgd/adam: L2 added to the gradient as torch does; adamw: decoupled",
                                  OPTIM, type=float)
    norm_weight_decay: float | None = setting(None, "weight decay of the norm layers' weights and biases (none: "
                                                    "--weight-decay), as torchvision's --norm-weight-decay", OPTIM,
                                              type=float, metavar="DECAY")
    bias_weight_decay: float | None = setting(None, "weight decay of every bias, the norm layers' too (none: as "
                                                    "the rest), as torchvision's --bias-weight-decay", OPTIM,
                                              type=float, metavar="DECAY")
    schedule: str = setting("cosine", "constant, cosine (after warmup), timm_cosine (timm's CosineLRScheduler: "
                                      "from the first epoch, the warmup in place of its start), multistep, or "
                                      "onecycle: torch's OneCycleLR, which cycles momentum (sgd) or beta1 (adam, "
                                      "adamw) between 0.95 and 0.85 in place of --momentum", OPTIM,
                            choices=SCHEDULES)
    schedule_unit: str = setting("update", "update: the lr moves every optimizer update; epoch: once an epoch, as "
                                           "torchvision's and timm's reference scripts step their schedulers (whole "
                                           "warmup epochs and milestones)", OPTIM, choices=SCHEDULE_UNITS)
    warmup_epochs: float = setting(0.0, "linear warmup epochs (all but onecycle)", OPTIM, type=float)
    warmup_start: float = setting(0.0, "the warmup's first lr as a fraction of --lr, rising linearly to it "
                                       "(torchvision's --lr-warmup-decay; 0 in the limit of torch's LinearLR)",
                                  OPTIM, type=float, metavar="FRACTION")
    milestones: tuple[float, ...] | None = setting(None, "multistep: epochs where lr *= gamma (none: 50%% and 75%% "
                                                         "of the epochs)", OPTIM, type=float, nargs="+")
    gamma: float = setting(0.1, "multistep decay factor", OPTIM, type=float)
    label_smoothing: float = setting(0.0, "as torch's CrossEntropyLoss(label_smoothing=...)", OPTIM, type=float)
    mixup_alpha: float = setting(0.0, "MixUp with lambda ~ Beta(ALPHA, ALPHA) (0: off); with --cutmix-alpha, one of "
                                      "the two per batch", OPTIM, type=float, metavar="ALPHA")
    cutmix_alpha: float = setting(0.0, "CutMix with lambda ~ Beta(ALPHA, ALPHA) (0: off)", OPTIM, type=float,
                                  metavar="ALPHA")
    mixup_mode: str = setting("torchvision", "torchvision: its reference's RandomChoice of MixUp and CutMix, the "
                                             "partner the batch rolled by one; timm: its Mixup (switch prob 0.5, "
                                             "the flipped batch, label smoothing inside the mixed targets)", OPTIM,
                              choices=MIXUP_MODES)
    loss: str = setting("cross_entropy", "cross_entropy (torch's, over soft targets when mixing) or bce (timm's "
                                         "BinaryCrossEntropy)", OPTIM, choices=LOSSES)
    bce_target_threshold: float | None = setting(None, "bce: targets above it become 1, the rest 0 (timm's "
                                                       "target_threshold; none: kept)", OPTIM, type=float,
                                                 metavar="T")
    model_ema: bool = setting(False, "keep an exponential moving average of the weights and BatchNorm buffers, "
                                     "evaluated every epoch beside the model and exported as model_ema.safetensors "
                                     "(torchvision's --model-ema)", OPTIM, kind=BOOLEAN)
    model_ema_steps: int = setting(32, "update the average every STEPS train steps of an epoch", OPTIM, type=int,
                                   metavar="STEPS")
    model_ema_decay: float = setting(0.99998, "the average's decay per image seen, adjusted as torchvision's for "
                                              "the batch size, --model-ema-steps and the epochs", OPTIM, type=float,
                                     metavar="DECAY")
    drop_path_rate: float = setting(0.0, "stochastic depth (timm's ResNet): in training, block i of n skips its "
                                         "residual branch for an image with probability RATE * i / (n - 1) (0: off; "
                                         "residual nets only)", OPTIM, type=float, metavar="RATE")
    grad_accum: int = setting(1, "micro-steps whose mean gradient makes one optimizer update", OPTIM, type=int)
    precision: str = setting("fp32", "bf16: bfloat16 compute, parameters, optimizer state and BN statistics stay "
                                     "fp32; auto: bf16 on a GPU or TPU, fp32 on the CPU", OPTIM, choices=PRECISIONS)
    seed: int = setting(0, "initial weights, data order and augmentation all follow from it", OPTIM, type=int)

    # --- hardware
    device: str = setting("auto", "auto (an NVIDIA GPU if the framework sees one), cpu or gpu to insist",
                          HARDWARE, choices=DEVICES)
    tf32: bool = setting(False, "TF32 for float32 matmuls and convolutions on NVIDIA GPUs (Ampere+), in both "
                                "frameworks (off: float32 is float32)", HARDWARE, kind=BOOLEAN)

    # --- output
    workdir: str | None = setting(None, "run folder (none: runs/<framework>-<model>-<dataset>-<time>); an existing "
                                        "run there resumes", OUTPUT, metavar="DIR")
    eval_batch_size: int = setting(500, "images per evaluation step", OUTPUT, type=int)
    keep_checkpoints: int = setting(3, "latest checkpoints to keep besides the best", OUTPUT, type=int)
    checkpoint_every: int = setting(0, "also checkpoint every STEPS train steps, so a killed run loses at most that "
                                       "many (0: at epoch ends only)", OUTPUT, type=int, metavar="STEPS")
    progress: bool = setting(True, "a progress bar per epoch", OUTPUT, kind=BOOLEAN)

    # --- several processes (one per host, or per GPU); the Flax trainer only
    distributed: bool = setting(False, "call jax.distributed.initialize() with what the cluster (SLURM, Open MPI, "
                                       "Kubernetes, Cloud TPU) says", PROCESSES, kind=BOOLEAN)
    coordinator_address: str | None = setting(None, "HOST:PORT where process 0 coordinates the run, with "
                                                    "num_processes and process_id", PROCESSES, metavar="HOST:PORT")
    num_processes: int | None = setting(None, "processes in the run", PROCESSES, type=int, metavar="N")
    process_id: int | None = setting(None, "this process's index, 0 .. N-1", PROCESSES, type=int, metavar="I")

    @property
    def mixing(self) -> bool:
        """Whether batches are mixed: MixUp or CutMix is on."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

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


# Settings that may differ between a run and its resumption (the rest must match).
RESUMABLE_CHANGES = ("epochs", "workdir", "progress", "distributed", "eval_batch_size", "keep_checkpoints",
                     "lr", "schedule", "schedule_unit", "warmup_epochs", "warmup_start", "milestones", "gamma",
                     "weight_decay", "label_smoothing", "data_dir", "nesterov", "workers", "checkpoint_every",
                     "coordinator_address", "num_processes", "process_id", "device", "tf32")
# Settings that say how a run is started, not what it computes: no notice when they change.
LAUNCH_SETTINGS = ("workdir", "progress", "distributed", "coordinator_address", "num_processes", "process_id")
