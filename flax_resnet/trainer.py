"""`flax_resnet.trainer.train`, where earlier code finds it: `flax_resnet.core.run.skeleton.train`."""

from flax_resnet.core.plan import TrainResult
from flax_resnet.core.run.skeleton import train
from flax_resnet.core.run.workdir import TrainingDiverged

__all__ = ["TrainResult", "TrainingDiverged", "train"]
