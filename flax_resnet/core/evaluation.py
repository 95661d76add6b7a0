"""Top-1, top-5 and the loss of any weights on a dataset, in Flax, in torch, or both. Framework-neutral.

The weights are read by porting (`flax_resnet.porting.sources.open_weights`: a Flax checkpoint,
a PyTorch file, a transformers or timm directory, a run folder), the pixels made once per batch by
the eval transform, and each framework's half (`flax_resnet.evaluation.predict`,
`torch_ref.evaluation.predict`) is loaded by name, as `flax_resnet.training.train` loads a trainer.
So this module imports neither JAX nor torch, and both frameworks see the very same pixels.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from flax_resnet.core import frameworks
from flax_resnet.core.augment import AugmentSpec
from flax_resnet.core.config import ConfigError, TrainConfig
from flax_resnet.core.data import load_data

TOP_K = 5


@dataclasses.dataclass(frozen=True)
class EvalRequest:
    """What to evaluate. Unset preprocessing comes from the weights' record (timm's pretrained_cfg,
    a run's config.json, ...), else from the data (its size; its training set's mean and std)."""

    weights: str
    dataset: str
    data_dir: str | None = None
    frameworks: tuple[str, ...] = ("flax",)
    batch_size: int = 250
    image_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    crop_pct: float | None = None
    interpolation: str | None = None
    key: str | None = None  # the entry of a saved dict holding the state_dict
    model: str | None = None  # the variant, when the weights cannot tell
    model_options: dict = dataclasses.field(default_factory=dict)
    progress: bool = True
    workers: int | None = None  # streamed data: loader processes (None: one per core)


def evaluate(request: EvalRequest, log=print) -> dict[str, Any]:
    """The report: {'weights', 'model', 'model_kwargs', 'dataset', 'images', 'preprocessing',
    'flax' / 'torch': {'top1', 'top5', 'loss'}, with both frameworks 'top1_agreement' and
    'logits_relative_difference', and 'seconds'}.

    Raises InputError (one line): ConfigError for settings that cannot be evaluated, SourceError for
    weights that cannot be read, DataError for an unreadable dataset.
    """
    unknown = [name for name in request.frameworks if name not in frameworks.FRAMEWORKS]
    if unknown or not request.frameworks:
        raise ConfigError(f"unknown framework {', '.join(unknown) or '(none)'}; choose from flax, torch")
    started = time.perf_counter()
    weights = _open_weights(request)
    for note in weights.notes:
        log(note)
    name, kwargs = weights.variant.name, weights.variant.kwargs
    recorded = weights.source.preprocessing or _NO_PREPROCESSING
    data = load_data(data_config(request, name, kwargs, recorded))
    channels = data.image_shape[2]
    if kwargs["in_channels"] != channels or kwargs["num_classes"] != data.num_classes:
        raise ConfigError(f"{request.weights} is a {name} for {kwargs['in_channels']}-channel images and "
                          f"{kwargs['num_classes']} classes; {data.name} has {channels} channel(s) and "
                          f"{data.num_classes} classes (fine-tune it with scripts/train.py --init-from)")
    spec = eval_spec(request, recorded, data)
    log(f"eval transform: {describe_eval(spec, data)}; {data.test_count} test images of {data.name}")
    pixels_of = frameworks.module("predictor", "flax").eval_pixels(spec)
    predictors = {framework: frameworks.module("predictor", framework).Predictor(name, kwargs, weights.state_dict)
                  for framework in request.frameworks}
    totals = {framework: Totals() for framework in predictors}
    largest_difference = largest_logit = 0.0
    from tqdm.auto import tqdm

    try:
        with data.eval_batches(request.batch_size) as batches:
            for batch in tqdm(batches, total=len(batches), desc="evaluate", unit="batch",
                              disable=not request.progress, dynamic_ncols=True):
                pixels = pixels_of(batch["image"])
                logits = {framework: predictor.logits(pixels) for framework, predictor in predictors.items()}
                for framework, values in logits.items():
                    totals[framework].add(values, batch["label"], batch["mask"])
                if len(logits) == 2:
                    rows = batch["mask"] > 0
                    first, second = (logits[f][rows].astype(np.float64) for f in request.frameworks)
                    largest_difference = max(largest_difference, float(np.abs(first - second).max()))
                    largest_logit = max(largest_logit, float(np.abs(second).max()))
    finally:
        data.close()  # a streamed set's loader workers
    report = {"weights": request.weights, "model": name, "model_kwargs": kwargs, "dataset": data.name,
              "images": int(data.test_count), "preprocessing": dataclasses.asdict(spec)}
    for framework, total in totals.items():
        report[framework] = total.metrics()
    if len(totals) == 2:
        first, second = (np.concatenate(totals[f].predictions) for f in request.frameworks)
        report["top1_agreement"] = float(np.mean(first == second))
        # max |flax - torch| / max |torch| over every logit: near 1e-6 for a faithful port.
        report["logits_relative_difference"] = largest_difference / max(largest_logit, 1e-30)
    report["seconds"] = round(time.perf_counter() - started, 2)
    return report


class Totals:
    """Running sums over the batches: loss, top-1 and top-k hits, and every top-1 prediction."""

    def __init__(self):
        self.loss = self.top1 = self.top5 = self.count = 0.0
        self.predictions: list[np.ndarray] = []

    def add(self, logits: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> None:
        logits = logits.astype(np.float64)
        shifted = logits - logits.max(-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        keep = mask > 0
        rows = np.flatnonzero(keep)
        self.loss += float(-log_probs[rows, labels[rows]].sum())
        ranked = np.argsort(-logits, axis=-1, kind="stable")[:, :TOP_K]
        self.top1 += float((ranked[rows, 0] == labels[rows]).sum())
        self.top5 += float((ranked[rows] == labels[rows, None]).any(-1).sum())
        self.count += float(keep.sum())
        self.predictions.append(ranked[rows, 0])

    def metrics(self) -> dict[str, float]:
        return {"top1": self.top1 / self.count, "top5": self.top5 / self.count, "loss": self.loss / self.count}


def data_config(request: EvalRequest, name: str, kwargs, recorded) -> TrainConfig:
    """The data settings of an evaluation: a streamed set is resized and cropped on the host, as the
    weights' own transform says (else as training's eval transform does)."""
    options = {key: value for key, value in kwargs.items() if key not in ("num_classes", "in_channels")}
    crop = request.crop_pct if request.crop_pct is not None else recorded.crop_pct
    return TrainConfig(dataset=request.dataset, data_dir=request.data_dir, model=name, model_options=options,
                       image_size=request.image_size or recorded.input_size,
                       eval_crop_fraction=crop or TrainConfig.eval_crop_fraction, workers=request.workers,
                       interpolation=_interpolation(request, recorded))


def _interpolation(request: EvalRequest, recorded) -> str:
    interpolation = request.interpolation or recorded.interpolation or "bilinear"
    # timm's rarer choices ('nearest', 'random') fall back to bilinear
    return interpolation if interpolation in ("bilinear", "bicubic") else "bilinear"


def eval_spec(request: EvalRequest, recorded, data) -> AugmentSpec:
    """The device's part of the eval transform: the request's settings, else the weights' recorded
    ones, else the data's. Streamed images arrive resized and cropped; only normalization is left."""
    channels = data.image_shape[2]
    mean, std = request.mean, request.std
    if mean is None and recorded.mean is not None and len(recorded.mean) == channels:
        mean, std = recorded.mean, recorded.std
    if mean is None:
        mean, std, _ = data.normalization()
    if len(mean) != channels or len(std) != channels:
        raise ConfigError(f"mean and std need {channels} value(s) for {data.name}, got {len(mean)} and {len(std)}")
    if data.streamed:
        return AugmentSpec(tuple(mean), tuple(std), 0, False, None, None, _interpolation(request, recorded))
    return AugmentSpec(tuple(mean), tuple(std), 0, False, request.image_size or recorded.input_size,
                       request.crop_pct if request.crop_pct is not None else recorded.crop_pct,
                       _interpolation(request, recorded))


class _NoPreprocessing:
    mean = std = input_size = crop_pct = interpolation = None


_NO_PREPROCESSING = _NoPreprocessing()


def describe_eval(spec: AugmentSpec, data) -> str:
    if data.streamed:
        host = data.transforms
        size, crop = f"{host.size}x{host.size}", f", centre crop of a {host.interpolation} resize to {host.resize_size}"
    else:
        size = f"{spec.image_size}x{spec.image_size}" if spec.image_size else "the images' own size"
        crop = f", centre {spec.crop_pct:g} of a {spec.interpolation} resize" if spec.crop_pct else ""
    mean = ", ".join(f"{v:.4g}" for v in spec.mean)
    std = ", ".join(f"{v:.4g}" for v in spec.std)
    return f"{size}{crop}, mean ({mean}), std ({std})"


def report_lines(report: dict[str, Any]) -> list[str]:
    """The human-readable summary printed above the JSON line."""
    lines = [f"{framework:>5}: top-1 {100 * report[framework]['top1']:.2f}%  top-5 "
             f"{100 * report[framework]['top5']:.2f}%  loss {report[framework]['loss']:.4f}"
             for framework in frameworks.FRAMEWORKS if framework in report]
    if "top1_agreement" in report:
        lines.append(f"top-1 agreement flax vs torch: {100 * report['top1_agreement']:.2f}% of "
                     f"{report['images']} images; max |flax - torch| / max |torch| over the logits "
                     f"{report['logits_relative_difference']:.1e}")
    return lines


def _open_weights(request: EvalRequest):
    sources = frameworks.module("weights")
    return sources.open_weights(request.weights, key=request.key, name=request.model, **request.model_options)
