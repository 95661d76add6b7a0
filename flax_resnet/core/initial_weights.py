"""The weights a training run starts from, drawn in numpy: the same start for both trainers.

Both frameworks' trainers load these (torch-layout, keyed as the state_dict), so a Flax run and
its torch twin with the same seed start from identical weights without either importing the
other. The distributions are the models' own (`flax_resnet.models.layers`, `torch_ref.models.layers`):

- conv weights: torchvision's kaiming normal (fan_out, relu), untruncated; the study notes' nets
  (d2l, mnist) keep nn.Conv2d's default, U(+-1/sqrt(fan_in));
- conv and linear biases, linear weights: torch's default, U(+-1/sqrt(fan_in));
- BatchNorm: weight 1 (0 for each block's last one with zero_init_residual), bias 0, running
  mean 0, running variance 1, num_batches_tracked 0.

Each tensor has its own generator, seeded by (seed, its key), so a tensor's values do not depend
on which other tensors the model has. Plain Python and numpy.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from flax_resnet.core.registry import MODELS

TORCH_DEFAULT_CONV_FAMILIES = ("d2l", "mnist")
_BLOCK_BN = re.compile(r"^(layer\d+\.\d+)\.bn(\d+)\.weight$")


def _generator(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def _fan_in(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape[1:])) if len(shape) > 1 else int(shape[0])


def _last_block_norms(keys) -> set[str]:
    """Each residual block's last BatchNorm weight (bn2 of a basic block, bn3 of a bottleneck)."""
    last: dict[str, tuple[int, str]] = {}
    for key in keys:
        match = _BLOCK_BN.match(key)
        if match:
            block, index = match.group(1), int(match.group(2))
            if block not in last or index > last[block][0]:
                last[block] = (index, key)
    return {key for _, key in last.values()}



def initial_state_dict(name: str, kwargs: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]],
                       seed: int) -> dict[str, np.ndarray]:
    """Initial values for every entry of a state_dict with these keys and (torch-layout) shapes.

    name, kwargs: the variant and its `create_model` arguments (for the conv initialization of
    its family and `zero_init_residual`). Floating values are float32, `num_batches_tracked` int64.
    """
    kaiming = MODELS[name].family not in TORCH_DEFAULT_CONV_FAMILIES
    zeroed = _last_block_norms(shapes) if kwargs.get("zero_init_residual") else set()
    values = {}
    for key, shape in shapes.items():
        shape = tuple(shape)
        prefix, leaf = key.rsplit(".", 1)
        normalization = f"{prefix}.running_mean" in shapes
        if leaf == "num_batches_tracked":
            value = np.zeros(shape, np.int64)
        elif leaf == "running_mean" or (normalization and leaf == "bias"):
            value = np.zeros(shape, np.float32)
        elif leaf == "running_var":
            value = np.ones(shape, np.float32)
        elif normalization and leaf == "weight":
            value = (np.zeros if key in zeroed else np.ones)(shape, np.float32)
        elif leaf == "weight" and len(shape) == 4 and kaiming:
            fan_out = shape[0] * shape[2] * shape[3]
            value = _generator(seed, key).normal(0.0, np.sqrt(2.0 / fan_out), shape)
        elif leaf in ("weight", "bias"):
            weight_shape = shape if leaf == "weight" else tuple(shapes[f"{prefix}.weight"])
            bound = 1.0 / np.sqrt(_fan_in(weight_shape))
            value = _generator(seed, key).uniform(-bound, bound, shape)
        else:
            raise ValueError(f"no initialization rule for {key} of shape {shape}")
        values[key] = np.asarray(value, np.int64 if leaf == "num_batches_tracked" else np.float32)
    return values
