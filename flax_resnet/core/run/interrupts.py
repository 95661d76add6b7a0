"""Stopping a run cleanly on SIGTERM or SIGINT. Plain Python, shared by both trainers.

A preemptible machine gets SIGTERM and some seconds of grace; Ctrl-C sends SIGINT. Either one only
raises a flag. The loop looks at it after every step: it finishes the step, writes a checkpoint and
raises `TrainingInterrupted`, which `scripts/train.py` turns into a message saying how to resume
and the exit status of `EXIT_STATUS` (128 + the signal's number, as a shell reports a process the
signal killed). A second Ctrl-C stops at once, as Ctrl-C usually does. (Exit status 75,
`flax_resnet.training.peers.PEER_LOST_STATUS`: another process of a multi-process run was lost;
the same command resumes from the last checkpoint.)

With several processes every one must stop after the same step, or the collectives of the next
one would wait forever: `StopRequests(agree=...)` takes a function that turns this process's
request into the decision of all of them (a collective over the processes), asked every
`every` steps, at the same steps in every process.
"""

from __future__ import annotations

import os
import shlex
import signal
import threading
from collections.abc import Callable, Sequence

SIGNALS = (signal.SIGTERM, signal.SIGINT)
EXIT_STATUS = {signal.SIGTERM: 143, signal.SIGINT: 130}  # 128 + 15, 128 + 2


class TrainingInterrupted(Exception):
    """The run stopped on a signal after writing a checkpoint. `exit_status` is the status to exit
    with; `announce` is False in the processes of a multi-process run that should not print."""

    def __init__(self, signum: int, where: str, workdir, *, announce: bool = True):
        self.signum, self.where, self.workdir, self.announce = signum, where, workdir, announce
        self.exit_status = EXIT_STATUS.get(signum, 128 + signum)
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} {where}; checkpointed in {os.fspath(workdir)}")


class StopRequests:
    """Inside `with StopRequests() as stop:` SIGTERM and SIGINT set `stop.signum` instead of
    ending the process; `stop.check(step)` says whether (and for which signal) to stop now.

    Handlers are installed only in the main thread (where Python delivers signals), and a signal
    that was ignored when the run started (SIG_IGN, as for background jobs of a shell) stays ignored.
    """

    def __init__(self, agree: Callable[[int], int] | None = None, every: int = 1):
        self.signum: int | None = None
        self._agree, self._every = agree, every
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                previous = signal.getsignal(signum)
                if previous is not signal.SIG_IGN:
                    self._previous[signum] = previous
                    signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait
        self.signum = signum

    def check(self, step: int) -> int | None:
        """The signal to stop for after train step `step` (1-based), or None to go on. Every process
        must call it after the same steps; the collective runs every `every` steps."""
        if self._agree is None:
            return self.signum
        if step % self._every:
            return None
        return self._agree(self.signum or 0) or None

    def check_now(self) -> int | None:
        """As `check`, at a point every process reaches together (an epoch's end)."""
        if self._agree is None:
            return self.signum
        return self._agree(self.signum or 0) or None


def resume_command(executable: str, script: str, argv: Sequence[str], workdir) -> str:
    """The command line that resumes a run: the same one, with --workdir naming its folder."""
    argv = list(argv)
    given = any(arg == "--workdir" or arg.startswith("--workdir=") for arg in argv)
    if not given:
        argv += ["--workdir", os.fspath(workdir)]
    return shlex.join([executable, script, *argv])
