"""Train a ResNet: `python scripts/train.py [options]` (no options: offline MNIST, a few minutes on CPU).

Examples:
    python scripts/train.py
    python scripts/train.py --preset seed001 --data-dir ./dataset/mnist
    python scripts/train.py --model resnet20 --dataset cifar10 --epochs 30 --workdir runs/r20
    python scripts/train.py --framework torch --epochs 3
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from flax_resnet.training.config import ConfigError, OneLineErrorParser, add_train_arguments, config_from_args  # noqa: E402


def main(argv=None) -> int:
    parser = OneLineErrorParser(description=__doc__.splitlines()[0])
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ConfigError as error:
        parser.error(str(error))

    # Imported after the arguments are checked: JAX and torch take seconds to load.
    from flax_resnet.training.data import DataError
    from flax_resnet.training import train
    from flax_resnet.training.workdir import TrainingDiverged

    try:
        train(config)
    except (ConfigError, DataError) as error:
        parser.error(str(error))
    except TrainingDiverged as error:
        print(f"{parser.prog}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; the last finished epoch is checkpointed, and re-running with the "
              f"same --workdir resumes from it", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
