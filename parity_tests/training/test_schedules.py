"""The learning-rate and momentum schedules against torch's own schedulers, update by update.

`core.schedule` is one function of the optimizer-update count; the Flax step evaluates it in
float32 inside jit (jax.numpy), the torch trainer on the host (numpy). Both are compared with
torch.optim.lr_scheduler driving a real torch optimizer: float64 exactly, float32 to its rounding.
"""

from __future__ import annotations

import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch.optim import lr_scheduler

from flax_resnet.core.config import ConfigError, TrainConfig, validate
from flax_resnet.core.plan import StepPlan
from flax_resnet.core.schedule import make_schedule

# torch's LinearLR refuses start_factor 0; ours warms up from exactly 0, its limit. With this start
# factor torch's lr differs from that limit by at most START_FACTOR * peak.
START_FACTOR = 1e-12


def torch_curve(make_scheduler, updates: int, optimizer="sgd", peak=0.4, epoch_of=None, step=None):
    """(lr, momentum or beta1) of each update, read from a torch optimizer driven by the scheduler:
    stepped after every update, or with `epoch_of` (update -> its epoch) after each epoch's last,
    or by `step(scheduler, updates done)`."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    if optimizer == "sgd":
        torch_optimizer = torch.optim.SGD([parameter], lr=peak, momentum=0.9)
    else:
        torch_optimizer = torch.optim.Adam([parameter], lr=peak, betas=(0.9, 0.999))
    scheduler = make_scheduler(torch_optimizer)
    curve = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SequentialLR's deprecation notes on its own internals
        for _ in range(updates):
            group = torch_optimizer.param_groups[0]
            curve.append((group["lr"], group["betas"][0] if "betas" in group else group["momentum"]))
            parameter.grad = torch.ones(1)
            torch_optimizer.step()
            if step is not None:
                step(scheduler, len(curve))
            elif epoch_of is None or epoch_of(len(curve)) != epoch_of(len(curve) - 1):
                scheduler.step()
    return np.array(curve)


def our_curve(config: TrainConfig, plan: StepPlan):
    """(float64 host curve, float32 curve computed inside jit) of lr and momentum."""
    validate(config)
    schedule = make_schedule(config, plan)
    updates = np.arange(plan.total_updates)
    host = np.stack([schedule.learning_rate(updates), schedule.momentum_at(updates)], axis=1)
    traced = jax.jit(jax.vmap(lambda u: jnp.stack([schedule.learning_rate(u, jnp), schedule.momentum_at(u, jnp)])))
    return host, np.asarray(traced(jnp.arange(plan.total_updates)))


def assert_same_curve(ours, theirs, *, peak, host_atol=0.0):
    host, traced = ours
    np.testing.assert_allclose(host, theirs, rtol=1e-12, atol=host_atol)
    # float32: a few ulps of the peak, and of the momentum (< 1)
    np.testing.assert_allclose(traced[:, 0], theirs[:, 0], rtol=0, atol=4 * np.finfo(np.float32).eps * peak)
    np.testing.assert_allclose(traced[:, 1], theirs[:, 1], rtol=0, atol=4 * np.finfo(np.float32).eps)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("steps_per_epoch, epochs", [(10, 8), (7, 1), (3, 1), (1, 1)])
def test_onecycle_is_torchs_onecycle(optimizer, steps_per_epoch, epochs):
    """Peak position, last lr and every lr between, and the momentum (sgd) or beta1 (adam) it cycles."""
    plan = StepPlan(steps_per_epoch, 1, epochs)
    config = TrainConfig(schedule="onecycle", lr=0.4, epochs=epochs, optimizer=optimizer)
    theirs = torch_curve(lambda o: lr_scheduler.OneCycleLR(o, max_lr=0.4, total_steps=plan.total_updates),
                         plan.total_updates, optimizer)
    ours = our_curve(config, plan)
    assert_same_curve(ours, theirs, peak=0.4)
    if plan.total_updates == 80:
        assert np.argmax(ours[0][:, 0]) == 23 and ours[0][-1, 0] == pytest.approx(0.4 / 25 / 1e4, rel=1e-12)
        assert ours[0][0, 1] == 0.95 and ours[0][23, 1] == pytest.approx(0.85) and ours[0][-1, 1] == 0.95


@pytest.mark.parametrize("warmup_epochs", [0.0, 0.5])
def test_multistep_applies_every_milestone_as_multisteplr(warmup_epochs):
    """Milestones given twice, and two that round to the same update (1.0 and 1.1 epochs of 3
    steps are both update 3), each divide the lr once more, as MultiStepLR does; a warmup is
    LinearLR before it (SequentialLR)."""
    plan = StepPlan(3, 1, 4)
    config = TrainConfig(schedule="multistep", lr=0.4, epochs=4, milestones=(1.0, 1.1, 2.0, 2.0), gamma=0.5,
                         warmup_epochs=warmup_epochs)
    milestones = [3, 3, 6, 6]
    warmup = plan.updates_at(warmup_epochs)
    if warmup:
        def make(o):
            return lr_scheduler.SequentialLR(o, [
                lr_scheduler.LinearLR(o, start_factor=START_FACTOR, total_iters=warmup),
                lr_scheduler.MultiStepLR(o, [m - warmup for m in milestones], gamma=0.5)], milestones=[warmup])
    else:
        def make(o):
            return lr_scheduler.MultiStepLR(o, milestones, gamma=0.5)
    theirs = torch_curve(make, plan.total_updates)
    ours = our_curve(config, plan)
    assert_same_curve(ours, theirs, peak=0.4, host_atol=START_FACTOR * 0.4)
    assert ours[0][3, 0] == pytest.approx(0.4 / 4) and ours[0][6, 0] == pytest.approx(0.4 / 16)


@pytest.mark.parametrize("warmup_epochs, warmup_start", [(0.0, 0.0), (1.0, 0.0), (1.5, 0.01)])
def test_cosine_and_constant_are_torchs(warmup_epochs, warmup_start):
    """cosine: LinearLR warmup then CosineAnnealingLR to 0 at the last update; constant: LinearLR warmup.
    A warmup_start is LinearLR's start_factor (torchvision's V2 recipe: 0.01)."""
    plan = StepPlan(5, 2, 4)  # grad_accum 2: 10 updates
    warmup = plan.updates_at(warmup_epochs)
    start_factor = warmup_start or START_FACTOR
    for kind in ("cosine", "constant"):
        config = TrainConfig(schedule=kind, lr=0.4, epochs=4, warmup_epochs=warmup_epochs, warmup_start=warmup_start,
                             grad_accum=2)

        def make(o):
            after = (lr_scheduler.CosineAnnealingLR(o, T_max=plan.total_updates - warmup) if kind == "cosine"
                     else lr_scheduler.ConstantLR(o, factor=1.0))
            if not warmup:
                return after
            return lr_scheduler.SequentialLR(o, [lr_scheduler.LinearLR(o, start_factor=start_factor,
                                                                       total_iters=warmup), after],
                                             milestones=[warmup])

        ours = our_curve(config, plan)
        assert_same_curve(ours, torch_curve(make, plan.total_updates), peak=0.4,
                          host_atol=(start_factor - warmup_start) * 0.4 + 1e-15)
        if warmup:
            assert ours[0][0, 0] == pytest.approx(0.4 * warmup_start, abs=1e-15)


def torchvision_reference_scheduler(kind, epochs, warmup, warmup_start, milestones=()):
    """The scheduler torchvision's classification reference builds (train.py), stepped once an epoch."""
    def make(o):
        main = {"cosine": lambda: lr_scheduler.CosineAnnealingLR(o, T_max=epochs - warmup),
                "multistep": lambda: lr_scheduler.MultiStepLR(o, [m - warmup for m in milestones], gamma=0.5),
                "constant": lambda: lr_scheduler.ConstantLR(o, factor=1.0)}[kind]()
        if not warmup:
            return main
        return lr_scheduler.SequentialLR(o, [lr_scheduler.LinearLR(o, start_factor=warmup_start or START_FACTOR,
                                                                   total_iters=warmup), main], milestones=[warmup])
    return make


@pytest.mark.parametrize("kind", ["cosine", "multistep", "constant"])
@pytest.mark.parametrize("steps_per_epoch, grad_accum, warmup_start", [(6, 2, 0.01), (4, 1, 0.0)])
def test_a_schedule_stepped_once_an_epoch_is_torchvisions_reference(kind, steps_per_epoch, grad_accum, warmup_start):
    """schedule_unit epoch: the lr of every update of an epoch is the one torchvision's reference
    scheduler gives when it is stepped after each epoch (the V2 recipe: warmup from 0.01 x lr)."""
    epochs, warmup = 6, 2
    plan = StepPlan(steps_per_epoch, grad_accum, epochs)
    config = TrainConfig(schedule=kind, schedule_unit="epoch", lr=0.4, epochs=epochs, warmup_epochs=warmup,
                         warmup_start=warmup_start, grad_accum=grad_accum, milestones=(3.0, 5.0), gamma=0.5)
    epoch_of = lambda update: update * grad_accum // steps_per_epoch  # noqa: E731
    make = torchvision_reference_scheduler(kind, epochs, warmup, warmup_start, milestones=(3, 5))
    theirs = torch_curve(make, plan.total_updates, epoch_of=epoch_of)
    ours = our_curve(config, plan)
    assert_same_curve(ours, theirs, peak=0.4, host_atol=((warmup_start or START_FACTOR) - warmup_start) * 0.4 + 1e-15)
    by_epoch = ours[0][:, 0].reshape(epochs, -1)
    assert (by_epoch == by_epoch[:, :1]).all() and len(set(by_epoch[:, 0])) > 1  # one lr an epoch, not one a run


@pytest.mark.parametrize("unit", ["epoch", "update"])
@pytest.mark.parametrize("warmup, warmup_start", [(2, 0.125), (0, 0.0)])
def test_timm_cosine_is_timms_cosine_scheduler(unit, warmup, warmup_start):
    """timm's CosineLRScheduler as its train.py drives it: step(epoch + 1) after each epoch, or
    step_update(updates done) after each update (--sched-on-updates), its warmup from warmup_lr."""
    from timm.scheduler import CosineLRScheduler

    plan, peak = StepPlan(3, 1, 7), 0.4
    config = TrainConfig(schedule="timm_cosine", schedule_unit=unit, lr=peak, epochs=7, warmup_epochs=warmup,
                         warmup_start=warmup_start)
    per = 1 if unit == "epoch" else plan.steps_per_epoch

    def make(o):
        return CosineLRScheduler(o, t_initial=plan.epochs * per, warmup_t=warmup * per,
                                 warmup_lr_init=warmup_start * peak, t_in_epochs=unit == "epoch")

    def step(scheduler, done):
        scheduler.step_update(done)
        if done % plan.steps_per_epoch == 0:
            scheduler.step(done // plan.steps_per_epoch)

    theirs = torch_curve(make, plan.total_updates, peak=peak, step=step)
    ours = our_curve(config, plan)
    assert_same_curve(ours, theirs, peak=peak, host_atol=1e-15)
    assert ours[0][0, 0] == pytest.approx(warmup_start * peak if warmup else peak, abs=1e-15)
    if warmup:  # the cosine's own value at the warmup's end, below the peak: timm's shape, not torch's
        assert ours[0][warmup * plan.steps_per_epoch, 0] == pytest.approx(peak * 0.5 * (1 + np.cos(np.pi * warmup / 7)))


def test_an_update_spanning_two_epochs_takes_the_lr_of_its_first_step():
    """grad_accum 2 over 5-step epochs: update 2 is steps 4 and 5, in epochs 0 and 1; it takes epoch 0's lr."""
    plan = StepPlan(5, 2, 4)
    config = TrainConfig(schedule="cosine", schedule_unit="epoch", lr=0.4, epochs=4, grad_accum=2)
    lrs = our_curve(config, plan)[0][:, 0]
    epoch_lr = [0.4 * 0.5 * (1 + np.cos(np.pi * epoch / 4)) for epoch in range(4)]
    np.testing.assert_allclose(lrs, [epoch_lr[2 * u // 5] for u in range(plan.total_updates)], rtol=1e-12)


@pytest.mark.parametrize("settings, message", [
    (dict(schedule="onecycle", warmup_epochs=1.0), "onecycle warms up by itself"),
    (dict(schedule="multistep", warmup_epochs=1.0, milestones=(1.0, 3.0)), "must come after the warmup"),
    (dict(schedule="multistep", warmup_epochs=2.5), "(50% and 75% of the epochs)"),
    (dict(warmup_epochs=1.0, warmup_start=1.0), "warmup_start must be a fraction of lr in [0, 1)"),
    (dict(schedule="onecycle", schedule_unit="epoch"), "onecycle moves every update"),
    (dict(schedule_unit="epoch", warmup_epochs=0.5), "warmup_epochs and milestones must be whole epochs, got [0.5]"),
    (dict(schedule="multistep", schedule_unit="epoch", milestones=(1.5, 3.0)),
     "must be whole epochs, got [0.0, 1.5, 3.0]"),
    (dict(schedule_unit="epochs"), "unknown schedule_unit 'epochs'; choose from"),
])
def test_warmup_that_a_schedule_cannot_honour_is_refused(settings, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(TrainConfig(epochs=4, **settings))
