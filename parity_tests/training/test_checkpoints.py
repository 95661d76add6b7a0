"""Checkpoints: damaged ones are set aside with a warning, resumed runs follow changed settings,
a partly accumulated gradient and a signal at an epoch's end survive the resumption."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
import torch

from flax_resnet.core.config import TrainConfig
from flax_resnet.core.plan import StepPlan
from flax_resnet.core.run.event_files import EventWriter
from flax_resnet.core.run.interrupts import StopRequests, TrainingInterrupted
from flax_resnet.core.run.progress import UnreadableCheckpoints
from flax_resnet.training import train
from flax_resnet.training.optim import make_optimizer
from parity_tests.helpers.training_fixtures import assert_same_history, read_events, scalars, tiny
from parity_tests.helpers.twins import relative_error
from torch_ref.training.optim import load_optimizer_state, set_hyperparameters
from torch_ref.training.optim import make_optimizer as make_torch_optimizer


def truncate_largest_array_file(checkpoint: Path) -> Path:
    """Cut the biggest file of an orbax checkpoint's array data in half, as a copy killed midway would."""
    path = max((p for p in (checkpoint / "state").rglob("*") if p.is_file() and "/d/" in p.as_posix()),
               key=lambda p: p.stat().st_size)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def garble_middle(path: Path) -> Path:
    """Flip 64 bytes in the middle of a file: the size stays, the tensors inside change silently."""
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("framework", ["flax", "torch"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(framework, mnist_dir, tmp_path, capfd):
    """The epoch-2 checkpoint is damaged (Flax: an array file truncated; torch: bytes garbled). The
    resumed run warns, naming the file and the damage, sets it aside, resumes after epoch 1 and
    ends as an uninterrupted run. No traceback, and none of orbax's event-loop noise."""
    whole = train(tiny(mnist_dir, tmp_path / "whole", framework=framework, schedule="constant"))
    train(tiny(mnist_dir, tmp_path / "run", framework=framework, epochs=2, schedule="constant"))
    checkpoints = tmp_path / "run" / "checkpoints"
    if framework == "flax":
        damaged = truncate_largest_array_file(checkpoints / "8")
        problem = f"{damaged.relative_to(checkpoints / '8').as_posix()} has {damaged.stat().st_size} of its"
    else:
        damaged = garble_middle(checkpoints / "step_00000008.pt")
        problem = "step_00000008.pt is garbled"
    capfd.readouterr()

    resumed = train(tiny(mnist_dir, tmp_path / "run", framework=framework, schedule="constant"))
    err = capfd.readouterr().err
    assert "is damaged: " + problem in err, err
    assert "resuming from the checkpoint before it instead: step 4, after epoch 1" in err
    assert "Traceback" not in err and "Event loop is closed" not in err
    assert_same_history(resumed.history, whole.history)
    assert os.listdir(tmp_path / "run" / "damaged-checkpoints")  # kept for a look, out of the way


def test_no_readable_checkpoint_stops_instead_of_starting_again(mnist_dir, tmp_path):
    train(tiny(mnist_dir, tmp_path / "run", epochs=1))
    garble_middle(tmp_path / "run" / "checkpoints" / "4" / "state" / "_METADATA")
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    with pytest.raises(UnreadableCheckpoints, match=r"no checkpoint in .* can be read \(4: state/_METADATA is garbled"):
        train(tiny(mnist_dir, tmp_path / "run", epochs=2))
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == metrics


def test_finished_epochs_without_a_checkpoint_are_not_trained_over(mnist_dir, tmp_path):
    """A run folder whose checkpoints are gone, or of a format this version does not read (the
    torch twin's former epoch_N.pt): resuming would start from scratch over its metrics."""
    train(tiny(mnist_dir, tmp_path / "run", framework="torch", epochs=1))
    for path in (tmp_path / "run" / "checkpoints").iterdir():
        path.rename(path.with_name("epoch_0001.pt" if path.suffix == ".pt" else "epoch_0001.json"))
    with pytest.raises(UnreadableCheckpoints, match="has finished epochs, but .* holds no checkpoint of this version"):
        train(tiny(mnist_dir, tmp_path / "run", framework="torch", epochs=2))


def test_leftovers_of_a_killed_torch_write_are_ignored_and_removed(mnist_dir, tmp_path):
    """A .pt whose .json was never written and a temporary file: neither counts, both go."""
    train(tiny(mnist_dir, tmp_path / "run", framework="torch", epochs=1))
    checkpoints = tmp_path / "run" / "checkpoints"
    (checkpoints / "step_00000006.pt").write_bytes(b"half a checkpoint")
    (checkpoints / ".step_00000007.pt.abc123.tmp").write_bytes(b"a quarter")
    resumed = train(tiny(mnist_dir, tmp_path / "run", framework="torch", epochs=2))
    assert [record["epoch"] for record in resumed.history] == [1, 2]
    assert sorted(os.listdir(checkpoints)) == [f"step_{s:08d}.{x}" for s in (4, 8) for x in ("json", "pt")]


def test_a_resumed_run_takes_new_optimizer_settings_in_both_frameworks(mnist_dir, tmp_path):
    """Epoch 1 without weight decay or Nesterov, epoch 2 resumed with both and another lr: the
    Flax optimizer state keeps its shape (no orbax tree mismatch), and torch's param_groups hold the
    new settings, not the saved ones (as its checkpoint after epoch 2 shows)."""
    first = dict(weight_decay=0.0, nesterov=False, lr=0.02, schedule="constant")
    second = dict(weight_decay=0.01, nesterov=True, lr=0.05, schedule="constant")
    for framework in ("flax", "torch"):
        workdir = tmp_path / framework
        train(tiny(mnist_dir, workdir, framework=framework, epochs=1, **first))
        resumed = train(tiny(mnist_dir, workdir, framework=framework, epochs=2, **second))
        assert [record["lr"] for record in resumed.history] == pytest.approx([0.02, 0.05])
    saved = torch.load(tmp_path / "torch" / "checkpoints" / "step_00000008.pt", weights_only=True)
    group = saved["optimizer"]["param_groups"][0]
    assert (group["weight_decay"], group["nesterov"], group["lr"]) == (0.01, True, 0.05)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_optimizer_state_carries_over_a_change_of_settings_as_in_torch(optimizer):
    """Two updates with one set of settings, then two with weight decay switched on, Nesterov on
    (sgd) and another lr: optax's state from the first optimizer feeds the second, as torch's
    state does through load_optimizer_state, and the parameters agree."""
    plan = StepPlan(steps_per_epoch=4, grad_accum=1, epochs=1)
    before = TrainConfig(optimizer=optimizer, weight_decay=0.0, nesterov=False, lr=0.02, schedule="constant")
    after = dataclasses.replace(before, weight_decay=0.01, nesterov=optimizer == "sgd", lr=0.05)
    rng = np.random.default_rng(0)
    initial = {"w": rng.standard_normal((3, 4)).astype(np.float32)}
    grads = [{"w": rng.standard_normal((3, 4)).astype(np.float32)} for _ in range(4)]

    params, state = dict(initial), None
    for config, grad_slice in ((before, grads[:2]), (after, grads[2:])):
        tx, _ = make_optimizer(config, plan)
        state = tx.init(params) if state is None else state
        assert jax.tree.structure(state) == jax.tree.structure(tx.init(params))
        for grad in grad_slice:
            updates, state = tx.update(grad, state, params)
            params = optax.apply_updates(params, updates)

    module = torch.nn.Module()
    module.register_parameter("w", torch.nn.Parameter(torch.from_numpy(initial["w"].copy())))
    saved, update = None, 0
    for config, grad_slice in ((before, grads[:2]), (after, grads[2:])):
        torch_optimizer, schedule = make_torch_optimizer(module, config, plan)
        if saved is not None:
            load_optimizer_state(torch_optimizer, saved)
        for grad in grad_slice:
            module.w.grad = torch.from_numpy(grad["w"])
            set_hyperparameters(torch_optimizer, schedule, update)
            torch_optimizer.step()
            update += 1
        saved = torch_optimizer.state_dict()
    assert relative_error(params["w"], module.w.detach().numpy()) <= 1e-5


def test_torch_optimizer_state_loads_without_its_old_settings():
    parameter = torch.nn.Parameter(torch.ones(3))
    old = torch.optim.SGD([parameter], lr=0.1, momentum=0.9, weight_decay=0.0)
    parameter.grad = torch.full((3,), 0.5)
    old.step()
    new = torch.optim.SGD([parameter], lr=0.3, momentum=0.9, weight_decay=0.01, nesterov=True)
    load_optimizer_state(new, old.state_dict())
    group = new.param_groups[0]
    assert (group["lr"], group["weight_decay"], group["nesterov"]) == (0.3, 0.01, True)
    assert torch.equal(new.state[parameter]["momentum_buffer"], old.state[parameter]["momentum_buffer"])


@pytest.fixture
def ctrl_c_raises():
    """SIGINT raising KeyboardInterrupt, as in a terminal, also where the suite itself was started
    as a background job, which inherits SIGINT ignored (StopRequests leaves an ignored signal alone)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_sigint_at_an_epoch_end_keeps_a_partly_accumulated_gradient(mnist_dir, tmp_path, ctrl_c_raises):
    """torch, grad_accum 3 over 4 steps an epoch: epoch 1 ends one batch into an accumulation
    window. Ctrl-C during the epoch's logs stops the run after its checkpoint (exit status 130),
    and the resumed run ends bit for bit as a straight one: the accumulated .grad came back."""
    settings = dict(framework="torch", grad_accum=3, weight_decay=5e-4)
    whole = train(tiny(mnist_dir, tmp_path / "whole", **settings))

    def interrupt(record):
        if record["epoch"] == 1:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted, match="stopped by SIGINT after epoch 1") as stopped:
        train(tiny(mnist_dir, tmp_path / "split", **settings), on_epoch_end=interrupt)
    assert stopped.value.exit_status == 130
    resumed = train(tiny(mnist_dir, tmp_path / "split", **settings))
    assert_same_history(resumed.history, whole.history)
    for key, value in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key


def test_stop_requests_catch_the_first_signal_and_let_a_second_ctrl_c_through(ctrl_c_raises):
    before = signal.getsignal(signal.SIGTERM)
    with StopRequests() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.check(1) == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is before
    agreed = []
    with StopRequests(agree=lambda signum: agreed.append(signum) or signal.SIGTERM, every=10) as stop:
        assert stop.check(7) is None and agreed == []  # between agreement steps: no collective
        assert stop.check(10) == signal.SIGTERM and agreed == [0]  # another process was signalled


def test_a_run_resumed_within_the_same_second_keeps_the_earlier_event_file(tmp_path, monkeypatch):
    """tensorboardX names event files by the second; two writers in one second write two files,
    and reading them in name order puts the resumed run's restart marker after the first run's steps."""
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.5)  # both writers see the same second
    for resumed_step, steps in ((0, (1, 2, 3)), (2, (3, 4))):
        with EventWriter(tmp_path, learning_rate=lambda steps: np.zeros(len(steps))) as curves:
            curves.open(resumed_step)
            curves.begin_epoch()
            for step in steps:
                curves.step(step, {"loss": 1.0 * step, "count": 1.0})
            curves.flush()
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
    events = read_events(tmp_path)
    assert [e.step for e in events if e.session_log.status == e.session_log.START] == [3]
    assert sorted(scalars(events, "train/loss")) == [1, 2, 3, 4]
