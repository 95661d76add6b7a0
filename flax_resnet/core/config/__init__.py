"""Training settings: the fields (`settings`), named recipes (`presets`), the checks (`validation`)
and the command line generated from the fields (`command_line`). Plain Python."""

from flax_resnet.core.config.command_line import (
                                                  OneLineErrorParser,
                                                  add_model_options,
                                                  add_train_arguments,
                                                  config_from_args,
                                                  model_options,
)
from flax_resnet.core.config.presets import PRESET_SUMMARIES, PRESETS
from flax_resnet.core.config.settings import (
                                                  AUTO_PRECISION,
                                                  DEVICES,
                                                  EMBEDDED_MNIST,
                                                  FRAMEWORKS,
                                                  IMAGEFOLDER,
                                                  LAUNCH_SETTINGS,
                                                  OPTIMIZERS,
                                                  PRECISIONS,
                                                  RESUMABLE_CHANGES,
                                                  SCHEDULE_UNITS,
                                                  SCHEDULES,
                                                  ConfigError,
                                                  TrainConfig,
)
from flax_resnet.core.config.validation import resume_differences, validate

__all__ = ["AUTO_PRECISION", "DEVICES", "EMBEDDED_MNIST", "FRAMEWORKS", "IMAGEFOLDER", "LAUNCH_SETTINGS",
           "OPTIMIZERS", "PRECISIONS", "PRESET_SUMMARIES", "PRESETS", "RESUMABLE_CHANGES", "SCHEDULE_UNITS",
           "SCHEDULES", "ConfigError", "OneLineErrorParser", "TrainConfig", "add_model_options", "add_train_arguments",
           "config_from_args", "model_options", "resume_differences", "validate"]
