"""Train a ResNet: `python scripts/train.py [options]` (no options: offline MNIST, a few minutes on CPU).

Examples:
    python scripts/train.py
    python scripts/train.py --preset seed001 --data-dir ./dataset/mnist
    python scripts/train.py --model resnet20 --dataset cifar10 --epochs 30 --workdir runs/r20
    python scripts/train.py --framework torch --epochs 3
    python scripts/train.py --checkpoint-every 500 --workdir runs/long   # loses at most 500 steps

SIGTERM or Ctrl-C (SIGINT) stops after the current step with a checkpoint and exits with status 143
or 130; running the same command with the same --workdir resumes where it stopped. Exit status 1:
the loss diverged, or no checkpoint in --workdir can be read; 2: bad settings or data; 75: another
process of a multi-process run was lost (the same command resumes from the last checkpoint).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from flax_resnet.core.config import ConfigError, OneLineErrorParser, add_train_arguments, config_from_args  # noqa: E402
from flax_resnet.core.run.launcher import RESUME_COMMAND_VARIABLE  # noqa: E402 - set by scripts/launch.py


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = OneLineErrorParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n")[-1].strip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ConfigError as error:
        parser.error(str(error))

    # Imported after the arguments are checked: JAX and torch take seconds to load.
    from flax_resnet.core.files import InputError
    from flax_resnet.core.run.interrupts import TrainingInterrupted, resume_command
    from flax_resnet.core.run.progress import UnreadableCheckpoints
    from flax_resnet.core.run.workdir import TrainingDiverged
    from flax_resnet.training import train

    try:
        train(config)
    except InputError as error:
        parser.error(str(error))
    except (TrainingDiverged, UnreadableCheckpoints) as error:
        print(f"{parser.prog}: {error}", file=sys.stderr)
        return 1
    except TrainingInterrupted as stopped:
        # A launcher of several processes says what to run again: its own command, not this one.
        command = os.environ.get(RESUME_COMMAND_VARIABLE) or resume_command(
            _shortest(sys.executable), _shortest(__file__), argv, stopped.workdir)
        if stopped.announce:
            print(f"{parser.prog}: {stopped}\nto resume, run the same command with the same --workdir:\n"
                  f"  {command}", file=sys.stderr)
        return stopped.exit_status
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted before training began, or by a second Ctrl-C; re-running with the "
              f"same --workdir resumes from the last checkpoint", file=sys.stderr)
        return 130
    return 0


def _shortest(path: str) -> str:
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


if __name__ == "__main__":
    sys.exit(main())
