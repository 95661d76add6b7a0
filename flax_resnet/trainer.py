"""`flax_resnet.trainer.train`, where code written before the training package finds it."""

from flax_resnet.training import train  # noqa: F401
from flax_resnet.training.loop import TrainingDiverged, TrainResult  # noqa: F401

__all__ = ["TrainResult", "TrainingDiverged", "train"]
