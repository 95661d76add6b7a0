"""The moving average of the weights, LAMB and the decay groups inside both trainers: they train the
same in Flax and in the torch twin, the average is evaluated, exported and resumed exactly, and the
decay groups reach the optimizers."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
import torch
from flax import nnx
from safetensors.numpy import load_file

import flax_resnet
import torch_ref
from flax_resnet.core.config import ConfigError, TrainConfig
from flax_resnet.core.plan import StepPlan
from flax_resnet.porting.state_dict import state_to_torch
from flax_resnet.training import run_checkpoints as flax_checkpoints
from flax_resnet.training import train
from flax_resnet.training.optim import make_optimizer
from parity_tests.helpers.training_fixtures import assert_same_history, tiny
from torch_ref.training import run_checkpoints as torch_checkpoints
from torch_ref.training.optim import make_optimizer as make_torch_optimizer

# 64 images in batches of 16: 4 steps an epoch. An update every 2 steps, reset in the first half epoch.
EMA = dict(model_ema=True, model_ema_steps=2, model_ema_decay=0.99, warmup_epochs=0.5)
RECIPES = {
    "lamb": dict(optimizer="lamb", lr=0.005, weight_decay=0.02, norm_weight_decay=0.0, bias_weight_decay=0.0, **EMA),
}


def weights(workdir, name: str) -> dict[str, np.ndarray]:
    return load_file(Path(workdir) / f"{name}.safetensors")


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_runs_with_an_average_agree_between_the_frameworks(recipe, mnist_dir, tmp_path):
    settings = dict(epochs=2, **RECIPES[recipe])
    flax_run = train(tiny(mnist_dir, tmp_path / "flax", **settings))
    torch_run = train(tiny(mnist_dir, tmp_path / "torch", framework="torch", **settings))
    for ours, theirs in zip(torch_run.history, flax_run.history):
        for key in ("train_loss", "test_loss", "ema_test_loss"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-4), (recipe, ours["epoch"], key)
    for name in ("model", "model_ema"):
        flax_weights, torch_weights = weights(flax_run.workdir, name), weights(torch_run.workdir, name)
        assert flax_weights.keys() == torch_weights.keys()
        for key, value in flax_weights.items():
            scale = max(1.0, float(np.abs(value).max()))
            np.testing.assert_allclose(torch_weights[key], value, rtol=1e-4, atol=1e-5 * scale, err_msg=(name, key))
    # the average is no copy: after the warmup it lags the weights
    raw, averaged = weights(flax_run.workdir, "model"), weights(flax_run.workdir, "model_ema")
    assert max(float(np.abs(raw[k] - averaged[k]).max()) for k in raw if raw[k].dtype.kind == "f") > 1e-4
    assert flax_run.history[-1]["ema_test_loss"] != flax_run.history[-1]["test_loss"]
    recorded = json.loads((tmp_path / "flax" / "config.json").read_text())
    assert {key: recorded[key] for key in RECIPES[recipe]} == RECIPES[recipe]


def stop_after_checkpoint(module, step: int, monkeypatch):
    """Raise KeyboardInterrupt right after the checkpoint of train step `step` is written."""
    original = module.RunCheckpoints.save

    def save(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if args[-1].step == step:
            raise KeyboardInterrupt

    monkeypatch.setattr(module.RunCheckpoints, "save", save)


@pytest.mark.parametrize("framework, module", [("flax", flax_checkpoints), ("torch", torch_checkpoints)])
def test_a_run_with_an_average_resumes_mid_epoch_exactly(framework, module, mnist_dir, tmp_path, monkeypatch):
    settings = dict(framework=framework, epochs=2, checkpoint_every=5, **RECIPES["lamb"])
    whole = train(tiny(mnist_dir, tmp_path / "whole", **settings))
    with monkeypatch.context() as patch:
        stop_after_checkpoint(module, 5, patch)  # epoch 2, after its first step: the average updated at step 4
        with pytest.raises(KeyboardInterrupt):
            train(tiny(mnist_dir, tmp_path / "split", **settings))
    resumed = train(tiny(mnist_dir, tmp_path / "split", **settings))
    assert_same_history(resumed.history, whole.history)
    for name in ("model", "model_ema"):
        expected = weights(whole.workdir, name)
        for key, value in weights(resumed.workdir, name).items():
            np.testing.assert_array_equal(value, expected[key], err_msg=(name, key))


def test_norm_and_bias_decays_reach_both_optimizers():
    """With zero gradients an SGD update is the decay alone: the norms' and biases' parameters keep
    their values, every other one shrinks by lr * weight_decay, in both frameworks."""
    config = TrainConfig(model="mnist_resnet", optimizer="sgd", momentum=0.0, lr=0.5, weight_decay=0.1,
                         norm_weight_decay=0.0, bias_weight_decay=0.0, schedule="constant")
    plan = StepPlan(steps_per_epoch=1, grad_accum=1, epochs=1)
    model = flax_resnet.create_model("mnist_resnet", rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    tx, _ = make_optimizer(config, plan, model)
    moved = jax.jit(lambda p: optax.apply_updates(p, tx.update(jax.tree.map(jax.numpy.zeros_like, p), tx.init(p),
                                                               p)[0]))(params)
    torch_model = torch_ref.create_model("mnist_resnet")
    optimizer, _ = make_torch_optimizer(torch_model, config, plan)
    before = {name: p.detach().clone() for name, p in torch_model.named_parameters()}
    for p in torch_model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()

    flax_before, flax_after = state_to_torch(params), state_to_torch(moved)
    kept = {f"{module_name}.{name}" for module_name, module in torch_model.named_modules()
            if isinstance(module, torch.nn.BatchNorm2d) for name, _ in module.named_parameters(recurse=False)}
    kept |= {name for name in before if name.endswith(".bias")}
    assert kept and kept != set(before)
    for name, value in torch_model.named_parameters():
        factor = 1.0 if name in kept else 1.0 - 0.5 * 0.1
        np.testing.assert_allclose(value.detach().numpy(), factor * before[name].numpy(), rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(flax_after[name], factor * flax_before[name], rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("settings, message", [
    (dict(model_ema=True, grad_accum=2), "model_ema averages after train steps; it takes no grad_accum"),
    (dict(model_ema=True, model_ema_steps=0), "model_ema_steps must be a positive integer"),
    (dict(model_ema=True, model_ema_decay=1.5), r"model_ema_decay must be in \[0, 1\]"),
    (dict(norm_weight_decay=-1.0), "norm_weight_decay must be >= 0"),
    (dict(optimizer="lars"), "unknown optimizer 'lars'; choose from sgd, adam, adamw, lamb"),
])
def test_average_and_decay_settings_that_cannot_work_are_refused(settings, message, mnist_dir, tmp_path):
    with pytest.raises(ConfigError, match=message):
        train(tiny(mnist_dir, tmp_path, **settings))
