"""The jitted train step: same update as torch, gradient accumulation, bf16, optimizers, schedules."""

from __future__ import annotations

import dataclasses
import re

import jax
import numpy as np
import optax
import pytest
import torch
from flax import nnx

import flax_resnet
import torch_ref
from flax_resnet.core.augment import AugmentSpec
from flax_resnet.core.config import TrainConfig
from flax_resnet.core.plan import StepPlan
from flax_resnet.porting.state_dict import to_torch_state_dict
from flax_resnet.training.device_transforms import eval_transform
from flax_resnet.training.optim import make_optimizer
from flax_resnet.training.step import cross_entropy, data_mesh, jit_train_step, put_batch, split_model
from parity_tests.helpers.relu_patterns import pinned_flax_relus, pinned_torch_relus, record_torch_relus
from parity_tests.helpers.twins import relative_error
from torch_ref.training.optim import make_optimizer as make_torch_optimizer
from torch_ref.training.optim import set_hyperparameters
from torch_ref.training.step import train_step as torch_train_step

PLAIN = AugmentSpec(mean=(0.5,), std=(0.25,))  # normalize only: no randomness in the comparison
SHAPES = {"mnist_resnet": (28, 28, 1), "resnet20": (16, 16, 1)}


def batches(shape, count, size, seed=0):
    rng = np.random.default_rng(seed)
    return [{"image": rng.integers(0, 256, (size, *shape), dtype=np.uint8),
             "label": rng.integers(0, 10, size).astype(np.int32)} for _ in range(count)]


def flax_run(name, config, data, plan, augment=PLAIN, relu_patterns=None):
    """Flax model after the train step ran on each batch; (model state_dict, [metrics]).

    With `relu_patterns` (one list of masks per batch), each step applies its batch's patterns,
    compiled anew for every batch, since the masks become constants of the compiled step.
    """
    model = flax_resnet.create_model(name, in_channels=1, rngs=nnx.Rngs(0))
    tx, _ = make_optimizer(config, plan)
    graphdef, eval_graphdef, state = split_model(model, tx)
    mesh = data_mesh(jax.devices()[:1])
    history = []
    for index, batch in enumerate(data):
        if relu_patterns is None:
            step = jit_train_step(graphdef, tx, mesh, augment=augment, precision=config.precision)
            state, metrics = step(state, put_batch(batch, mesh), jax.random.key(0))
        else:
            step = jit_train_step.__wrapped__(graphdef, tx, mesh, augment=augment, precision=config.precision)
            with pinned_flax_relus(relu_patterns[index]):
                state, metrics = step(state, put_batch(batch, mesh), jax.random.key(0))
        history.append({k: float(v) for k, v in metrics.items()})
    return state, nnx.merge(eval_graphdef, state.params, state.batch_stats), history


def torch_run(name, config, data, plan, initial, dtype=torch.float32, relu_patterns=None):
    """torch_ref after torch_ref's train step ran on each batch; (model, [metrics], [ReLU patterns])."""
    model = torch_ref.create_model(name, in_channels=1)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in initial.items()}, strict=True)
    model.to(dtype)
    optimizer, schedule = make_torch_optimizer(model, config, plan)
    history, patterns = [], []
    for count, batch in enumerate(data):
        images = torch.from_numpy(np.array(eval_transform(batch["image"], PLAIN))).permute(0, 3, 1, 2).to(dtype)
        labels = torch.from_numpy(batch["label"]).long()
        with (record_torch_relus() if relu_patterns is None else pinned_torch_relus(relu_patterns[count])) as masks:
            history.append(torch_train_step(model, optimizer, images, labels, schedule=schedule, update=count))
        patterns.append(masks)
    return model, history, patterns


@pytest.mark.parametrize("name", ["mnist_resnet", "resnet20"])
def test_sgd_steps_match_torch(name, float64_enabled):
    """Same weights, same batches, SGD with Nesterov momentum and weight decay: after two steps
    every parameter and BatchNorm statistic agrees with torch.

    Both float32 runs apply the ReLU patterns of a float64 torch run (parity_tests/relu_patterns.py):
    after the first update, a ReLU input within rounding of zero would otherwise switch sides in
    one framework and not the other, and move the second step's loss by 1e-3.
    """
    config = TrainConfig(model=name, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-3, schedule="constant")
    plan = StepPlan(steps_per_epoch=2, grad_accum=1, epochs=1)
    data = batches(SHAPES[name], 2, 8)
    initial = to_torch_state_dict(flax_resnet.create_model(name, in_channels=1, rngs=nnx.Rngs(0)))
    _, _, patterns = torch_run(name, config, data, plan, initial, dtype=torch.float64)
    _, flax_model, flax_metrics = flax_run(name, config, data, plan, relu_patterns=patterns)
    torch_model, torch_metrics, _ = torch_run(name, config, data, plan, initial, relu_patterns=patterns)
    for count, (ours, theirs) in enumerate(zip(flax_metrics, torch_metrics)):
        assert abs(ours["loss"] - theirs["loss"]) <= 1e-4 * abs(theirs["loss"]), count

    expected = torch_model.state_dict()
    for key, value in to_torch_state_dict(flax_model).items():
        if key in dict(torch_model.named_parameters()):
            assert not np.array_equal(initial[key], expected[key].numpy()), f"{key} did not move"
        assert relative_error(value, expected[key].numpy()) <= 1e-4, key


def test_grad_accum_of_two_half_batches_is_one_full_batch():
    """mnist_resnet has no BatchNorm, so 2 micro-steps of 8 images equal 1 step of 16 exactly
    (up to float summation order): the mean of two half-batch mean gradients is the full mean."""
    config = TrainConfig(model="mnist_resnet", lr=0.05, momentum=0.9, weight_decay=1e-3, schedule="cosine")
    full = batches(SHAPES["mnist_resnet"], 2, 16, seed=1)
    halves = [{k: v[i:i + 8] for k, v in batch.items()} for batch in full for i in (0, 8)]
    one_state, one, _ = flax_run("mnist_resnet", config, full, StepPlan(2, 1, 1))
    accumulated = dataclasses.replace(config, grad_accum=2, batch_size=8)
    two_state, two, _ = flax_run("mnist_resnet", accumulated, halves, StepPlan(4, 2, 1))
    initial = to_torch_state_dict(flax_resnet.create_model("mnist_resnet", rngs=nnx.Rngs(0)))
    for key, value in to_torch_state_dict(one).items():
        assert not np.array_equal(value, initial[key]), key  # the updates did happen
        assert relative_error(to_torch_state_dict(two)[key], value) <= 1e-5, key
    # After an odd number of micro-steps nothing may change yet.
    odd_state, odd, _ = flax_run("mnist_resnet", accumulated, halves[:1], StepPlan(4, 2, 1))
    for key, value in to_torch_state_dict(odd).items():
        assert np.array_equal(value, initial[key]), key


def test_bf16_computes_in_bf16_and_keeps_fp32_state():
    config = TrainConfig(model="resnet20", precision="bf16", lr=0.05)
    model = flax_resnet.create_model("resnet20", in_channels=1, rngs=nnx.Rngs(0))
    tx, _ = make_optimizer(config, StepPlan(1, 1, 1))
    graphdef, _, state = split_model(model, tx)
    mesh = data_mesh(jax.devices()[:1])
    host_batch = batches(SHAPES["resnet20"], 1, 8)[0]
    batch = put_batch(host_batch, mesh)
    step = jit_train_step(graphdef, tx, mesh, augment=PLAIN, precision="bf16")
    hlo = step.lower(state, batch, jax.random.key(0)).as_text()
    assert re.search(r"convolution.*bf16", hlo), "no bf16 convolution in the compiled step"

    @jax.jit
    def fp32_loss(state, images, labels):
        logits = nnx.merge(graphdef, state.params, state.batch_stats, copy=True)(images)
        return cross_entropy(logits, labels).sum()

    reference = float(fp32_loss(state, eval_transform(host_batch["image"], PLAIN), host_batch["label"]))
    new_state, metrics = step(state, batch, jax.random.key(0))
    for part in (new_state.params, new_state.batch_stats, new_state.opt_state):
        floats = [x for x in jax.tree.leaves(part) if np.issubdtype(x.dtype, np.floating)]
        assert floats and all(x.dtype == np.float32 for x in floats)
    loss = float(metrics["loss"])
    assert loss != reference and abs(loss - reference) <= 3e-2 * reference


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
@pytest.mark.parametrize("optimizer, nesterov", [("sgd", True), ("sgd", False), ("adam", False), ("adamw", False)])
def test_optimizers_update_like_torch(optimizer, nesterov, schedule):
    """optax chain vs torch.optim on the same parameters and gradients, with a warmup-cosine lr, or
    onecycle's lr and cycled momentum (sgd) or beta1 (adam, adamw)."""
    config = TrainConfig(optimizer=optimizer, lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=0.01,
                         schedule=schedule, warmup_epochs=1 if schedule == "cosine" else 0, epochs=3)
    plan = StepPlan(steps_per_epoch=2, grad_accum=1, epochs=3)
    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((3, 4)).astype(np.float32), "b": rng.standard_normal(4).astype(np.float32)}
    grads = [{k: rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()} for _ in range(6)]

    tx, _ = make_optimizer(config, plan)
    flax_params, opt_state = dict(params), tx.init(params)
    for grad in grads:
        updates, opt_state = tx.update(grad, opt_state, flax_params)
        flax_params = optax.apply_updates(flax_params, updates)

    module = torch.nn.Module()
    for key, value in params.items():
        module.register_parameter(key, torch.nn.Parameter(torch.from_numpy(value.copy())))
    torch_optimizer, torch_schedule = make_torch_optimizer(module, config, plan)
    for count, grad in enumerate(grads):
        for key, p in module.named_parameters():
            p.grad = torch.from_numpy(grad[key])
        set_hyperparameters(torch_optimizer, torch_schedule, count)
        torch_optimizer.step()
    for key, p in module.named_parameters():
        assert not np.allclose(p.detach().numpy(), params[key]), key
        assert relative_error(flax_params[key], p.detach().numpy()) <= 1e-5, key
