"""Datasets for training, by name; both trainers read them through `TrainingData` (`base`).

- `memory`: small fixed-size sets decoded once into uint8 arrays (embedded MNIST, torchvision
  folders, fixed-size tfds datasets).
- `loader`: streamed sets, decoded and cropped by grain workers as training reads them
  (`imagefolder` trees, tfds datasets of varying image size), with torchvision's `transforms`.
"""

from flax_resnet.core.data.base import Batches, EpochBatches, ProcessShard, TrainingData
from flax_resnet.core.data.common import EMBEDDED_MNIST, IMAGEFOLDER, TORCHVISION_NAMES, DataError
from flax_resnet.core.data.memory import Dataset, load_dataset
from flax_resnet.core.data.select import load_data

__all__ = ["EMBEDDED_MNIST", "IMAGEFOLDER", "TORCHVISION_NAMES", "Batches", "DataError", "Dataset", "EpochBatches",
           "ProcessShard", "TrainingData", "load_data", "load_dataset"]
