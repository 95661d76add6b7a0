"""Stochastic depth (`drop_path_rate`) as timm's ResNet applies it, in both frameworks.

timm (models/resnet.py, layers/drop.py): block i of n gets DropPath(drop_path_rate * i / (n - 1)),
which in train mode multiplies each sample's residual branch, before the add, by a Bernoulli(keep)
draw divided by keep (scale_by_keep=True); in eval mode it does nothing.

Every comparison gives both sides the same draws: torch_ref draws from torch's generator exactly
as timm does (same seed, same tensor), and between Flax and torch_ref both `draw_keep_mask`
functions are replaced by one list of masks, handed out in call order.
"""

from __future__ import annotations

import contextlib
import copy
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from flax import nnx
from timm.layers import DropPath as TimmDropPath

import flax_resnet.models.blocks as flax_blocks
import flax_resnet.models.layers as flax_layers
import torch_ref
import torch_ref.models.blocks as torch_blocks
import torch_ref.models.layers as torch_layers
from flax_resnet.core.augment import AugmentSpec
from flax_resnet.core.config import TrainConfig
from flax_resnet.core.plan import DROPOUT_STREAM, StepPlan
from flax_resnet.core.registry import MODELS, accepted_options, resolve
from flax_resnet.models import model_recipe, model_skeleton
from flax_resnet.porting import state_to_torch, to_torch_state_dict
from flax_resnet.porting.state_dict import load_torch_state_dict
from flax_resnet.training.device_transforms import eval_transform
from flax_resnet.training.optim import make_optimizer
from flax_resnet.training.step import cross_entropy, data_mesh, jit_train_step, put_batch, split_model
from flax_resnet.training.stochastic_depth import step_keep_masks
from parity_tests.helpers.relu_patterns import pinned_flax_relus, pinned_torch_relus, record_torch_relus
from parity_tests.helpers.twins import (as_float64, gradient_errors, make_twins, random_images, randomize_batchnorm,
                                        relative_error)
from torch_ref.training.optim import make_optimizer as make_torch_optimizer
from torch_ref.training.step import drop_paths, given_keep_masks
from torch_ref.training.step import train_step as torch_train_step

# Two float32 implementations of one computation: errors of the same size as torch's own.
NOISE_FACTOR = 10
FLOAT32_EPS = float(np.finfo(np.float32).eps)
# float64 agreement: rounding is ~1e-15; a wrong mask or scale moves outputs by O(1).
FLOAT64_TOLERANCE = 1e-9
# Small odd inputs: resnet20's stages see 37, 19 and 10 pixels.
SIZE = 37
BATCH = 6


def blocks(model):
    """The residual blocks in forward order (both frameworks and timm name their stages alike)."""
    for name in ("layer1", "layer2", "layer3", "layer4"):
        stage = getattr(model, name, None)
        if stage is not None:
            yield from (stage.layers if isinstance(stage, nnx.Sequential) else stage)


def block_rates(model) -> list[float]:
    """Each block's DropPath probability, 0.0 for a block without one."""
    return [0.0 if block.drop_path is None else block.drop_path.drop_prob for block in blocks(model)]


def random_masks(rates, batch, seed) -> list[np.ndarray]:
    """A keep mask per DropPath (blocks of rate 0 have none), each with a kept and a dropped sample."""
    rng = np.random.default_rng(seed)
    masks = []
    for index, rate in enumerate(r for r in rates if r > 0):
        keep = rng.random(batch) >= rate
        keep[index % batch] = True
        keep[(index + 1) % batch] = False
        masks.append(keep)
    return masks


@contextlib.contextmanager
def given_masks(masks, keep_probs):
    """Both frameworks' DropPaths apply `masks` in call order instead of drawing; every forward
    pass inside must use all of them, each at its block's keep probability."""
    state = {"flax": iter(()), "torch": iter(())}

    def hand_out(side, batch_size, keep_prob):
        index, mask = next(state[side])
        assert keep_prob == keep_probs[index], (side, index, keep_prob, keep_probs[index])
        assert batch_size == len(mask)
        return mask

    def flax_draw(key, batch_size, keep_prob):
        return jnp.asarray(hand_out("flax", batch_size, keep_prob))

    def torch_draw(batch_size, keep_prob, like):
        return torch.from_numpy(np.array(hand_out("torch", batch_size, keep_prob))).to(like.dtype)

    @contextlib.contextmanager
    def forward(side):
        state[side] = iter(enumerate(masks))
        yield
        assert next(state[side], None) is None, f"{side} used fewer DropPaths than there are masks"

    originals = flax_layers.draw_keep_mask, torch_layers.draw_keep_mask
    flax_layers.draw_keep_mask, torch_layers.draw_keep_mask = flax_draw, torch_draw
    try:
        yield forward
    finally:
        flax_layers.draw_keep_mask, torch_layers.draw_keep_mask = originals


# ---------------------------------------------------------------------------------------------
# The layer and the rates
# ---------------------------------------------------------------------------------------------

def test_block_rates_are_timms_for_resnet50():
    """timm's resnet50(drop_path_rate=0.1): no DropPath on block 0, then 0.1 * i / 15 rising to 0.1
    on the last; ours the same numbers to the bit, in both frameworks."""
    theirs = timm.create_model("resnet50", drop_path_rate=0.1, device="meta")
    assert all(block.drop_path is None or block.drop_path.scale_by_keep for block in blocks(theirs))
    expected = block_rates(theirs)
    assert len(expected) == 16 and expected[0] == 0.0 and expected[-1] == 0.1 and len(set(expected)) == 16
    with torch.device("meta"):
        ours = torch_ref.create_model("resnet50", drop_path_rate=0.1)
    assert block_rates(ours) == expected
    assert all(isinstance(b.drop_path, torch_layers.DropPath) for b in list(blocks(ours))[1:])
    flax_model = model_skeleton("resnet50", drop_path_rate=0.1)
    assert block_rates(flax_model) == expected
    assert all(isinstance(b.drop_path, flax_layers.DropPath) for b in list(blocks(flax_model))[1:])


def test_torch_drop_path_draws_and_scales_as_timm():
    """Same generator state, same output bits as timm's DropPath, in float32 and float64; eval
    mode returns the input itself."""
    x = torch.randn(7, 5, 3, 3, generator=torch.Generator().manual_seed(0))
    for dtype in (torch.float32, torch.float64):
        for prob in (0.3, 0.75):
            torch.manual_seed(11)
            expected = TimmDropPath(prob).train()(x.to(dtype))
            torch.manual_seed(11)
            actual = torch_layers.DropPath(prob).train()(x.to(dtype))
            assert torch.equal(actual, expected)
            assert (actual.flatten(1) == 0).all(1).any() and (actual.flatten(1) != 0).all(1).any()
    assert torch_layers.DropPath(0.3).eval()(x) is x


def test_flax_drop_path_given_the_mask_matches_torch():
    """The apply half alone: given one mask, Flax and torch_ref agree to float32 rounding of the
    float64 result (a multiply by 0 or 1/keep is one or two roundings)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((9, 5, 7, 3))
    keep = rng.random(9) < 0.6
    keep[:2] = True, False
    exact = torch_layers.drop_path(torch.from_numpy(x), torch.from_numpy(keep).double(), 0.6).numpy()
    ours = np.asarray(flax_layers.drop_path(jnp.asarray(x, jnp.float32), jnp.asarray(keep), 0.6))
    theirs = torch_layers.drop_path(torch.from_numpy(x).float(), torch.from_numpy(keep).float(), 0.6).numpy()
    assert np.array_equal(exact[~keep], np.zeros_like(exact[~keep]))
    allowed = NOISE_FACTOR * relative_error(theirs, exact) + 2 * FLOAT32_EPS
    assert relative_error(ours, exact) <= allowed
    assert relative_error(ours, theirs) <= allowed


@pytest.mark.parametrize("keep_prob", [0.9, 0.35])
def test_masks_keep_with_probability_keep_prob(keep_prob):
    """Over 200k samples the kept fraction is keep_prob within 5 standard errors, in both
    frameworks; DropPath's output keeps the input's mean; successive calls draw afresh."""
    count = 200_000
    bound = 5 * np.sqrt(keep_prob * (1 - keep_prob) / count)
    flax_keep = np.asarray(flax_layers.draw_keep_mask(jax.random.key(3), count, keep_prob))
    assert flax_keep.dtype == bool and abs(flax_keep.mean() - keep_prob) <= bound
    torch.manual_seed(3)
    torch_keep = torch_layers.draw_keep_mask(count, keep_prob, torch.empty(0)).numpy()
    assert set(np.unique(torch_keep)) == {0.0, 1.0} and abs(torch_keep.mean() - keep_prob) <= bound

    layer, ones, rngs = flax_layers.DropPath(1 - keep_prob), jnp.ones((count, 1, 1, 1)), nnx.Rngs(dropout=5)
    first, second = np.asarray(layer(ones, rngs=rngs)).ravel(), np.asarray(layer(ones, rngs=rngs)).ravel()
    assert abs(first.mean() - 1.0) <= bound / keep_prob
    assert not np.array_equal(first, second)
    assert set(np.unique(first)) == {0.0, np.float32(1 / np.float32(keep_prob))}


def state_shapes(model: nnx.Module) -> dict:
    """Every variable's path and shape."""
    leaves = jax.tree_util.tree_flatten_with_path(nnx.state(model))[0]
    return {jax.tree_util.keystr(path): leaf.shape for path, leaf in leaves}


def test_default_rate_changes_no_variant_and_refuses_bad_rates():
    """Without the option nothing changes: it is absent from the resolved options (so recipes,
    saved configs and exports are as before), and no block has a DropPath. With it, the keys and
    shapes of the weights are the same. Bad rates and plain nets get one-line errors."""
    for name, spec in MODELS.items():
        options = resolve(name, None, None, {})[3]
        assert "drop_path_rate" not in options, name
        assert ("drop_path_rate" in accepted_options(spec)) == (spec.family in ("resnet", "preact") and spec.residual)
    for name in ("resnet18", "resnet20", "preact_resnet50", "seresnext26t_32x4d"):
        with torch.device("meta"):
            default, dropping = torch_ref.create_model(name), torch_ref.create_model(name, drop_path_rate=0.2)
        assert not any(isinstance(m, torch_layers.DropPath) for m in default.modules())
        assert {k: v.shape for k, v in default.state_dict().items()} == {
            k: v.shape for k, v in dropping.state_dict().items()}
    flax_default = model_skeleton("resnet20")
    flax_dropping = model_skeleton("resnet20", drop_path_rate=0.2)
    assert "drop_path_rate" not in model_recipe(flax_default)[1]
    assert model_recipe(flax_dropping)[1]["drop_path_rate"] == 0.2
    assert state_shapes(flax_default) == state_shapes(flax_dropping)

    for bad in (1.0, -0.1, float("nan"), "0.1", True):
        with pytest.raises(ValueError, match=r"drop_path_rate=.* not valid for resnet18; choose a number in \[0, 1\)"):
            resolve("resnet18", None, None, {"drop_path_rate": bad})
    with pytest.raises(ValueError, match="plain18 does not take .* drop_path_rate; valid options: stem, maxpool$"):
        resolve("plain18", None, None, {"drop_path_rate": 0.1})
    flax_dropping.train()
    with pytest.raises(flax_layers.DropPathError, match=r"rngs=nnx.Rngs\(dropout=key\)"):
        nnx.eval_shape(lambda model: model(jnp.zeros((2, 9, 9, 3))), flax_dropping)


def test_eval_output_is_the_same_with_and_without_drop_path():
    """Eval mode: the same weights give bit-identical logits with drop_path_rate 0.5 and 0, in both
    frameworks (and Flax's eval needs no rngs)."""
    torch_model, flax_model = make_twins("resnet20", seed=2, drop_path_rate=0.5)
    plain = torch_ref.create_model("resnet20")
    plain.load_state_dict(torch_model.state_dict(), strict=True)
    flax_plain = model_skeleton("resnet20")
    load_torch_state_dict(flax_plain, torch_model.state_dict())
    nchw, nhwc = random_images("resnet20", 4, SIZE, SIZE, seed=3)
    flax_model.eval()
    flax_plain.eval()
    assert np.array_equal(np.asarray(flax_model(nhwc)), np.asarray(flax_plain(nhwc)))
    with torch.no_grad():
        expected = plain.eval()(torch.from_numpy(nchw))
        assert torch.equal(torch_model.eval()(torch.from_numpy(nchw)), expected)
        # Train mode does drop: the same check is not vacuous.
        torch.manual_seed(0)
        assert not torch.allclose(torch_model.train()(torch.from_numpy(nchw)), plain.train()(torch.from_numpy(nchw)))


# ---------------------------------------------------------------------------------------------
# Train mode: Flax and torch_ref given the same masks
# ---------------------------------------------------------------------------------------------


def _buffers(state) -> np.ndarray:
    keys = sorted(k for k in state if k.endswith(("running_mean", "running_var")))
    return np.concatenate([np.asarray(state[k], np.float64).ravel() for k in keys])


def torch_forward_backward(model, inputs, loss_of):
    """(output, loss, gradients, running statistics) of one train-mode forward and backward."""
    model.train()
    output = model(torch.from_numpy(inputs))
    loss = loss_of(output)
    loss.backward()
    grads = {name: parameter.grad.numpy() for name, parameter in model.named_parameters()}
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    return output.detach().numpy(), float(loss.detach()), grads, _buffers(state)


def flax_forward_backward(model, inputs, loss_of):
    """The same in Flax, jitted as training runs it; a fresh function each time, since the
    given masks and pinned ReLU patterns become constants of the compiled program."""
    model.train()

    def loss_fn(model):
        output = model(inputs, rngs=nnx.Rngs(dropout=0))
        return loss_of(output), output

    (loss, output), grads = nnx.jit(nnx.value_and_grad(loss_fn, has_aux=True))(model)
    return np.asarray(output), float(loss), state_to_torch(grads), _buffers(to_torch_state_dict(model))


def global_error(actual: dict, expected: dict) -> float:
    """||actual - expected|| / ||expected|| over every gradient at once."""
    diff = sum(float(np.sum((np.asarray(actual[k], np.float64) - g) ** 2)) for k, g in expected.items())
    return (diff / sum(float(np.sum(np.asarray(g, np.float64) ** 2)) for g in expected.values())) ** 0.5


def assert_float64_agrees(exact, flax64):
    """float64: Flax's output, loss, every gradient and the new running statistics equal torch's
    to rounding."""
    assert relative_error(flax64[0], exact[0]) <= FLOAT64_TOLERANCE
    assert abs(flax64[1] - exact[1]) <= FLOAT64_TOLERANCE * abs(exact[1])
    assert sorted(flax64[2]) == sorted(exact[2])
    for key, error in gradient_errors(flax64[2], exact[2]).items():
        assert error <= FLOAT64_TOLERANCE, f"float64 gradient of {key}: {error:.2e}"
    assert relative_error(flax64[3], exact[3]) <= FLOAT64_TOLERANCE


def assert_float32_agrees(exact, torch32, flax32, output_layout=lambda a: a, loss_weights=None):
    """float32: Flax's output, loss, gradients and new running statistics are within NOISE_FACTOR
    times torch's own float32 error against the float64 run (torch's float64 `exact`).

    A loss that is a weighted sum of the output (`loss_weights`, in torch's layout) may cancel, so
    that torch's rounding lands near the exact sum by luck; there the loss may also differ by what
    the two outputs' difference explains (Cauchy-Schwarz: at most ||w|| ||out - out'||) and by the
    rounding of two float32 tree reductions of its n terms (each within ceil(log2 n) eps sum|w out|)."""
    assert sorted(flax32[2]) == sorted(exact[2])
    if loss_weights is not None:
        ours, theirs = output_layout(flax32[0]).astype(np.float64), torch32[0].astype(np.float64)
        terms = np.abs(loss_weights * exact[0])
        explained = np.linalg.norm(loss_weights) * np.linalg.norm(ours - theirs)
        summed = 2 * math.ceil(math.log2(terms.size)) * FLOAT32_EPS * float(terms.sum())
        loss_error, loss_rounding = abs(flax32[1] - torch32[1]), abs(torch32[1] - exact[1])
        assert loss_error <= NOISE_FACTOR * loss_rounding + explained + summed, (
            f"float32 loss: {loss_error:.2e} apart (torch's own error {loss_rounding:.2e}, the outputs "
            f"explain {explained:.2e}, the sums' rounding {summed:.2e})")
    checks = {
        "output": (output_layout(flax32[0]), torch32[0], exact[0], relative_error),
        "gradients": (flax32[2], torch32[2], exact[2], global_error),
        "running statistics": (flax32[3], torch32[3], exact[3], relative_error),
    }
    if loss_weights is None:
        checks["loss"] = (flax32[1], torch32[1], exact[1], relative_error)
    for label, (ours, theirs, truth, error_of) in checks.items():
        error, torch_rounding = error_of(ours, theirs), error_of(theirs, truth)
        assert error <= NOISE_FACTOR * torch_rounding + FLOAT32_EPS, (
            f"float32 {label}: {error:.2e} (torch's own float32 error {torch_rounding:.2e})")


def test_resnet_train_forward_and_gradients_match_given_the_same_masks(float64_enabled):
    """resnet20 with drop_path_rate 0.5 (8 DropPaths at rates 1/16 .. 1/2), random BatchNorm
    statistics, a 37x37 batch of 6, the same masks: logits, the train step's cross-entropy loss,
    every gradient and the new running statistics agree (in float64 to rounding, in float32 within
    NOISE_FACTOR times torch's own float32 error; both float32 runs
    apply the float64 run's ReLU patterns, parity_tests/relu_patterns.py)."""
    name = "resnet20"
    torch_model, flax_model = make_twins(name, seed=4, drop_path_rate=0.5)
    rates = block_rates(torch_model)
    assert block_rates(flax_model) == rates and rates[-1] == 0.5
    masks = random_masks(rates, BATCH, seed=5)
    keep_probs = [1.0 - rate for rate in rates if rate > 0]
    nchw, nhwc = random_images(name, BATCH, SIZE, SIZE, seed=6)
    labels = np.random.default_rng(7).integers(0, resolve(name, None, None, {})[1], BATCH)

    def torch_loss(logits):
        return F.cross_entropy(logits, torch.from_numpy(labels))

    def flax_loss(logits):
        return cross_entropy(logits, labels).mean()

    with given_masks(masks, keep_probs) as forward:
        with forward("torch"), record_torch_relus() as pattern:
            exact = torch_forward_backward(copy.deepcopy(torch_model).double(), nchw.astype(np.float64), torch_loss)
        with forward("flax"):
            flax64 = flax_forward_backward(as_float64(flax_model), nhwc.astype(np.float64), flax_loss)
        with forward("torch"), pinned_torch_relus(pattern):
            torch32 = torch_forward_backward(torch_model, nchw, torch_loss)
        with forward("flax"), pinned_flax_relus(pattern):
            flax32 = flax_forward_backward(flax_model, nhwc, flax_loss)
    assert_float64_agrees(exact, flax64)
    assert_float32_agrees(exact, torch32, flax32)
    # The masks matter: the same net keeping every branch gives other logits.
    all_kept = copy.deepcopy(torch_model).double()
    for block in blocks(all_kept):
        block.drop_path = None
    with torch.no_grad():
        assert relative_error(all_kept.train()(torch.from_numpy(nchw.astype(np.float64))).numpy(), exact[0]) > 1e-2


# Every block kind, with identity and projection shortcuts, chained: (block, in_channels, planes,
# stride, keyword arguments). Each output width is the next block's input.
CHAIN = (
    ("BasicBlock", 8, 8, 1, {}),
    ("Bottleneck", 8, 4, 2, {"attention": "se"}),
    ("PreActBasicBlock", 16, 8, 2, {}),
    ("PreActBottleneck", 8, 4, 1, {}),
)
# Samples 1 and 4 lose every block's branch.
CHAIN_MASK = np.array([True, False, True, True, False])


def chain(blocks_module, sequential, **kwargs):
    return sequential(*(getattr(blocks_module, block)(in_channels, planes, stride, drop_path_rate=0.3, **options,
                                                      **kwargs)
                        for block, in_channels, planes, stride, options in CHAIN))


def test_every_block_kind_drops_its_branch_before_the_add():
    """torchvision's block, the bottleneck with squeeze-excitation, both pre-activation blocks,
    with identity and projection shortcuts, chained, a 9x9 batch of 5, the same masks: Flax's
    float32 output, loss, gradients and running statistics within NOISE_FACTOR times torch's own
    float32 error against its float64 run (`assert_float32_agrees`; a misplaced mask would be off
    by O(1)). In each block a dropped sample's output is its shortcut's alone (timm drops the
    branch before the add)."""
    torch_chain = chain(torch_blocks, torch.nn.Sequential)
    randomize_batchnorm(torch_chain, seed=1)
    flax_chain = nnx.eval_shape(lambda: chain(flax_blocks, nnx.Sequential, rngs=nnx.Rngs(0)))
    load_torch_state_dict(flax_chain, torch_chain.state_dict())
    masks = [CHAIN_MASK] * len(CHAIN)
    rng = np.random.default_rng(2)
    nchw = rng.standard_normal((5, CHAIN[0][1], 9, 9))
    weights = rng.standard_normal((5, 16, 3, 3))

    def torch_loss(output):
        return (output * torch.from_numpy(weights).to(output.dtype)).sum()

    def flax_loss(output):
        return (output * jnp.asarray(weights.transpose(0, 2, 3, 1), output.dtype)).sum()

    nhwc = nchw.transpose(0, 2, 3, 1)
    with given_masks(masks, [0.7] * len(CHAIN)) as forward:
        with forward("torch"):
            exact = torch_forward_backward(copy.deepcopy(torch_chain).double(), nchw, torch_loss)
        with forward("torch"):
            torch32 = torch_forward_backward(torch_chain, nchw.astype(np.float32), torch_loss)
        with forward("flax"):
            flax32 = flax_forward_backward(flax_chain, nhwc.astype(np.float32), flax_loss)
    assert_float32_agrees(exact, torch32, flax32, output_layout=lambda a: a.transpose(0, 3, 1, 2),
                          loss_weights=weights)

    x = torch.from_numpy(nchw)
    for block in copy.deepcopy(torch_chain).double().train():
        with given_masks([CHAIN_MASK], [0.7]) as forward, forward("torch"), torch.no_grad():
            output = block(x)
            if isinstance(block, (torch_blocks.PreActBasicBlock, torch_blocks.PreActBottleneck)):
                shortcut = x if block.downsample is None else block.downsample(F.relu(block.bn1(x)))
            else:
                shortcut = F.relu(x if block.downsample is None else block.downsample(x))
        assert torch.equal(output[~CHAIN_MASK], shortcut[~CHAIN_MASK])
        assert not torch.allclose(output[CHAIN_MASK], shortcut[CHAIN_MASK])
        x = output


# ---------------------------------------------------------------------------------------------
# The train steps: Flax's jitted step draws from the 'dropout' stream of the step
# ---------------------------------------------------------------------------------------------

PLAIN = AugmentSpec(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))  # normalize only


@contextlib.contextmanager
def recorded_flax_masks():
    """Yield a list that fills, at run time and in order, with the masks the DropPaths draw."""
    masks, original = [], flax_layers.draw_keep_mask

    def recording(key, batch_size, keep_prob):
        keep = original(key, batch_size, keep_prob)
        jax.debug.callback(lambda value: masks.append(np.asarray(value)), keep, ordered=True)
        return keep

    flax_layers.draw_keep_mask = recording
    try:
        yield masks
    finally:
        flax_layers.draw_keep_mask = original


def step_masks(rng, step_number: int, keep_probs) -> list[np.ndarray]:
    """What stochastic depth should draw at a train step: one key after another of the 'dropout'
    stream of the run key folded with DROPOUT_STREAM, then with the step number."""
    rngs = nnx.Rngs(dropout=jax.random.fold_in(jax.random.fold_in(rng, DROPOUT_STREAM), step_number))
    return [np.asarray(flax_layers.draw_keep_mask(rngs.dropout(), BATCH, keep_prob)) for keep_prob in keep_probs]


def test_train_steps_draw_per_step_and_agree_given_the_masks():
    """Flax's jitted train step draws each DropPath's mask from the 'dropout' stream of a key
    folded from the step number (`step_masks`): other masks at the next step, the same ones when a
    step is run again (a resumed run draws what the uninterrupted one did). Given step 0's masks,
    torch_ref's train step (train mode, its draws replaced) computes the same loss and moves the
    weights and statistics the same way, within NOISE_FACTOR times torch's own float32 error
    against its float64 step (both float32 steps apply its ReLU patterns)."""
    name = "resnet20"
    torch_model, flax_model = make_twins(name, seed=8, drop_path_rate=0.5)
    keep_probs = [1.0 - r for r in block_rates(torch_model) if r > 0]
    config = TrainConfig(model=name, lr=0.1, momentum=0.0, weight_decay=0.0, schedule="constant")
    plan = StepPlan(steps_per_epoch=2, grad_accum=1, epochs=1)
    tx, _ = make_optimizer(config, plan)
    graphdef, eval_graphdef, state = split_model(flax_model, tx)
    mesh = data_mesh(jax.devices()[:1])
    rng = jax.random.key(9)
    data = np.random.default_rng(10)
    batch = {"image": data.integers(0, 256, (BATCH, SIZE, SIZE, 3), dtype=np.uint8),
             "label": data.integers(0, 10, BATCH).astype(np.int32)}
    first, second = step_masks(rng, 0, keep_probs), step_masks(rng, 1, keep_probs)
    assert any(not np.array_equal(a, b) for a, b in zip(first, second))
    assert any(not mask.all() for mask in first)

    images = torch.from_numpy(np.array(eval_transform(batch["image"], PLAIN))).permute(0, 3, 1, 2)
    labels = torch.from_numpy(batch["label"]).long()
    initial = {k: v.numpy().copy() for k, v in torch_model.state_dict().items()}

    def torch_step(model, relus):
        optimizer, schedule = make_torch_optimizer(model, config, plan)
        with forward("torch"), relus as pattern:
            metrics = torch_train_step(model, optimizer, images.to(next(model.parameters()).dtype), labels,
                                       schedule=schedule, update=0)
        return float(metrics["loss"]), {k: v.numpy() for k, v in model.state_dict().items()}, pattern

    with given_masks(first, keep_probs) as forward:
        exact_loss, exact_state, pattern = torch_step(copy.deepcopy(torch_model).double(), record_torch_relus())
        torch_loss, torch_state, _ = torch_step(torch_model, pinned_torch_relus(pattern))

    def copy_of(state):  # the step donates its input state
        return jax.tree.map(jnp.copy, state)

    with pinned_flax_relus(pattern), recorded_flax_masks() as drawn:
        step = jit_train_step.__wrapped__(graphdef, tx, mesh, augment=PLAIN)  # compiled with this pattern
        after_first, metrics = step(copy_of(state), put_batch(batch, mesh), rng)
        step(copy_of(state._replace(step=state.step + 1)), put_batch(batch, mesh), rng)  # step 1
        step(copy_of(state), put_batch(batch, mesh), rng)  # step 0 again
        jax.effects_barrier()
    assert len(drawn) == 3 * len(keep_probs)
    for got, expected in zip(drawn, first + second + first):
        assert np.array_equal(got, expected)

    # Sums over the batch of float32 per-sample losses in both steps (torch's casts even its float64
    # logits to float32 first): each term and partial sum may round once more.
    loss_error, loss_rounding = abs(float(metrics["loss"]) - torch_loss), abs(torch_loss - exact_loss)
    assert loss_error <= NOISE_FACTOR * loss_rounding + 2 * BATCH * FLOAT32_EPS * abs(exact_loss)
    flax_state = to_torch_state_dict(nnx.merge(eval_graphdef, after_first.params, after_first.batch_stats))
    assert set(flax_state) == set(exact_state)
    floats = [k for k, v in exact_state.items() if v.dtype == np.float64]

    def moved(state):
        return {"all": np.concatenate([np.asarray(state[k], np.float64).ravel() - initial[k].ravel() for k in floats])}

    error, torch_rounding = global_error(moved(flax_state), moved(exact_state)), global_error(
        moved(torch_state), moved(exact_state))
    assert error <= NOISE_FACTOR * torch_rounding + FLOAT32_EPS, (error, torch_rounding)


def test_the_torch_trainer_hands_its_twin_the_flax_steps_masks():
    """What the torch trainer gives torch_ref at a step (`stochastic_depth.step_keep_masks`) is
    exactly what the Flax step's DropPaths draw then (`step_masks`, the 'dropout' stream the test
    above records them from). `given_keep_masks` makes torch_ref's forward apply those rows in call
    order, as the patched draws of `given_masks` do; rows that do not fit are refused, and none
    outlives the forward pass."""
    rng, keep_probs = jax.random.key(9), (0.9, 0.6, 0.75)
    for step_number in (0, 1, 7):
        ours = np.asarray(step_keep_masks(rng, step_number, BATCH, keep_probs))
        assert ours.dtype == bool and ours.shape == (len(keep_probs), BATCH)
        assert all(np.array_equal(a, b) for a, b in zip(ours, step_masks(rng, step_number, keep_probs)))
    assert not np.array_equal(*(np.asarray(step_keep_masks(rng, s, BATCH, keep_probs)) for s in (0, 1)))

    torch_model, _ = make_twins("resnet20", seed=11, drop_path_rate=0.5)
    rates = [rate for rate in block_rates(torch_model) if rate > 0]
    masks = random_masks(rates, BATCH, seed=12)
    nchw = torch.from_numpy(random_images("resnet20", BATCH, SIZE, SIZE, seed=13)[0])
    torch_model.train()
    with torch.no_grad():
        with given_masks(masks, [1.0 - rate for rate in rates]) as forward, forward("torch"):
            expected = torch_model(nchw)
        with given_keep_masks(torch_model, [torch.from_numpy(mask) for mask in masks]):
            actual = torch_model(nchw)
        assert torch.equal(actual, expected)
        with pytest.raises(ValueError, match="3 keep masks for the model's 8 DropPath layers"):
            with given_keep_masks(torch_model, [torch.from_numpy(mask) for mask in masks[:3]]):
                pass
        with pytest.raises(RuntimeError, match="left 8 of 8 keep masks unused"):
            with given_keep_masks(torch_model, [torch.from_numpy(mask) for mask in masks]):
                torch_model.eval()(nchw)  # eval mode applies no mask
    assert all(layer.keep is None for layer in drop_paths(torch_model))
