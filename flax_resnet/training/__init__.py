"""The Flax trainer: jitted steps, optimizer, run checkpoints and processes (JAX code).

The run's story, shared with the torch twin, is `flax_resnet.core.run.skeleton`; `train(config)`
runs it with the backend of `config.framework` (`flax_resnet.training.loop.Backend` or
`torch_ref.training.loop.Backend`).
"""

from __future__ import annotations

from flax_resnet.core.config import TrainConfig
from flax_resnet.core.run.skeleton import train

__all__ = ["TrainConfig", "train"]
