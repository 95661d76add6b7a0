"""The soft-target losses: Flax, its torch twin, and the libraries that define them (torch's
F.cross_entropy over probabilities, timm's SoftTargetCrossEntropy and BinaryCrossEntropy), on
random logits and soft targets; values and gradients with respect to the logits.

float64 runs check the formulas (to float64 rounding); float32 errors are bounded by the
reference's own float32 error against its float64 result."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.loss import BinaryCrossEntropy, SoftTargetCrossEntropy

from flax_resnet.training import losses as flax_losses
from torch_ref.training import losses as torch_losses

FLOAT32_EPS = float(np.finfo(np.float32).eps)
FLOAT64_TOLERANCE = 1e-12  # relative: float64 rounding over a few dozen terms, far below any float32 effect
SHAPES = [(6, 37)]  # an even batch, an odd number of classes (one shape: JAX compiles its ops per shape)


def random_problem(shape, seed, dense=True):
    """float64 logits (some large, so the softmax saturates) and targets: Dirichlet probabilities,
    mixed one-hots (two classes, as MixUp makes them), or int labels."""
    rng = np.random.default_rng(seed)
    batch, classes = shape
    logits = rng.standard_normal(shape) * rng.choice([0.5, 3.0, 12.0], (batch, 1))
    labels = rng.integers(0, classes, batch)
    if not dense:
        return logits, labels
    probabilities = rng.dirichlet(np.full(classes, 0.3), batch)
    lam = rng.uniform(size=(batch, 1))
    mixed = lam * np.eye(classes)[labels] + (1 - lam) * np.eye(classes)[labels[::-1]]
    return logits, np.where(np.arange(batch)[:, None] % 2 == 0, probabilities, mixed)


def flax_value_and_grad(loss, logits, targets, dtype, **settings):
    """(per-example losses, gradient of their mean w.r.t. the logits) from the Flax loss in `dtype`."""
    targets = jnp.asarray(targets, dtype if targets.ndim == 2 else jnp.int32)
    mean_loss = lambda x: loss(x, targets, **settings).mean()  # noqa: E731
    per_example = loss(jnp.asarray(logits, dtype), targets, **settings)
    return np.asarray(per_example), np.asarray(jax.grad(mean_loss)(jnp.asarray(logits, dtype)))


def torch_value_and_grad(loss, logits, targets, dtype):
    """(loss, gradient w.r.t. the logits) of a torch loss callable, in `dtype`."""
    x = torch.tensor(logits, dtype=dtype, requires_grad=True)
    y = torch.tensor(targets, dtype=dtype) if targets.ndim == 2 else torch.tensor(targets)
    value = loss(x, y)
    value.mean().backward()
    return value.detach().numpy(), x.grad.numpy()


def assert_float32_bounded(ours, reference32, reference64, what):
    ours_error = np.abs(np.asarray(ours, np.float64) - reference64).max()
    reference_error = np.abs(np.asarray(reference32, np.float64) - reference64).max()
    assert ours_error <= 10 * reference_error + FLOAT32_EPS * np.abs(reference64).max(), \
        f"{what}: ours {ours_error:.3g}, reference {reference_error:.3g}"


def assert_float64_close(ours, reference64, what):
    np.testing.assert_allclose(ours, reference64, rtol=FLOAT64_TOLERANCE,
                               atol=FLOAT64_TOLERANCE * np.abs(reference64).max(), err_msg=what)


def check_against(reference, flax_loss, torch_loss, logits, targets, reduce_mean, **settings):
    """(Under the float64_enabled fixture.) Flax (float64 and float32) and the torch twin (float32) against `reference` (a torch
    callable; `reduce_mean`: it returns the batch mean, not per-example values)."""
    reduce = (lambda v: v.mean()) if reduce_mean else (lambda v: v)  # noqa: E731
    ref64, ref_grad64 = torch_value_and_grad(reference, logits, targets, torch.float64)
    ref32, ref_grad32 = torch_value_and_grad(reference, logits, targets, torch.float32)
    ours64, grad64 = flax_value_and_grad(flax_loss, logits, targets, jnp.float64, **settings)
    ours32, grad32 = flax_value_and_grad(flax_loss, logits, targets, jnp.float32, **settings)
    twin32, twin_grad32 = torch_value_and_grad(lambda x, y: torch_loss(x, y, **settings), logits, targets,
                                               torch.float32)
    assert ours32.dtype == np.float32 and ours32.shape == twin32.shape == (logits.shape[0],)
    assert_float64_close(reduce(ours64), ref64, "float64 loss")
    assert_float64_close(grad64, ref_grad64, "float64 gradient")
    for what, value, grad in [("Flax", ours32, grad32), ("torch twin", twin32, twin_grad32)]:
        assert_float32_bounded(reduce(value), ref32, ref64, f"{what} float32 loss")
        assert_float32_bounded(grad, ref_grad32, ref_grad64, f"{what} float32 gradient")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.35])
def test_soft_cross_entropy_is_torchs(float64_enabled, shape, label_smoothing):
    logits, targets = random_problem(shape, seed=shape[1])
    reference = lambda x, y: F.cross_entropy(x, y, reduction="none", label_smoothing=label_smoothing)  # noqa: E731
    check_against(reference, flax_losses.soft_cross_entropy, torch_losses.soft_cross_entropy, logits, targets,
                  reduce_mean=False, label_smoothing=label_smoothing)


@pytest.mark.parametrize("shape", SHAPES)
def test_soft_cross_entropy_is_timms_soft_target_cross_entropy(float64_enabled, shape):
    """timm's loss for mixed targets (smoothing already inside them)."""
    logits, targets = random_problem(shape, seed=shape[1] + 1)
    check_against(SoftTargetCrossEntropy(), flax_losses.soft_cross_entropy, torch_losses.soft_cross_entropy,
                  logits, targets, reduce_mean=True)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dense, smoothing, target_threshold",
                         [(True, 0.0, None), (True, 0.0, 0.2), (False, 0.0, None), (False, 0.1, None),
                          (False, 0.1, 0.2), (False, 0.3, 0.05)])
def test_binary_cross_entropy_is_timms(float64_enabled, shape, dense, smoothing, target_threshold):
    """timm's BinaryCrossEntropy(smoothing, target_threshold, reduction='mean'): int labels it
    one-hot encodes and smooths; dense targets it takes as they are; the threshold binarizes."""
    logits, targets = random_problem(shape, seed=shape[1] + 2, dense=dense)
    reference = BinaryCrossEntropy(smoothing=smoothing, target_threshold=target_threshold)
    if target_threshold is not None:  # the threshold is not idle: it binarizes some targets
        unthresholded = BinaryCrossEntropy(smoothing=smoothing)
        x, y = torch.tensor(logits), torch.tensor(targets)
        assert reference(x, y) != unthresholded(x, y)
    check_against(reference, flax_losses.binary_cross_entropy, torch_losses.binary_cross_entropy, logits, targets,
                  reduce_mean=True, smoothing=smoothing, target_threshold=target_threshold)


def test_binary_cross_entropy_refuses_smoothing_dense_targets():
    """timm ignores smoothing for dense targets (they come smoothed from the mixing): here it is an error."""
    logits, targets = random_problem((3, 7), seed=0)
    with pytest.raises(ValueError, match="int labels only"):
        flax_losses.binary_cross_entropy(jnp.asarray(logits, jnp.float32), jnp.asarray(targets, jnp.float32), 0.1)
    with pytest.raises(ValueError, match="int labels only"):
        torch_losses.binary_cross_entropy(torch.tensor(logits), torch.tensor(targets), 0.1)
