"""Evaluation's Flax half: a model's logits for prepared pixels. Its twin is `torch_ref.evaluation.predict`.

`flax_resnet.core.evaluation` runs the halves on the same pixels, made once by `eval_pixels`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import numpy as np
from flax import nnx

from flax_resnet.core.augment import AugmentSpec
from flax_resnet.models import model_skeleton
from flax_resnet.porting.state_dict import load_torch_state_dict
from flax_resnet.training.device_transforms import eval_transform


def eval_pixels(spec: AugmentSpec):
    """uint8 NHWC batch -> the eval transform's float32 NHWC pixels (numpy), jitted."""
    transform = jax.jit(functools.partial(eval_transform, spec=spec))
    return lambda images: np.asarray(transform(images))


class Predictor:
    """The Flax model of a variant with a twin-keyed state_dict, in eval mode, jitted."""

    framework = "flax"

    def __init__(self, name: str, kwargs: Mapping, state_dict: Mapping[str, np.ndarray]):
        model = model_skeleton(name, **kwargs)
        load_torch_state_dict(model, state_dict)
        model.eval()
        graphdef, self.state = nnx.split(model)
        self._forward = jax.jit(lambda state, images: nnx.merge(graphdef, state)(images))

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        """NHWC float32 pixels -> float32 logits, with full-precision matmuls and convolutions."""
        with jax.default_matmul_precision("highest"):
            return np.asarray(self._forward(self.state, pixels))
