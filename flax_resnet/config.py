"""`flax_resnet.config.TrainConfig` and friends, where code written before the training package finds them."""

from flax_resnet.core.config import (
                                         EMBEDDED_DATASET,
                                         FRAMEWORKS,
                                         OPTIMIZERS,
                                         PRECISIONS,
                                         PRESETS,
                                         RESUMABLE_CHANGES,
                                         SCHEDULES,
                                         ConfigError,
                                         OneLineErrorParser,
                                         TrainConfig,
                                         add_train_arguments,
                                         config_from_args,
                                         resume_differences,
                                         validate,
)

__all__ = ["EMBEDDED_DATASET", "FRAMEWORKS", "OPTIMIZERS", "PRECISIONS", "PRESETS", "RESUMABLE_CHANGES",
           "SCHEDULES", "ConfigError", "OneLineErrorParser", "TrainConfig", "add_train_arguments",
           "config_from_args", "resume_differences", "validate"]
