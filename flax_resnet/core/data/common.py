"""What every data source shares: the error it raises and the names of the built-in sets. Plain Python."""

EMBEDDED_MNIST = "embedded_mnist"
IMAGEFOLDER = "imagefolder"
TORCHVISION_NAMES = ("mnist", "fashion_mnist", "cifar10", "cifar100")


class DataError(ValueError):
    """A dataset that cannot be read; the message says why and what to do."""
