"""Shared by the hub tests: transformers' and timm's own models with random weights and randomized
BatchNorm statistics, saved the way those libraries save them, and a small trained run."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import torch

from parity_tests.helpers.twins import (
    as_float64,  # noqa: F401 - the hub tests' float64 copies
    randomize_batchnorm,
)

# transformers' ResNetConfig for each registered net it can express.
TRANSFORMERS_CONFIGS = {
    "resnet18": dict(layer_type="basic", depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512]),
    "resnet50": dict(layer_type="bottleneck", depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048]),
}


def transformers_model(name: str, *, num_labels: int = 7, headless: bool = False, seed: int = 0, **config):
    """transformers' ResNetForImageClassification (or ResNetModel) of `name`, eval mode, random BN."""
    from transformers import ResNetConfig, ResNetForImageClassification, ResNetModel

    torch.manual_seed(seed)
    settings = {**TRANSFORMERS_CONFIGS[name], **config}
    if headless:
        model = ResNetModel(ResNetConfig(**settings))
    else:
        model = ResNetForImageClassification(ResNetConfig(**settings, num_labels=num_labels))
    randomize_batchnorm(model, seed)
    return model.eval()


def save_pretrained(model, path) -> None:
    from transformers.utils import logging

    logging.disable_progress_bar()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(path)


def timm_model(name: str, *, num_classes: int = 7, seed: int = 0):
    """timm's own `name`, eval mode, random weights and BN statistics."""
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    randomize_batchnorm(model, seed)
    return model.eval()


def save_for_hf(model, path) -> None:
    """timm's hub format: config.json (with pretrained_cfg) beside model.safetensors."""
    import timm

    timm.models.save_for_hf(model, str(path), safe_serialization=True)


def torch_float64(model):
    return copy.deepcopy(model).double()


def numpy_state(model) -> dict[str, np.ndarray]:
    return {key: value.detach().numpy().copy() for key, value in model.state_dict().items()}



def make_trained_run(folder):
    """mnist_resnet trained for one epoch on the embedded digits (Flax), in `folder`: a run to start
    from. Returns (folder, its last metrics record)."""
    from flax_resnet.core.config import TrainConfig
    from flax_resnet.training import train

    result = train(TrainConfig(model="mnist_resnet", epochs=1, workdir=str(folder), progress=False))
    return folder, result.history[-1]
