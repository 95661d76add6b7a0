"""The learning-rate and momentum schedule of a TrainConfig: functions of the optimizer-update count.

Plain Python, shared by both trainers: `flax_resnet.training.optim` evaluates it inside the jitted
step (`xp=jax.numpy`, on a traced count), `torch_ref.training.optim` on the host (`xp=numpy`), so
the two frameworks follow the very same curve. Each schedule is the one torch's own classes give:

    constant   LinearLR warmup, then the peak
    cosine     LinearLR warmup, then CosineAnnealingLR down to 0 at the last update
    timm_cosine  timm's CosineLRScheduler (one cycle, no minimum, no warmup prefix): the cosine counts
               from the first update (or epoch), so the warmup replaces its start
    multistep  LinearLR warmup, then MultiStepLR: lr *= gamma at each milestone, a milestone
               given twice (or two that round to the same update) applying twice
    onecycle   OneCycleLR with its defaults, momentum (sgd) or beta1 (adam, adamw) cycled as well

By default the schedule moves every update. With schedule_unit 'epoch' it moves once an epoch, as
torchvision's and timm's reference scripts step their schedulers after each epoch: an update then
takes the lr of the epoch its first step falls in, and warmup, total and milestones count epochs.

The warmup rises linearly from peak * warmup_start (LinearLR's start_factor, torchvision's
--lr-warmup-decay) to the peak. torch's LinearLR cannot start from exactly 0 (start_factor must be
> 0); warmup_start 0, the default, is its limit.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from flax_resnet.core.config import TrainConfig
from flax_resnet.core.plan import StepPlan

ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam's and AdamW's defaults, used by both frameworks
ADAM_EPS = 1e-8

# torch.optim.lr_scheduler.OneCycleLR's defaults (two phases, cosine annealing).
ONECYCLE_PCT_START = 0.3
ONECYCLE_DIV_FACTOR = 25.0
ONECYCLE_FINAL_DIV_FACTOR = 1e4
ONECYCLE_BASE_MOMENTUM = 0.85
ONECYCLE_MAX_MOMENTUM = 0.95


@dataclasses.dataclass(frozen=True)
class Schedule:
    """lr and momentum as functions of the optimizer-update count (0 for the first update).

    Hashable, so equal settings give equal schedules (and jitted steps that are reused).
    """

    kind: str  # 'constant', 'cosine', 'timm_cosine', 'multistep' or 'onecycle'
    peak: float  # the peak learning rate
    # total, warmup and milestones count updates, or epochs where steps_per_epoch is set
    total: int  # in the whole run
    warmup: int = 0  # of linear warmup (all but onecycle)
    milestones: tuple[int, ...] = ()  # multistep: from each, lr is multiplied by gamma once more
    gamma: float = 0.1
    momentum: float = 0.9  # sgd momentum or adam's beta1 when it is not cycled
    warmup_start: float = 0.0  # the warmup's first lr as a fraction of the peak
    steps_per_epoch: int = 0  # schedule_unit 'epoch' (0: every update): train steps in an epoch,
    grad_accum: int = 1  # and train steps in an update, which say the epoch of an update

    def _position(self, update):
        """Where update number `update` stands on the curve: the update itself, or its epoch."""
        if self.steps_per_epoch:
            return (update * self.grad_accum) // self.steps_per_epoch * 1.0
        return update * 1.0  # float64 with numpy, the default float inside a jitted step

    def learning_rate(self, update, xp=np):
        """The learning rate of optimizer update number `update` (an int or an integer array)."""
        t = self._position(update)
        if self.kind == "onecycle":
            return self._onecycle(t, xp)[0]
        if self.kind == "constant":
            lr = self.peak + 0.0 * t
        elif self.kind == "cosine":
            span = max(self.total, self.warmup + 1) - self.warmup
            done = xp.clip(t - self.warmup, 0, span) / span
            lr = self.peak * 0.5 * (1 + xp.cos(math.pi * done))
        elif self.kind == "timm_cosine":
            lr = self.peak * 0.5 * (1 + xp.cos(math.pi * xp.clip(t, 0, self.total) / self.total))
        elif self.kind == "multistep":
            decays = sum(xp.where(t >= milestone, 1, 0) for milestone in self.milestones)
            lr = self.peak * xp.power(self.gamma, decays * 1.0)
        else:
            raise ValueError(f"unknown schedule {self.kind!r}")
        if self.warmup:
            factor = self.warmup_start + (1 - self.warmup_start) * t / self.warmup
            lr = xp.where(t < self.warmup, self.peak * factor, lr)
        return lr

    def momentum_at(self, update, xp=np):
        """sgd's momentum (or adam's beta1) at update number `update`: cycled by onecycle, else constant."""
        t = self._position(update)
        if self.kind == "onecycle":
            return self._onecycle(t, xp)[1]
        return self.momentum + 0.0 * t

    def _onecycle(self, t, xp):
        # OneCycleLR.get_lr: phase 1 ends at step pct_start * total - 1 (a float), phase 2 at total - 1;
        # within a phase, cosine annealing from its start to its end value.
        initial = self.peak / ONECYCLE_DIV_FACTOR
        final = initial / ONECYCLE_FINAL_DIV_FACTOR
        end_up = float(ONECYCLE_PCT_START * self.total) - 1
        end_down = self.total - 1
        rising = t <= end_up
        start = xp.where(rising, 0.0, end_up)
        length = xp.where(rising, end_up, end_down - end_up)
        length = xp.where(length == 0, 1.0, length)  # a phase of zero length is never entered
        done = xp.minimum((t - start) / length, 1.0)
        weight = (xp.cos(math.pi * done) + 1) / 2  # 1 at a phase's start, 0 at its end

        def anneal(up_from, up_to, down_from, down_to):
            begin, end = xp.where(rising, up_from, down_from), xp.where(rising, up_to, down_to)
            return end + (begin - end) * weight

        lr = anneal(initial, self.peak, self.peak, final)
        momentum = anneal(ONECYCLE_MAX_MOMENTUM, ONECYCLE_BASE_MOMENTUM, ONECYCLE_BASE_MOMENTUM,
                          ONECYCLE_MAX_MOMENTUM)
        return lr, momentum


def make_schedule(config: TrainConfig, plan: StepPlan) -> Schedule:
    """The schedule `config` asks for over the run `plan` describes."""
    momentum = config.momentum if config.optimizer == "sgd" else ADAM_BETAS[0]
    by_epoch = config.schedule_unit == "epoch"
    position = (lambda epoch: math.ceil(epoch)) if by_epoch else plan.updates_at
    milestones = ()
    if config.schedule == "multistep":
        epochs = config.milestones or (0.5 * config.epochs, 0.75 * config.epochs)
        milestones = tuple(position(epoch) for epoch in epochs)
    warmup = position(config.warmup_epochs) if config.schedule != "onecycle" else 0
    total = config.epochs if by_epoch else plan.total_updates
    epoch_steps = dict(steps_per_epoch=plan.steps_per_epoch, grad_accum=plan.grad_accum) if by_epoch else {}
    return Schedule(config.schedule, config.lr, total, warmup, milestones, config.gamma, momentum,
                    config.warmup_start, **epoch_steps)


def learning_rate_at_step(schedule: Schedule, step: int, grad_accum: int) -> float:
    """The learning rate in force at train step `step` (0-based; grad_accum steps per update)."""
    return float(schedule.learning_rate(step // grad_accum))
