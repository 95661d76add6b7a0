"""Evaluation's torch half: the twin of `flax_resnet.evaluation.predict`'s Predictor.

It takes the pixels `flax_resnet.core.evaluation` prepared once for every framework.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

import torch_ref


class Predictor:
    """torch_ref's model of a variant, loaded strictly from a twin-keyed state_dict, in eval mode."""

    framework = "torch"

    def __init__(self, name: str, kwargs: Mapping, state_dict: Mapping[str, np.ndarray]):
        with torch.device("meta"):  # every tensor comes from the state_dict
            model = torch_ref.create_model(name, **kwargs)
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()},
                              strict=True, assign=True)
        self.model = model.eval()

    @torch.no_grad()
    def logits(self, pixels: np.ndarray) -> np.ndarray:
        """NHWC float32 pixels -> float32 logits."""
        images = torch.from_numpy(np.array(pixels.transpose(0, 3, 1, 2), order="C"))  # a writable copy
        return self.model(images).float().numpy()
