"""The jit-compiled train and eval steps: pure functions of the model state and a batch.

The model is split once into a static graphdef and its state (parameters, BatchNorm statistics);
the step merges them inside the trace, so nothing object-like crosses the jit boundary. Data
parallel: the batch is sharded over a 1-d device mesh and the state replicated, so XLA inserts the
cross-device reductions and BatchNorm normalizes with the statistics of the global batch.
"""

from __future__ import annotations

import collections
import functools
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flax_resnet.core.augment import AugmentSpec
from flax_resnet.core.config import ConfigError
from flax_resnet.models import xla_cpu
from flax_resnet.models.layers import DropPath
from flax_resnet.training.device_transforms import eval_transform, train_transform
from flax_resnet.training.losses import train_losses
from flax_resnet.training.mixing import mix_for_step
from flax_resnet.training.stochastic_depth import step_dropout_key

COMPUTE_DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16}


class TrainState(NamedTuple):
    """Everything a step changes. Parameters, optimizer state and statistics are always fp32."""

    params: nnx.State
    batch_stats: nnx.State  # BatchNorm running mean/var/count (empty for BN-free models)
    opt_state: Any
    step: jax.Array  # train steps taken (int32); the augmentation key is folded from it


def split_model(model: nnx.Module, tx: optax.GradientTransformation):
    """(train graphdef, eval graphdef, TrainState) of a model. Leaves the model in eval mode."""
    model.train()
    train_graphdef, params, batch_stats = nnx.split(model, nnx.Param, ...)
    model.eval()
    eval_graphdef = nnx.split(model, nnx.Param, ...)[0]
    state = TrainState(params, batch_stats, tx.init(params), jnp.zeros((), jnp.int32))
    return train_graphdef, eval_graphdef, state


def frozen_bn_graphdef(model: nnx.Module):
    """The graphdef of a train step with frozen BatchNorm (running statistics, no updates) whose
    stochastic depth still drops, as torch_ref's step puts only its BatchNorms in eval mode.
    Leaves the model in eval mode."""
    model.set_attributes(use_running_average=True, deterministic=False, raise_if_not_found=False)
    graphdef = nnx.split(model, nnx.Param, ...)[0]
    model.eval()
    return graphdef


def merge_model(eval_graphdef, state: TrainState) -> nnx.Module:
    """The model (eval mode) holding a TrainState's parameters and statistics."""
    return nnx.merge(eval_graphdef, state.params, state.batch_stats)


def _cast_floating(tree, dtype):
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def cross_entropy(logits, labels, label_smoothing: float = 0.0):
    """Per-example cross entropy, as torch's CrossEntropyLoss(label_smoothing=...)."""
    if label_smoothing:
        targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
        return optax.softmax_cross_entropy(logits, targets)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def _random_streams(model: nnx.Module, key) -> dict:
    """{'rngs': a 'dropout' stream from `key`} for a model with stochastic depth (`DropPath`);
    {} for the others, which take no rngs."""
    if any(isinstance(module, DropPath) for _, module in nnx.iter_modules(model)):
        return {"rngs": nnx.Rngs(dropout=key)}
    return {}


def train_step(graphdef, state: TrainState, batch, rng, *, tx, augment: AugmentSpec, precision: str,
               label_smoothing: float, loss: str = "cross_entropy", bce_target_threshold: float | None = None):
    """One step: augment, forward in the compute dtype, backward, optimizer update, new BN statistics.

    batch: {'image': uint8 NHWC, 'label': int32}. rng: the run's base key; this step's key is
    folded from `state.step`, so a resumed run draws the same augmentation (and the same
    stochastic-depth masks, from the step's 'dropout' key, `stochastic_depth.step_dropout_key`).
    Returns (new state, {'loss', 'correct', 'count'}) with sums over the batch.
    """
    dtype = COMPUTE_DTYPES[precision]
    labels, targets = batch["label"], None
    if augment.mixing is None:
        images = train_transform(jax.random.fold_in(rng, state.step), batch["image"], augment, dtype)
    else:  # mixed in float32, as the torch twin receives the pixels
        images = train_transform(jax.random.fold_in(rng, state.step), batch["image"], augment, jnp.float32)
        images, targets = mix_for_step(rng, state.step, images, labels, augment.mixing)
        images = images.astype(dtype)
    dropout_key = step_dropout_key(rng, state.step)

    def loss_fn(params):
        # bf16: the matmuls and convs see bf16 copies; gradients flow back to the fp32 originals.
        # copy=True: fresh Variables belonging to this trace, so BatchNorm may update them here.
        model = nnx.merge(graphdef, _cast_floating(params, dtype), state.batch_stats, copy=True)
        logits = model(images, **_random_streams(model, dropout_key)).astype(jnp.float32)
        losses = train_losses(logits, labels, targets, loss=loss, label_smoothing=label_smoothing,
                              target_threshold=bce_target_threshold)
        new_batch_stats = nnx.split(model, nnx.Param, ...)[2]
        return losses.mean(), (losses, logits, new_batch_stats)

    grads, (losses, logits, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": losses.sum(),
        "correct": (jnp.argmax(logits, -1) == labels).sum().astype(jnp.float32),
        "count": jnp.asarray(labels.shape[0], jnp.float32),
    }
    return TrainState(params, batch_stats, opt_state, state.step + 1), metrics


def eval_step(graphdef, state: TrainState, batch, *, augment: AugmentSpec, precision: str):
    """Loss and accuracy sums with BatchNorm's running averages. batch['mask'] is 0 for padding."""
    dtype = COMPUTE_DTYPES[precision]
    images = eval_transform(batch["image"], augment, dtype)
    model = nnx.merge(graphdef, _cast_floating(state.params, dtype), state.batch_stats)
    logits = model(images).astype(jnp.float32)
    mask = batch["mask"]
    return {
        "loss": (optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]) * mask).sum(),
        "correct": ((jnp.argmax(logits, -1) == batch["label"]) * mask).sum(),
        "count": mask.sum(),
    }


# ---------------------------------------------------------------------------------------------
# Compilation and placement over devices
# ---------------------------------------------------------------------------------------------

def select_devices(device: str = "auto") -> list:
    """The devices a run uses: 'auto' (JAX's default backend: a GPU when JAX's CUDA plugin finds one),
    'cpu' or 'gpu'. Raises ConfigError when no device of the asked kind is visible."""
    if device == "auto":
        return jax.devices()
    try:
        return jax.devices(device)
    except RuntimeError:
        hint = " (JAX's CUDA wheels: `make install` on a machine with nvidia-smi, or GPU=1)" if device == "gpu" else ""
        raise ConfigError(f"no {device} device visible to JAX{hint}; --device auto takes what there is") from None


def matmul_precision(tf32: bool) -> str:
    """JAX's precision for float32 matmuls and convolutions: TF32 only if asked for, as torch's
    `allow_tf32` flags (torch_ref.training.step.set_tf32); else exact float32. It matters on NVIDIA
    GPUs from Ampere on; CPUs compute float32 either way, and bf16 compute is unaffected."""
    return "tensorfloat32" if tf32 else "float32"


def _with_precision(step, tf32: bool):
    """`step`, traced under `matmul_precision(tf32)`."""
    @functools.wraps(step)
    def traced(*args, **kwargs):
        with jax.default_matmul_precision(matmul_precision(tf32)):
            return step(*args, **kwargs)

    return traced


def data_mesh(devices=None) -> Mesh:
    """A 1-d mesh named 'data' over the given (default: all) devices."""
    return _mesh(tuple(devices if devices is not None else jax.devices()))


@functools.lru_cache(maxsize=None)
def _mesh(devices: tuple) -> Mesh:
    return Mesh(np.array(devices), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec("data"))


# Cached: a second run in the same process with the same model, optimizer object (see
# flax_resnet.training.optim.make_optimizer) and settings gets the same jitted function, already compiled.
@functools.lru_cache(maxsize=8)
def jit_train_step(graphdef, tx, mesh: Mesh, *, augment: AugmentSpec, precision: str = "fp32",
                   label_smoothing: float = 0.0, loss: str = "cross_entropy",
                   bce_target_threshold: float | None = None, cpu_tuned: bool = True, tf32: bool = False):
    """train_step, jitted over `mesh`: (state, batch, rng) -> (state, metrics). The state is donated.

    `cpu_tuned`: compile with `xla_cpu.COMPILER_OPTIONS` on CPU (False: XLA's defaults).
    `tf32`: float32 matmuls and convolutions may use TF32 (`matmul_precision`).
    """
    step = _with_precision(functools.partial(train_step, graphdef, tx=tx, augment=augment, precision=precision,
                                             label_smoothing=label_smoothing, loss=loss,
                                             bce_target_threshold=bce_target_threshold), tf32)
    return jax.jit(step, in_shardings=(replicated(mesh), batch_sharded(mesh), replicated(mesh)),
                   out_shardings=(replicated(mesh), replicated(mesh)), donate_argnums=0,
                   compiler_options=xla_cpu.compiler_options(cpu_tuned))


@functools.lru_cache(maxsize=8)
def jit_eval_step(graphdef, mesh: Mesh, *, augment: AugmentSpec, precision: str = "fp32",
                  cpu_tuned: bool = True, tf32: bool = False):
    """eval_step, jitted over `mesh`: (state, batch) -> metric sums."""
    step = _with_precision(functools.partial(eval_step, graphdef, augment=augment, precision=precision), tf32)
    return jax.jit(step, in_shardings=(replicated(mesh), batch_sharded(mesh)), out_shardings=replicated(mesh),
                   compiler_options=xla_cpu.compiler_options(cpu_tuned))


def put_batch(local_batch: dict[str, np.ndarray], mesh: Mesh):
    """The global batch on the mesh, split along the batch axis, from this process's part of it.

    With one process that part is the whole batch. With several, process i holds the i-th
    contiguous slice of every global batch (`flax_resnet.core.data.ProcessShard`), and the global array is
    assembled from the pieces without any process holding the others'.
    """
    sharding = batch_sharded(mesh)
    if jax.process_count() == 1:
        return jax.device_put(local_batch, sharding)
    return {key: jax.make_array_from_process_local_data(sharding, value) for key, value in local_batch.items()}


def prefetch(make_batch: Callable[[Any], Any], items: Iterable, size: int = 2) -> Iterator:
    """Yield `make_batch(item)` for each item; when one is handed out, the next `size` - 1 are made.

    With `make_batch` gathering a host batch and placing it (`put_batch`; JAX copies to a GPU
    asynchronously), the next batch is on its way before the current step is dispatched, so the
    step never waits for its input. (A background thread for this was slower: on a loaded 2-core
    CPU, handing each batch between threads cost more than making it.)
    """
    items = iter(items)
    pending = collections.deque(make_batch(item) for item in itertools.islice(items, size))
    while pending:
        yield pending.popleft()  # the caller dispatches its step before the next batch is made
        pending.extend(make_batch(item) for item in itertools.islice(items, 1))
