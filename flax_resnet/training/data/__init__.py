"""Datasets for training, by name: see `memory` (decoded once into uint8 arrays)."""

from flax_resnet.training.data.memory import EMBEDDED_MNIST, TORCHVISION_NAMES, DataError, Dataset, load_dataset

__all__ = ["EMBEDDED_MNIST", "TORCHVISION_NAMES", "DataError", "Dataset", "load_dataset"]
