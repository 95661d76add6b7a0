"""EMA of the weights and BatchNorm buffers: `flax_resnet.training.ema` and its torch twin follow
torch's AveragedModel driven by torchvision's reference trainer.

The reference is written here from torchvision's references/classification: AveragedModel with
`avg_fn = decay * averaged + (1 - decay) * current` and `use_buffers=True`, updated after batch i of
an epoch when i % model_ema_steps == 0, n_averaged set to 0 after each update of a warmup epoch.
The models between updates are random walks of a resnet20 state (weights, running statistics,
num_batches_tracked jumping by random amounts so that its float32 average has fractions to
truncate), the same values for every implementation. float64: the same function to rounding.
float32: within NOISE_FACTOR times torch's own float32 error against its float64 run, plus one
float32 ulp; integers (num_batches_tracked, n_averaged) exactly torch's.
"""

import copy
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch.optim.swa_utils import AveragedModel

import torch_ref
from flax_resnet.core.ema import EmaSettingsError, adjusted_decay
from flax_resnet.models import model_skeleton
from flax_resnet.training.ema import averaged_model_state_dict, init_ema, update_after_step, update_parameters
from parity_tests.helpers.flax_trees import from_torch_values
from parity_tests.helpers.twins import relative_error
from torch_ref.training import ema as torch_ema

NOISE_FACTOR = 10
MODEL = "resnet20"
STEPS_PER_EPOCH = 5
EPOCHS = 3
STEPS = STEPS_PER_EPOCH * EPOCHS
BATCH_SIZE = 16
# (model_ema_steps, lr_warmup_epochs): every step with one warmup epoch, every other step without
# warmup, every third step with two.
CASES = [(1, 1), (2, 0), (3, 2)]


def model_states(model: torch.nn.Module, seed: int) -> list[dict[str, np.ndarray]]:
    """The model's state_dict after each train step: float32 values, drawn once for everyone."""
    rng = np.random.default_rng(seed)
    state = {key: value.numpy().copy() for key, value in model.state_dict().items()}
    states = []
    for _ in range(STEPS):
        new = {}
        for key, value in state.items():
            if key.endswith("num_batches_tracked"):
                new[key] = np.asarray(value + rng.integers(0, 200), np.int64)
            elif key.endswith("running_var"):
                new[key] = (value * np.exp(0.2 * rng.standard_normal(value.shape))).astype(np.float32)
            else:
                new[key] = (value + 0.1 * rng.standard_normal(value.shape)).astype(np.float32)
        states.append(new)
        state = new
    return states


def load(model: torch.nn.Module, state: dict[str, np.ndarray]) -> None:
    model.load_state_dict({key: torch.from_numpy(value) for key, value in state.items()})  # into model's dtypes


def torchvision_ema(model, states, dtype, decay, every, warmup_epochs) -> dict[str, np.ndarray]:
    """torchvision's train.py and utils.ExponentialMovingAverage, over the given model states."""
    model = copy.deepcopy(model).to(dtype)

    def ema_avg(averaged, current, num_averaged):
        return decay * averaged + (1 - decay) * current

    ema = AveragedModel(model, avg_fn=ema_avg, use_buffers=True)
    for epoch in range(EPOCHS):
        for i in range(STEPS_PER_EPOCH):
            load(model, states[epoch * STEPS_PER_EPOCH + i])
            if i % every == 0:
                ema.update_parameters(model)
                if epoch < warmup_epochs:
                    ema.n_averaged.fill_(0)
    return {key: value.numpy() for key, value in ema.state_dict().items()}


def torch_twin_ema(model, states, decay, every, warmup_epochs) -> dict[str, np.ndarray]:
    model = copy.deepcopy(model)
    ema = torch_ema.ExponentialMovingAverage(model, decay)
    for step, state in enumerate(states):
        load(model, state)
        torch_ema.update_after_step(ema, model, step, steps_per_epoch=STEPS_PER_EPOCH, every=every,
                                    warmup_epochs=warmup_epochs)
    return {key: value.numpy() for key, value in ema.state_dict().items()}


@functools.cache
def templates():
    """The Flax twin's parameter and statistics trees, shapes only."""
    skeleton = model_skeleton(MODEL)
    return nnx.split(skeleton, nnx.Param, ...)[1:]


@functools.cache
def jitted_update(decay, every, warmup_epochs):
    return jax.jit(functools.partial(update_after_step, decay=decay, steps_per_epoch=STEPS_PER_EPOCH,
                                     every=every, warmup_epochs=warmup_epochs))


def flax_ema(initial, states, dtype, decay, every, warmup_epochs, resume_at=None):
    """Our EMA over the states, jitted; with `resume_at`, saved to numpy there and restored."""
    params_template, stats_template = templates()

    def trees(state):
        return from_torch_values(params_template, state, dtype), from_torch_values(stats_template, state, dtype)

    update = jitted_update(decay, every, warmup_epochs)
    ema = init_ema(*trees(initial))
    for step, state in enumerate(states):
        if step == resume_at:
            leaves, treedef = jax.tree.flatten(ema)
            saved = [np.asarray(leaf) for leaf in leaves]
            ema = jax.tree.unflatten(treedef, [jnp.asarray(leaf) for leaf in saved])
        ema = update(ema, *trees(state), jnp.int32(step))
    return ema


def errors(actual: dict, expected: dict) -> float:
    return max(relative_error(actual[key], value) for key, value in expected.items()
               if np.issubdtype(value.dtype, np.floating))


def assert_integers_equal(actual: dict, expected: dict) -> None:
    for key, value in expected.items():
        if not np.issubdtype(value.dtype, np.floating):
            assert actual[key].dtype == value.dtype and np.array_equal(actual[key], value), key


@pytest.mark.parametrize("every, warmup_epochs", CASES)
def test_ema_matches_averaged_model(every, warmup_epochs, float64_enabled):
    torch.manual_seed(0)
    model = torch_ref.create_model(MODEL)
    initial = {key: value.numpy() for key, value in model.state_dict().items()}
    states = model_states(model, seed=every)
    decay = adjusted_decay(0.998, batch_size=BATCH_SIZE, every=every, epochs=EPOCHS)
    settings = (decay, every, warmup_epochs)

    reference = torchvision_ema(model, states, torch.float64, *settings)
    reference32 = torchvision_ema(model, states, torch.float32, *settings)
    bound = NOISE_FACTOR * errors(reference32, reference) + np.finfo(np.float32).eps

    # The torch twin is torchvision's class driven by our timing: the very same numbers.
    twin = torch_twin_ema(model, states, *settings)
    assert twin.keys() == reference32.keys()
    for key, value in reference32.items():
        assert np.array_equal(twin[key], value), key

    ours = averaged_model_state_dict(flax_ema(initial, states, jnp.float32, *settings))
    assert ours.keys() == reference.keys()
    assert all(ours[key].shape == value.shape for key, value in reference.items())
    assert errors(ours, reference) <= bound
    assert_integers_equal(ours, reference32)
    ours64 = averaged_model_state_dict(flax_ema(initial, states, jnp.float64, *settings))
    assert errors(ours64, reference) <= STEPS * np.finfo(np.float64).eps
    assert_integers_equal(ours64, reference32)

    # It loads into torchvision's AveragedModel as its checkpoint['model_ema'] would.
    AveragedModel(model, use_buffers=True).load_state_dict({k: torch.from_numpy(v) for k, v in ours.items()})

    # Resumed mid-epoch from the saved pytree: bit for bit the uninterrupted run.
    resumed = averaged_model_state_dict(flax_ema(initial, states, jnp.float32, *settings, resume_at=7))
    assert all(np.array_equal(resumed[key], value) for key, value in ours.items())

    # The average is not the last model: the comparison has something to see.
    last = {f"module.{key}": value for key, value in states[-1].items()}
    assert errors(last, reference) > 1e3 * bound
    assert int(reference["n_averaged"]) >= 2


@pytest.mark.parametrize("decay, world_size, batch_size, every, epochs", [
    (0.99998, 8, 128, 32, 600),  # torchvision's V2 ResNet recipe
    (0.999, 1, 64, 4, 10),
    (0.9, 2, 256, 8, 3),  # alpha capped at 1: decay 0, the EMA is the model
])
def test_adjusted_decay_is_torchvisions(decay, world_size, batch_size, every, epochs):
    adjust = world_size * batch_size * every / epochs  # torchvision's train.py, verbatim in order
    alpha = min(1.0, (1.0 - decay) * adjust)
    assert adjusted_decay(decay, batch_size=world_size * batch_size, every=every, epochs=epochs) == 1.0 - alpha


@pytest.mark.parametrize("settings", [dict(decay=1.5), dict(decay=-0.1), dict(every=0), dict(epochs=0)])
def test_bad_ema_settings_raise_one_line(settings):
    arguments = dict(decay=0.999, batch_size=64, every=1, epochs=10) | settings
    decay = arguments.pop("decay")
    with pytest.raises(EmaSettingsError, match=next(iter(settings))):
        adjusted_decay(decay, **arguments)


def test_integer_buffers_are_averaged_in_float32_and_truncated():
    """AveragedModel averages num_batches_tracked in float32 and copy_ truncates toward zero; ours
    does the same. The counts are picked so that rounding to nearest would give another answer."""
    decay, before, after = 0.4, 10, 11
    norm = torch.nn.BatchNorm1d(3)
    norm.num_batches_tracked.fill_(before)
    reference = AveragedModel(norm, avg_fn=lambda a, c, n: decay * a + (1 - decay) * c, use_buffers=True)
    reference.update_parameters(norm)  # the first update copies
    norm.num_batches_tracked.fill_(after)
    reference.update_parameters(norm)
    expected = int(reference.module.num_batches_tracked)
    assert expected != round(decay * before + (1 - decay) * after)

    ema = init_ema({}, {"num_batches_tracked": jnp.int32(before)})
    for count in (before, after):
        ema = update_parameters(ema, {}, {"num_batches_tracked": jnp.int32(count)}, decay)
    assert int(ema.batch_stats["num_batches_tracked"]) == expected and int(ema.n_averaged) == 2
