"""`flax_resnet.training.config.TrainConfig` and friends, where earlier code finds them: `flax_resnet.core.config`."""

from flax_resnet.core.config import *  # noqa: F403
from flax_resnet.core.config import __all__  # noqa: F401
