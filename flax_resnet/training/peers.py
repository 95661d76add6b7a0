"""Ending a multi-process run soon after one of its processes is lost, with one line saying how to resume.

JAX's coordination service notices a dead process only when its heartbeats stop (after 100 s by
default), and then aborts every survivor with a page of native stack frames; until then a survivor
waits in its next collective. `watch_peers` watches the processes itself, from a daemon thread,
since the main thread may be blocked in a collective that will never finish:

- process 0 listens on a TCP port it publishes in JAX's key-value store; every other process
  connects to it and says which process it is;
- a process that dies has its connection closed by the kernel at once (SIGKILL included); a
  machine that vanishes without closing it falls silent: both ends send a heartbeat every
  `HEARTBEAT_SECONDS` and give the other up after `SILENCE_SECONDS` without a word;
- a process that leaves the watch normally says so; one that leaves on an exception says that,
  and is counted lost if the others are still running `FAILED_GRACE_SECONDS` later (a stop that
  every process makes together, on a signal or a diverged loss, ends them all well within that);
- process 0 tells the others which process was lost. Process 0 prints one line naming the lost
  process, the newest checkpoint in the run folder and the command that resumes the run, and every
  survivor exits with `PEER_LOST_STATUS`, at once, from the watching thread. When process 0 itself
  is lost, each survivor prints that line.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import jax
from jax._src import distributed  # the coordination service's client, as multihost_utils and orbax reach it

from flax_resnet.core.run.interrupts import resume_command
from flax_resnet.core.run.launcher import RESUME_COMMAND_VARIABLE

PEER_LOST_STATUS = 75  # EX_TEMPFAIL of sysexits.h: a temporary failure; running the command again resumes
HEARTBEAT_SECONDS = 1.0
SILENCE_SECONDS = 20.0  # a peer silent this long is lost (its machine gone, its network cut)
JOIN_SECONDS = 120.0  # a process not connected to process 0 this long after process 0 started watching is lost
FAILED_GRACE_SECONDS = 10.0
SETTLE_SECONDS = SILENCE_SECONDS + 2 * HEARTBEAT_SECONDS  # a failed collective waits this long for the verdict

_generations = itertools.count()  # every process makes the same calls, so the counts agree


def watch_peers(workdir) -> contextlib.AbstractContextManager:
    """Inside `with watch_peers(workdir):` the loss of any process of a multi-process run ends this
    one within seconds: process 0 prints one line (the lost process, the newest checkpoint of the
    run folder `workdir` (a Workdir), the command to resume) and every survivor exits with status
    `PEER_LOST_STATUS`. Nothing for a one-process run. Every process must enter it at the same
    point of the program, after jax.distributed.initialize.
    """
    if jax.process_count() == 1:
        return contextlib.nullcontext()
    client = distributed.global_state.client
    key = f"flax_resnet/peer_watch/{next(_generations)}"
    host = _host_of(distributed.global_state.coordinator_address)

    def publish(port: int) -> None:
        client.key_value_set(key, str(port))

    def lookup(timeout: float) -> tuple[str, int]:
        return host, int(client.blocking_key_value_get(key, int(timeout * 1000)))

    def lost(index: int, reason: str, announce: bool) -> None:
        if announce:
            print(lost_peer_line(index, jax.process_count(), reason, workdir), file=sys.stderr)
        exit_now(PEER_LOST_STATUS)

    return PeerWatch(jax.process_index(), jax.process_count(), publish=publish, lookup=lookup, on_lost=lost,
                     settle_on=(jax.errors.JaxRuntimeError,))


def lost_peer_line(index: int, count: int, reason: str, workdir) -> str:
    """'train.py: lost process 1 of 2 (...); the last complete checkpoint is ...; to resume, run ...'."""
    step = latest_checkpoint_step(workdir.checkpoints_path)
    saved = ("no checkpoint was written yet, so the run starts over" if step is None else
             f"the last complete checkpoint is step {step} ({workdir.checkpoints_path / str(step)})")
    command = os.environ.get(RESUME_COMMAND_VARIABLE) or resume_command(
        sys.executable, sys.argv[0], sys.argv[1:], workdir.path)
    return (f"{os.path.basename(sys.argv[0])}: lost process {index} of {count} ({reason}); {saved}; "
            f"to resume, run the same command again: {command}")


def latest_checkpoint_step(folder) -> int | None:
    """The newest checkpoint step in a run's checkpoints folder (orbax renames a checkpoint's
    folder to its step only once it is complete), or None."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return None
    steps = [int(name) for name in names if name.isdigit() and (Path(folder) / name).is_dir()]
    return max(steps, default=None)


def exit_now(status: int) -> None:
    """End the process from any thread, without waiting for the others or for atexit handlers
    (jax.distributed.shutdown would wait for the lost process)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


class PeerWatch:
    """The watch of process `index` of `count`: a context manager (see the module's docstring).

    `publish(port)` (process 0) makes its listening port known; `lookup(timeout)` (the others)
    returns process 0's (host, port). `on_lost(index, reason, announce)` is called once, from
    the watching thread, when process `index` is lost; `announce` is True where the line is to
    be printed. An exception of a type in `settle_on` leaving the block (a collective failing as
    its peer died) first waits up to `settle` seconds for the watch to find the loss.
    """

    def __init__(self, index: int, count: int, *, publish: Callable[[int], None],
                 lookup: Callable[[float], tuple[str, int]], on_lost: Callable[[int, str, bool], None],
                 heartbeat: float = HEARTBEAT_SECONDS, silence: float = SILENCE_SECONDS, join: float = JOIN_SECONDS,
                 failed_grace: float = FAILED_GRACE_SECONDS, settle: float = SETTLE_SECONDS,
                 settle_on: tuple[type[BaseException], ...] = ()):
        self.index, self.count = index, count
        self._publish, self._lookup, self._on_lost = publish, lookup, on_lost
        self._heartbeat, self._silence, self._join, self._failed_grace = heartbeat, silence, join, failed_grace
        self._settle, self._settle_on = settle, settle_on
        self._farewell: bytes | None = None  # b"done" or b"failed", set when the block is left
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._found = threading.Event()
        self._thread: threading.Thread | None = None
        self._listener: socket.socket | None = None

    # --- the block

    def __enter__(self) -> PeerWatch:
        if self.index == 0:
            self._listener = _listen()
            self._publish(self._listener.getsockname()[1])
        target = self._watch_peers if self.index == 0 else self._watch_process_0
        self._thread = threading.Thread(target=target, name="peer-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if error is not None and isinstance(error, self._settle_on):
            self._found.wait(self._settle)  # where the peer is lost, on_lost ends the process meanwhile
        self._farewell = b"done" if error is None else b"failed"
        with contextlib.suppress(OSError):
            self._wake_writer.send(b"!")
        self._thread.join(timeout=5)
        for end in (self._wake_reader, self._wake_writer):
            end.close()

    def _lose(self, index: int, reason: str, announce: bool) -> None:
        self._found.set()
        self._on_lost(index, reason, announce)

    # --- process 0: a connection from every other process

    def _watch_peers(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ)
        selector.register(self._wake_reader, selectors.EVENT_READ)
        peers: dict[int, _Line] = {}
        unnamed: list[_Line] = []
        failed_at: dict[int, float] = {}
        started = last_beat = time.monotonic()
        verdict: tuple[int, str] | None = None
        while verdict is None and self._farewell is None:
            for key, _ in selector.select(timeout=self._heartbeat / 2):
                if key.fileobj is self._listener:
                    connection, _ = self._listener.accept()
                    line = _Line(connection)
                    unnamed.append(line)
                    selector.register(connection, selectors.EVENT_READ, line)
                elif key.fileobj is not self._wake_reader:
                    line = key.data
                    messages = line.receive()
                    for message in messages or ():
                        if line.index is None and (index := _hello_from(message, self.count)) is not None:
                            line.index = index
                            peers[index] = line
                            unnamed.remove(line)
                        elif message == b"failed" and line.index is not None:
                            failed_at[line.index] = time.monotonic()
                        elif message == b"done":
                            line.left = True
                    if messages is None:
                        selector.unregister(line.connection)
                        line.close()
                        if line.index is not None and not line.left and line.index not in failed_at:
                            verdict = verdict or (line.index, "its connection closed")
            now = time.monotonic()
            watched = {index: line for index, line in peers.items()
                       if not (line.left or line.closed or index in failed_at)}
            if now - last_beat >= self._heartbeat:
                last_beat = now
                for index, line in watched.items():
                    if not line.send(b"beat"):
                        verdict = verdict or (index, "its connection broke")
            for index, line in watched.items():
                if now - line.heard > self._silence:
                    verdict = verdict or (index, f"silent for {self._silence:g} s")
            for index, when in failed_at.items():
                if now - when > self._failed_grace:
                    verdict = verdict or (index, "it stopped on an error; see its output")
            missing = [index for index in range(1, self.count) if index not in peers]
            if missing and now - started > self._join:
                verdict = verdict or (missing[0], f"it did not join within {self._join:g} s")
        if verdict is not None:
            for line in peers.values():
                if not line.closed:
                    line.send(b"lost %d" % verdict[0])
            self._lose(*verdict, announce=True)
        for line in [*peers.values(), *unnamed]:
            if not (line.left or line.closed):
                line.send(self._farewell or b"failed")
            line.close()
        self._listener.close()
        selector.close()

    # --- every other process: one connection to process 0

    def _watch_process_0(self) -> None:
        try:
            address = self._lookup(self._join)
            connection = socket.create_connection(address, timeout=self._join)
        except Exception as error:  # noqa: BLE001 - the store or the network: either way process 0 is out of reach
            self._lose(0, f"it could not be reached: {str(error).strip().splitlines()[0][:200]}", announce=True)
            return
        line = _Line(connection)
        line.send(b"hello %d" % self.index)
        selector = selectors.DefaultSelector()
        selector.register(connection, selectors.EVENT_READ)
        selector.register(self._wake_reader, selectors.EVENT_READ)
        failed_at = None
        last_beat = time.monotonic()
        verdict: tuple[int, str, bool] | None = None
        while verdict is None and self._farewell is None and not line.left:
            if any(key.fileobj is connection for key, _ in selector.select(timeout=self._heartbeat / 2)):
                messages = line.receive()
                for message in messages or ():
                    if message.startswith(b"lost "):
                        verdict = (int(message.split()[1]), "process 0 saw it", False)
                    elif message == b"failed":
                        failed_at = time.monotonic()
                    elif message == b"done":
                        line.left = True
                if messages is None:
                    selector.unregister(connection)
                    line.close()
                    if verdict is None and not line.left and failed_at is None:
                        verdict = (0, "its connection closed", True)
            now = time.monotonic()
            watched = not (line.left or line.closed or failed_at is not None or verdict is not None)
            if watched and now - last_beat >= self._heartbeat:
                last_beat = now
                if not line.send(b"beat"):
                    verdict = (0, "its connection broke", True)
            if watched and verdict is None and now - line.heard > self._silence:
                verdict = (0, f"silent for {self._silence:g} s", True)
            if verdict is None and failed_at is not None and now - failed_at > self._failed_grace:
                verdict = (0, "it stopped on an error; see its output", True)
        if verdict is not None:
            self._lose(*verdict)
        if not (line.left or line.closed):
            line.send(self._farewell or b"failed")
        line.close()
        selector.close()


class _Line:
    """One TCP connection carrying newline-ended messages."""

    def __init__(self, connection: socket.socket):
        connection.setblocking(False)
        self.connection = connection
        self.index: int | None = None  # the process at the other end, once it said
        self.left = False  # it said it left the watch normally
        self.closed = False
        self.heard = time.monotonic()
        self._pending = b""

    def receive(self) -> list[bytes] | None:
        """The complete messages that arrived, or None once the other end closed the connection."""
        try:
            data = self.connection.recv(4096)
        except BlockingIOError:
            return []
        except OSError:
            return None
        if not data:
            return None
        self.heard = time.monotonic()
        *messages, self._pending = (self._pending + data).split(b"\n")
        return [message for message in messages if message and message != b"beat"]

    def close(self) -> None:
        self.closed = True
        self.connection.close()

    def send(self, message: bytes) -> bool:
        """False if the connection is broken."""
        try:
            self.connection.setblocking(True)
            self.connection.settimeout(HEARTBEAT_SECONDS)
            self.connection.sendall(message + b"\n")
            return True
        except OSError:
            return False
        finally:
            with contextlib.suppress(OSError):
                self.connection.setblocking(False)


def _hello_from(message: bytes, count: int) -> int | None:
    """The process index of a b"hello I" message; None for anything else (a stranger on the port)."""
    word, _, index = message.partition(b" ")
    if word != b"hello" or not index.isdigit() or not 0 < int(index) < count:
        return None
    return int(index)


def _listen() -> socket.socket:
    """A server socket on every interface, on a port the system picks."""
    if socket.has_dualstack_ipv6():
        return socket.create_server(("", 0), family=socket.AF_INET6, dualstack_ipv6=True)
    return socket.create_server(("", 0))


def _host_of(address: str) -> str:
    """'10.0.0.1' of '10.0.0.1:1234'; '::1' of '[::1]:1234'."""
    host = address.rpartition(":")[0]
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host
