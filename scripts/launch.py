"""Run N processes of one training run on this machine: `python scripts/launch.py --nproc N -- SCRIPT ARGS`.

As `torchrun --nproc-per-node N`: starts SCRIPT N times, adding `--coordinator-address 127.0.0.1:PORT
--num-processes N --process-id I`, and waits for them. On CPUs give each process one device
(the default); the processes then talk over TCP (gloo). Examples:

    python scripts/launch.py --nproc 2 -- scripts/train.py --workdir runs/two --epochs 3
    # on a machine with 8 GPUs, one process each:
    CUDA_VISIBLE_DEVICES=... python scripts/launch.py --nproc 8 -- scripts/train.py --workdir runs/eight

Ctrl-C or SIGTERM reaches every process once: each finishes its step, the run checkpoints, and the
same command resumes it. Exit status: the first failing process's (143 after SIGTERM, 130 after
SIGINT), else 0.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from flax_resnet.core.run.launcher import launch  # noqa: E402


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, required=True, help="processes to start")
    parser.add_argument("--port", type=int, default=None, help="the coordinator's port (default: a free one)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- SCRIPT ARGS: the program each process runs")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.nproc < 1:
        parser.error(f"--nproc must be at least 1, got {args.nproc}")
    if not command or not command[0].endswith(".py"):
        parser.error("give the script to run after --, e.g. -- scripts/train.py --workdir runs/two")
    here = shlex.join(["python", os.path.relpath(__file__), *argv])
    return launch(command, args.nproc, port=args.port, resume_command=here)


if __name__ == "__main__":
    sys.exit(main())
