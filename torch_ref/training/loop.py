"""The torch trainer, the twin of `flax_resnet.training.loop`: the torch half of a run whose story
is `flax_resnet.core.run.skeleton.run`, so both write the same files in the workdir.

It uses JAX (not Flax) for one thing: the random draws of a step (the augmentation, and the
stochastic-depth masks), so that both trainers compute the very same pixels and drop the very
same residual branches.
"""

from __future__ import annotations

import collections
import functools
import itertools
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch

import torch_ref
from flax_resnet.core.config import TrainConfig
from flax_resnet.core.data import ProcessShard, TrainingData
from flax_resnet.core.ema import run_decay
from flax_resnet.core.initial_weights import initial_state_dict
from flax_resnet.core.plan import AUGMENT_STREAM, REFRESH_SECONDS, RunSetup, TrainResult, resolve_precision
from flax_resnet.core.run.interrupts import StopRequests
from flax_resnet.core.run.progress import Progress
from flax_resnet.core.run.skeleton import run
from flax_resnet.core.run.workdir import check_finite, live_metrics, progress_bar
from flax_resnet.training.device_transforms import eval_transform, train_transform
from flax_resnet.training.mixing import mix_for_step
from flax_resnet.training.stochastic_depth import step_keep_masks
from torch_ref.training.ema import ExponentialMovingAverage, update_after_step
from torch_ref.training.optim import make_optimizer
from torch_ref.training.run_checkpoints import RunCheckpoints
from torch_ref.training.step import drop_paths, eval_step, select_device, set_tf32, train_step


class Backend:
    """The torch half of a training run, the twin of `flax_resnet.training.loop.Backend`: the same
    data, batches, augmented pixels, initial weights, optimizer and schedule, on the CPU or a CUDA
    GPU (`config.device`). On a GPU the model and batches are channels_last."""

    framework = "torch"
    num_devices = 1
    is_main = True
    shard = ProcessShard()

    def start(self, config: TrainConfig) -> TrainConfig:
        self.device = select_device(config.device)
        set_tf32(config.tf32)
        # JAX only computes the pixels here, on the CPU; it must not take the GPU's memory from torch.
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        torch.manual_seed(config.seed)
        return resolve_precision(config, self.device.type)

    def describe(self) -> str:
        return f"torch {torch.__version__} on {self.device.type}"

    def state_shapes(self, config: TrainConfig, setup: RunSetup) -> dict[str, tuple[int, ...]]:
        return state_shapes(config, setup)

    def build_model(self, config: TrainConfig, setup: RunSetup, data: TrainingData, initial) -> None:
        self.model = build_model(config, setup, initial).to(self.device, memory_format=memory_format(self.device))

    def build_optimizer(self, config: TrainConfig, setup: RunSetup):
        self.config, self.setup = config, setup
        self.optimizer, schedule = make_optimizer(self.model, config, setup.plan)
        self.schedule = schedule
        self.host = jax.devices("cpu")[0]
        self.rng = jax.device_put(jax.random.fold_in(jax.random.key(config.seed), AUGMENT_STREAM), self.host)
        self.augment_steps, self.prepare_eval = jitted_transforms(setup.augment)
        self.ema = ExponentialMovingAverage(self.model, run_decay(config), self.device) if config.model_ema else None
        keep_probs = tuple(1.0 - layer.drop_prob for layer in drop_paths(self.model))
        self.keep_masks = jitted_keep_masks(keep_probs, config.batch_size) if keep_probs else None
        return schedule

    def checkpoints(self, workdir, keep: int, *, steps_per_epoch: int, warn) -> RunCheckpoints:
        return RunCheckpoints(workdir, keep, steps_per_epoch=steps_per_epoch, warn=warn)

    def stop_requests(self) -> StopRequests:
        return StopRequests()

    def restore(self, checkpoints: RunCheckpoints) -> Progress:
        progress = checkpoints.restore(self.model, self.optimizer, self.ema)
        self._step = progress.step
        return progress

    def compile(self, data: TrainingData) -> None:
        return None  # eager: nothing to compile ahead

    def train_epoch(self, data: TrainingData, epoch: int, resumed: Progress | None, *, last_good, run_dir,
                    on_step) -> tuple[dict[str, float], float]:
        def after_step(steps_done, totals, metrics, position):
            if self.ema is not None:
                step = (epoch - 1) * self.setup.plan.steps_per_epoch + steps_done - 1  # the step just done
                update_after_step(self.ema, self.model, step, steps_per_epoch=self.setup.plan.steps_per_epoch,
                                  every=self.config.model_ema_steps, warmup_epochs=self.config.warmup_epochs)
            on_step(steps_done, totals, metrics, position)

        self._step, totals, seconds = train_epoch(
            self.model, self.optimizer, self.schedule, self.augment_steps, self.rng, data, self.config, epoch,
            self._step, last_good=last_good, run_dir=run_dir, start=resumed.steps_done if resumed else 0,
            totals=dict(resumed.totals) if resumed else None, on_step=after_step, keep_masks=self.keep_masks)
        return totals, seconds

    def evaluate(self, data: TrainingData) -> dict[str, float]:
        with jax.default_device(self.host):
            return evaluate(self.model, self.prepare_eval, data, self.setup.eval_batch_size, self.config.precision)

    def evaluate_ema(self, data: TrainingData) -> dict[str, float]:
        with jax.default_device(self.host):
            return evaluate(self.ema.module, self.prepare_eval, data, self.setup.eval_batch_size,
                            self.config.precision)

    @property
    def step(self) -> int:
        return self._step

    def save(self, checkpoints: RunCheckpoints, progress: Progress, **kwargs) -> None:
        checkpoints.save(self.model, self.optimizer, progress, ema=self.ema, **kwargs)

    def finish(self):
        self.model.eval()
        return self.model, self.model.state_dict()

    def ema_state_dict(self) -> dict[str, torch.Tensor]:
        return self.ema.module.state_dict()


def train(config: TrainConfig, *, on_epoch_end: Callable[[dict], None] | None = None) -> TrainResult:
    """Train `config` (framework 'torch') with torch_ref; see `flax_resnet.core.run.skeleton.run`. The
    model starts from the same `initial_weights` as the Flax trainer's with the same seed, so both
    runs start identical."""
    return run(config, Backend(), on_epoch_end=on_epoch_end)


def build_model(config: TrainConfig, setup: RunSetup, initial=None) -> torch.nn.Module:
    """The model with `initial` weights (a numpy state_dict), by default `initial_weights` drawn
    from `config.seed`: the Flax trainer's start."""
    model = torch_ref.create_model(config.model, **setup.model_kwargs)
    if initial is None:
        initial = initial_state_dict(config.model, setup.model_kwargs, state_shapes(config, setup), config.seed)
    model.load_state_dict({key: torch.from_numpy(value) for key, value in initial.items()}, strict=True)
    return model


def state_shapes(config: TrainConfig, setup: RunSetup) -> dict[str, tuple[int, ...]]:
    """The model's state_dict shapes, from a model on the meta device (nothing allocated)."""
    with torch.device("meta"):
        model = torch_ref.create_model(config.model, **setup.model_kwargs)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def train_epoch(model, optimizer, schedule, augment_steps, rng, data: TrainingData, config: TrainConfig,
                epoch: int, step: int, *, last_good: str | None, run_dir, start: int = 0, totals=None,
                on_step=None, keep_masks=None):
    """One pass over the shuffled training set, from batch `start` on (`totals`: the sums of the
    batches before it). `on_step(steps_done, totals, metrics, position)` runs after every step;
    `position` is the data's resumable position (`EpochBatches.state_at`). `keep_masks`: a model
    with stochastic depth applies the Flax step's masks (`jitted_keep_masks`; None: no DropPath).
    Returns (step, metric sums, seconds); the sums include `skipped_images`, the undecodable
    images replaced (in the batches from `start` on).

    The sums stay on the device and are read at each progress refresh (the only wait for the
    device), while the next batches are already on their way to it.
    """
    batches = data.train_batches(epoch, seed=config.seed, batch_size=config.batch_size, start_step=start)
    steps = data.steps_per_epoch(config.batch_size)
    device = next(model.parameters()).device
    if totals is not None:
        totals = {key: torch.tensor(float(value), device=device) for key, value in totals.items()}
    sums = _host(totals) if totals is not None else None
    start_time, last_refresh = time.perf_counter(), 0.0
    prepared = prepare_batches(augment_steps, rng, batches, step, keep_masks)  # on the CPU, where `rng` is
    with batches, progress_bar(steps, epoch, config.epochs, config.progress) as bar:
        bar.update(start)
        for index, (images, labels, targets, masks) in enumerate(prefetch_to(device, prepared), start + 1):
            update = step // config.grad_accum if (step + 1) % config.grad_accum == 0 else None
            metrics = train_step(model, optimizer, images, labels, schedule=schedule, update=update,
                                 grad_accum=config.grad_accum, precision=config.precision,
                                 label_smoothing=config.label_smoothing,
                                 freeze_bn=config.freeze_bn or config.freeze_backbone, targets=targets,
                                 loss=config.loss, bce_target_threshold=config.bce_target_threshold,
                                 keep_masks=masks)
            step += 1
            totals = metrics if totals is None else {key: totals[key] + metrics[key] for key in totals}
            now = time.perf_counter()
            if now - last_refresh >= REFRESH_SECONDS or index == steps:
                last_refresh, sums = now, _host(totals)
                check_finite(sums["loss"], epoch=epoch, step=index, last_good=last_good, workdir=run_dir)
                bar.set_postfix(live_metrics(sums, now - start_time), refresh=False)
            bar.update()
            if on_step is not None:
                on_step(index, totals, metrics, batches.state_at(index))
    return step, {**sums, "skipped_images": batches.skipped_images}, time.perf_counter() - start_time


def _host(totals: dict[str, torch.Tensor]) -> dict[str, float]:
    return {key: float(value) for key, value in totals.items()}


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on CUDA, where cuDNN's NHWC kernels are the fast ones; torch's default elsewhere."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def prefetch_to(device: torch.device, batches, size: int = 2):
    """Yield each tuple of `batches` with its tensors on `device`, the next `size` - 1 tuples already
    on their way (copied from pinned memory asynchronously on CUDA; images channels_last there)."""
    def move(value):
        if not isinstance(value, torch.Tensor) or device.type == "cpu":
            return value
        layout = memory_format(device) if value.ndim == 4 else torch.preserve_format
        return value.pin_memory().to(device, non_blocking=True, memory_format=layout)

    iterator = (tuple(move(value) for value in batch) for batch in batches)
    queue = collections.deque(itertools.islice(iterator, size))
    while queue:
        yield queue.popleft()
        queue.extend(itertools.islice(iterator, 1))


# JAX prepares the pixels (the Flax step's own augmentation) for many steps in one call:
# interleaving a small JAX call with every torch step makes the two libraries' thread pools fight
# over the cores, several times slower on a small CPU. CHUNK_BYTES bounds a chunk's uint8 pixels,
# so ImageNet-sized batches come a few at a time.
CHUNK_STEPS = 32
CHUNK_BYTES = 64 << 20


@functools.lru_cache(maxsize=8)
def jitted_transforms(spec):
    """(augment_steps, prepare_eval), jitted once per setting.

    augment_steps(rng, first_step, images[k, batch, ...], labels[k, batch]) -> (the augmented
    images of k steps, the same pixels the Flax step uses at those steps; their mixed soft targets,
    or None when `spec` mixes nothing).
    """
    def augment_steps(rng, first_step, images, labels):
        def augment_step(step, images, labels):
            pixels = train_transform(jax.random.fold_in(rng, step), images, spec)
            if spec.mixing is None:
                return pixels, None
            return mix_for_step(rng, step, pixels, labels, spec.mixing)

        steps = first_step + jnp.arange(images.shape[0])
        return jax.vmap(augment_step)(steps, images, labels)

    return jax.jit(augment_steps), jax.jit(functools.partial(eval_transform, spec=spec))


@functools.lru_cache(maxsize=8)
def jitted_keep_masks(keep_probs: tuple[float, ...], batch_size: int):
    """keep_masks(rng, steps[k]) -> bool (k, DropPaths, batch_size): the stochastic-depth masks
    the Flax step draws at those steps, for DropPaths of these keep probabilities (call order)."""
    def keep_masks(rng, steps):
        return jax.vmap(lambda step: step_keep_masks(rng, step, batch_size, keep_probs))(steps)

    return jax.jit(keep_masks)


def prepare_batches(augment_steps, rng, batches, first_step: int, keep_masks=None):
    """Yield (NCHW images, int64 labels, soft targets or None, stochastic-depth masks or None) for
    each batch of the epoch, a chunk of steps at a time."""
    chunk_steps, done = None, 0
    while True:
        chunk = list(itertools.islice(batches, chunk_steps or 1))
        if not chunk:
            return
        if chunk_steps is None:  # sized by the first batch, then fixed: one compiled chunk shape
            chunk_steps = max(1, min(CHUNK_STEPS, CHUNK_BYTES // chunk[0]["image"].nbytes))
            chunk.extend(itertools.islice(batches, chunk_steps - 1))
        pixels, targets = augment_steps(rng, first_step + done, np.stack([batch["image"] for batch in chunk]),
                                        np.stack([batch["label"] for batch in chunk]))
        pixels = np.asarray(pixels)
        targets = [None] * len(chunk) if targets is None else np.asarray(targets)
        steps = first_step + done + np.arange(len(chunk), dtype=np.int32)
        masks = [None] * len(chunk) if keep_masks is None else np.asarray(keep_masks(rng, steps))
        done += len(chunk)
        for images, batch, mixed, keep in zip(pixels, chunk, targets, masks):
            yield (_nchw(images), torch.from_numpy(batch["label"].astype(np.int64)),
                   None if mixed is None else torch.from_numpy(np.array(mixed)),
                   None if keep is None else torch.from_numpy(np.array(keep)))


def _nchw(images) -> torch.Tensor:
    return torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).contiguous()


def evaluate(model, prepare_eval, data: TrainingData, batch_size: int, precision: str) -> dict[str, float]:
    """Loss and accuracy sums over the held-out set."""
    device = next(model.parameters()).device
    totals = None
    with data.eval_batches(batch_size) as batches:
        prepared = ((_nchw(prepare_eval(batch["image"])), torch.from_numpy(batch["label"].astype(np.int64)),
                     torch.from_numpy(np.asarray(batch["mask"]))) for batch in batches)
        for images, labels, mask in prefetch_to(device, prepared):
            metrics = eval_step(model, images, labels, mask, precision=precision)
            totals = metrics if totals is None else {key: totals[key] + metrics[key] for key in totals}
    return {**_host(totals), "skipped_images": batches.skipped_images}

