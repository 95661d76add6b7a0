"""What every data source shares: the error it raises and the names of the built-in sets. Plain Python."""

from flax_resnet.core.config.settings import EMBEDDED_MNIST, IMAGEFOLDER
from flax_resnet.core.files import InputError

__all__ = ["EMBEDDED_MNIST", "IMAGEFOLDER", "TORCHVISION_NAMES", "DataError"]

TORCHVISION_NAMES = ("mnist", "fashion_mnist", "cifar10", "cifar100")


class DataError(InputError):
    """A dataset that cannot be read; the message says why and what to do."""
