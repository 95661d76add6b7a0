"""A process of a multi-process run is lost: the survivors end at once, with one line saying how to resume.

The run: two processes of scripts/train.py started by hand (as on a cluster, without the launcher),
joined over 127.0.0.1, one CPU device each. Once the first checkpoint exists process 1 is SIGKILLed;
process 0 must exit with PEER_LOST_STATUS within 60 s (JAX alone takes 100 s and aborts with native
stack frames), printing one line that names process 1, the newest checkpoint and its own command;
running the same two commands again resumes from that checkpoint. (That a resumed two-process run
ends as the uninterrupted one is test_training_processes' concern.)

The watch itself (flax_resnet.training.peers.PeerWatch) is checked in-process, with short timings
and raw sockets playing the other processes: a closed connection, a silent one, a process leaving
normally or on an error, process 0 lost, and process 0 relaying a loss to the others.
Every subprocess and thread has a deadline, and every subprocess is killed if a test fails.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from flax_resnet.core.run.launcher import free_port
from flax_resnet.training.peers import PEER_LOST_STATUS, PeerWatch, latest_checkpoint_step

REPO = Path(__file__).resolve().parents[2]
STARTUP_DEADLINE = 150  # seconds for the run to write its first checkpoint
LOST_DEADLINE = 60  # what users of preemptible machines were promised
NATIVE_DUMPS = ("*** Check failure", "Fatal Python error", "absl::", "tsl::", "Traceback")


@pytest.fixture
def processes():
    """Started subprocesses, all killed (and reaped) when the test ends, however it ends."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


def start(command: list[str], output: Path, processes: list, compiled: Path) -> subprocess.Popen:
    """`command` with its output in the file `output`; `compiled`: JAX's persistent compilation cache,
    so the resumed run does not compile the steps again (half of this test's time on two cores)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", "JAX_DEFAULT_MATMUL_PRECISION": "highest",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_COMPILATION_CACHE_DIR": str(compiled),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    env.pop("FLAX_RESNET_RESUME_COMMAND", None)
    with open(output, "w") as handle:  # a file, not a pipe: nothing blocks on a full pipe
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)
    processes.append(process)
    return process


def test_survivor_of_a_killed_peer_exits_at_once_with_one_line_and_the_run_resumes(mnist_dir, tmp_path, processes):
    workdir = tmp_path / "run"
    # mnist_resnet on 64 images, batch 16: one epoch of 4 steps, a checkpoint after every one, so the
    # kill (as soon as the first checkpoint is complete) lands mid-epoch.
    argv = ["scripts/train.py", "--model", "mnist_resnet", "--dataset", "mnist", "--data-dir", str(mnist_dir),
            "--batch-size", "16", "--epochs", "1", "--eval-batch-size", "24", "--checkpoint-every", "1",
            "--no-progress", "--workdir", str(workdir), "--coordinator-address", f"127.0.0.1:{free_port()}",
            "--num-processes", "2"]
    commands = [[sys.executable, *argv, "--process-id", str(index)] for index in range(2)]
    outputs = [tmp_path / f"process{index}.txt" for index in range(2)]
    first = [start(command, output, processes, tmp_path / "compiled") for command, output in zip(commands, outputs)]

    deadline = time.monotonic() + STARTUP_DEADLINE
    while latest_checkpoint_step(workdir / "checkpoints") is None:
        assert all(process.poll() is None for process in first), outputs[0].read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within the deadline"
        time.sleep(0.005)
    first[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    status = first[0].wait(timeout=LOST_DEADLINE)
    seconds = time.monotonic() - killed
    print(f"process 0 exited {seconds:.2f} s after process 1 was killed")

    output = outputs[0].read_text()
    assert status == PEER_LOST_STATUS, output[-3000:]
    assert not [dump for dump in NATIVE_DUMPS if dump in output], output[-3000:]
    lines = [line for line in output.splitlines() if "lost process" in line]
    assert len(lines) == 1, output[-3000:]
    step = latest_checkpoint_step(workdir / "checkpoints")
    said, command = lines[0].split("; to resume, run the same command again: ")
    assert said == (f"train.py: lost process 1 of 2 (its connection closed); the last complete checkpoint is "
                    f"step {step} ({workdir / 'checkpoints' / str(step)})")
    assert shlex.split(command) == commands[0]

    resumed = [start(command, tmp_path / f"resumed{index}.txt", processes, tmp_path / "compiled")
               for index, command in enumerate(commands)]
    for index, process in enumerate(resumed):
        assert process.wait(timeout=STARTUP_DEADLINE) == 0, (tmp_path / f"resumed{index}.txt").read_text()[-3000:]
    assert f"(train step {step})" in (tmp_path / "resumed0.txt").read_text()


# --- the watch in-process: PeerWatch with short timings; raw sockets play the other processes

TIMINGS = dict(heartbeat=0.05, silence=0.6, join=5.0, failed_grace=0.4, settle=3.0)
WAIT = 10.0  # seconds any one verdict may take here


class Verdicts:
    """What on_lost was told, and when."""

    def __init__(self):
        self.calls: list[tuple[int, str, bool]] = []
        self.arrived = threading.Event()

    def __call__(self, index: int, reason: str, announce: bool) -> None:
        self.calls.append((index, reason, announce))
        self.arrived.set()


class Hub:
    """Process 0's watch of `count` processes; `.port` once entered."""

    def __init__(self, count: int, **timings):
        self.verdicts, self.port = Verdicts(), None
        self.watch = PeerWatch(0, count, publish=self._publish, lookup=None, on_lost=self.verdicts,
                               settle_on=(ConnectionError,), **{**TIMINGS, **timings})

    def _publish(self, port: int) -> None:
        self.port = port

    def connect(self, index: int) -> socket.socket:
        """A raw process `index`: says hello, then only what the test sends."""
        connection = socket.create_connection(("127.0.0.1", self.port), timeout=WAIT)
        connection.sendall(b"hello %d\n" % index)
        return connection


def test_a_closed_connection_is_a_lost_process_at_once_and_a_normal_leave_is_not():
    hub = Hub(3)
    with hub.watch:
        leaving, dying = hub.connect(1), hub.connect(2)
        leaving.sendall(b"done\n")
        leaving.close()
        time.sleep(3 * TIMINGS["heartbeat"])
        started = time.monotonic()
        dying.close()
        assert hub.verdicts.arrived.wait(WAIT)
        assert time.monotonic() - started < TIMINGS["silence"]  # the close, not the silence
    assert hub.verdicts.calls == [(2, "its connection closed", True)]


def test_a_silent_process_is_lost_after_the_silence():
    hub = Hub(2)
    with hub.watch:
        silent = hub.connect(1)  # connected, never a heartbeat
        started = time.monotonic()
        assert hub.verdicts.arrived.wait(WAIT)
        assert time.monotonic() - started >= TIMINGS["silence"] - TIMINGS["heartbeat"]
        silent.close()
    assert hub.verdicts.calls == [(1, "silent for 0.6 s", True)]


def test_a_process_that_left_on_an_error_is_lost_after_the_grace_unless_the_others_leave_too():
    hub = Hub(2)
    with hub.watch:
        failing = hub.connect(1)
        failing.sendall(b"failed\n")
        failing.close()
        time.sleep(TIMINGS["failed_grace"] / 4)  # the others leave in time: no verdict
    assert hub.verdicts.calls == []

    hub = Hub(2)
    with hub.watch:
        failing = hub.connect(1)
        failing.sendall(b"failed\n")
        failing.close()
        started = time.monotonic()
        assert hub.verdicts.arrived.wait(WAIT)
        assert time.monotonic() - started >= TIMINGS["failed_grace"] - TIMINGS["heartbeat"]
    assert hub.verdicts.calls == [(1, "it stopped on an error; see its output", True)]


def test_a_failed_collective_waits_for_the_verdict_before_leaving():
    """The collective may fail a moment before the connection's close arrives."""
    hub = Hub(2)
    with pytest.raises(ConnectionError), hub.watch:
        dying = hub.connect(1)
        time.sleep(3 * TIMINGS["heartbeat"])  # it has joined
        threading.Timer(0.3, dying.close).start()
        raise ConnectionError("the collective failed")
    assert hub.verdicts.calls == [(1, "its connection closed", True)]


def test_process_0_relays_a_loss_and_its_own_loss_is_seen_by_the_others():
    hub = Hub(3)
    peer_verdicts = Verdicts()
    with hub.watch:
        peer = PeerWatch(1, 3, publish=None, lookup=lambda timeout: ("127.0.0.1", hub.port), on_lost=peer_verdicts,
                         **TIMINGS)
        with peer:
            dying = hub.connect(2)
            time.sleep(3 * TIMINGS["heartbeat"])
            dying.close()
            assert peer_verdicts.arrived.wait(WAIT)
    assert hub.verdicts.calls == [(2, "its connection closed", True)]
    assert peer_verdicts.calls == [(2, "process 0 saw it", False)]  # process 0 prints, not this one

    listener = socket.create_server(("127.0.0.1", 0))
    peer_verdicts = Verdicts()
    peer = PeerWatch(1, 2, publish=None, lookup=lambda timeout: listener.getsockname(), on_lost=peer_verdicts,
                     **TIMINGS)
    with peer:
        listener.settimeout(WAIT)
        process_0, _ = listener.accept()
        assert process_0.recv(64).startswith(b"hello 1\n")
        process_0.close()
        assert peer_verdicts.arrived.wait(WAIT)
    listener.close()
    assert peer_verdicts.calls == [(0, "its connection closed", True)]
