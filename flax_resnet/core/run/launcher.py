"""Start N processes of one run on this machine, as `torchrun --nproc-per-node N` does. Plain Python.

    python scripts/launch.py --nproc 2 -- scripts/train.py --workdir runs/two ...

Each process gets `--coordinator-address 127.0.0.1:PORT --num-processes N --process-id I` after the
given arguments. Process 0's output goes straight to this terminal; the others' lines come prefixed
with `[process I]`. SIGINT and SIGTERM given to the launcher go to every process once (each is in
its own session, so a terminal's Ctrl-C does not reach them twice); should the launcher itself be
killed, the kernel kills them too (Linux), as they might otherwise wait forever for each other.
When one process fails, the others are stopped too: SIGTERM, then SIGKILL after `grace` seconds.
The launcher exits with the first failing status (a process a signal killed counts as 128 + the
signal), else 0.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

RESUME_COMMAND_VARIABLE = "FLAX_RESNET_RESUME_COMMAND"  # read by scripts/train.py
POLL_SECONDS = 0.1


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def process_command(command: Sequence[str], address: str, nproc: int, index: int) -> list[str]:
    """The command line of process `index`: Python running `command` plus where it stands in the run."""
    return [sys.executable, *command, "--coordinator-address", address, "--num-processes", str(nproc),
            "--process-id", str(index)]


def _die_with_parent() -> None:
    # Runs in the child before exec: SIGKILL it if the launcher dies (prctl PR_SET_PDEATHSIG = 1).
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


def _relay(stream, index: int) -> None:
    for line in iter(stream.readline, b""):
        sys.stdout.buffer.write(f"[process {index}] ".encode() + line)
        sys.stdout.buffer.flush()
    stream.close()


def _status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def launch(command: Sequence[str], nproc: int, *, host: str = "127.0.0.1", port: int | None = None,
           grace: float = 30.0, resume_command: str | None = None) -> int:
    """Run `command` (a Python script and its arguments) as processes 0..nproc-1 of one run; returns
    the exit status. `resume_command`: what process 0 prints to resume a stopped run."""
    address = f"{host}:{port or free_port(host)}"
    env = dict(os.environ)
    if resume_command:
        env[RESUME_COMMAND_VARIABLE] = resume_command
    children: list[subprocess.Popen] = []
    relays: list[threading.Thread] = []
    received: list[int] = []

    def forward(signum, frame):
        received.append(signum)
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        for index in range(nproc):
            piped = index > 0
            child = subprocess.Popen(process_command(command, address, nproc, index), env=env,
                                     start_new_session=True, preexec_fn=_die_with_parent,
                                     stdout=subprocess.PIPE if piped else None,
                                     stderr=subprocess.STDOUT if piped else None)
            children.append(child)
            if piped:
                relay = threading.Thread(target=_relay, args=(child.stdout, index), daemon=True)
                relay.start()
                relays.append(relay)
        return _wait(children, grace)
    finally:
        for child in children:  # nothing outlives the launcher, whatever happened
            if child.poll() is None:
                child.kill()
                child.wait()
        for relay in relays:
            relay.join(timeout=5)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _wait(children: list[subprocess.Popen], grace: float) -> int:
    failed: int | None = None
    deadline = None
    while any(child.poll() is None for child in children):
        for child in children:
            code = child.poll()
            if code not in (None, 0) and failed is None:
                failed, deadline = _status(code), time.monotonic() + grace
                for other in children:  # the others would wait forever in their next collective
                    if other.poll() is None:
                        other.send_signal(signal.SIGTERM)
        if deadline is not None and time.monotonic() > deadline:
            for child in children:
                if child.poll() is None:
                    child.kill()
        time.sleep(POLL_SECONDS)
    if failed is not None:
        return failed
    return next((_status(child.returncode) for child in children if child.returncode), 0)
