"""The XLA:CPU formulations compute what `lax` computes: phase-wise input gradients of strided
convolutions, max-pool with torch's gradient routing, and the identity XLA cannot fuse."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

import flax_resnet
import torch_ref
from flax_resnet.models import xla_cpu
from flax_resnet.porting import to_torch_state_dict
from flax_resnet.training.step import _cast_floating, cross_entropy
from parity_tests.helpers.relu_patterns import float64_relu_pattern, pinned_flax_relus
from parity_tests.helpers.twins import relative_error


def lax_conv(x, kernel, strides, padding):
    return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=xla_cpu.NHWC)


@pytest.mark.parametrize("kernel_size,stride,pad", [(3, 2, 1), (1, 2, 0), (7, 2, 3), (3, 1, 1), (4, 3, 1)])
@pytest.mark.parametrize("height", [8, 9, 17])
def test_conv_and_its_gradients_match_lax(kernel_size, stride, pad, height):
    rng = np.random.default_rng(height * 10 + kernel_size)
    x = jnp.asarray(rng.standard_normal((2, height, height + 1, 5), np.float32))
    kernel = jnp.asarray(rng.standard_normal((kernel_size, kernel_size, 5, 6), np.float32))
    strides, padding = (stride, stride), ((pad, pad), (pad, pad))
    expected, expected_vjp = jax.vjp(lambda x, k: lax_conv(x, k, strides, padding), x, kernel)
    actual, actual_vjp = jax.vjp(lambda x, k: xla_cpu.conv(x, k, strides, padding), x, kernel)
    g = jnp.asarray(rng.standard_normal(expected.shape, np.float32))
    assert relative_error(actual, expected) <= 1e-6
    for ours, theirs in zip(jax.jit(actual_vjp)(g), expected_vjp(g)):
        assert ours.shape == theirs.shape
        assert relative_error(ours, theirs) <= 1e-5


@pytest.mark.parametrize("height", [7, 8, 56, 57])
def test_max_pool_routes_gradients_like_torch_even_with_ties(height):
    rng = np.random.default_rng(height)
    x = rng.standard_normal((2, 3, height, height + 1)).astype(np.float32)
    x[0, 0, :5, :5] = 1.5  # one plateau: every window over it is a tie
    x[1, 1] = np.round(x[1, 1])  # many small ties
    x_torch = torch.from_numpy(x).requires_grad_()
    y_torch = torch.nn.functional.max_pool2d(x_torch, 3, 2, 1)
    g = rng.standard_normal(y_torch.shape).astype(np.float32)
    y_torch.backward(torch.from_numpy(g))
    y, vjp = jax.vjp(lambda v: xla_cpu.max_pool(v, 3, 2, 1), jnp.asarray(x.transpose(0, 2, 3, 1)))
    np.testing.assert_array_equal(np.asarray(y), y_torch.detach().numpy().transpose(0, 2, 3, 1))
    grad = np.asarray(jax.jit(vjp)(jnp.asarray(g.transpose(0, 2, 3, 1)))[0])
    expected = x_torch.grad.numpy().transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(grad != 0, expected != 0)  # the same pixels receive gradient
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-6)


def test_unfusable_identity_is_bit_exact_and_survives_compilation():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 5), np.float32) * 1e30)
    kernel = jnp.asarray([[-3.0]])
    np.testing.assert_array_equal(np.asarray(jax.jit(xla_cpu.unfusable_identity)(x, kernel)), np.asarray(x))
    hlo = jax.jit(xla_cpu.unfusable_identity).lower(x, kernel).compile().as_text()
    assert "divide" in hlo  # not folded away, or it would not keep XLA from duplicating producers


def test_formulations_leave_a_train_step_unchanged():
    """ResNet-18's loss gradient and BatchNorm update, with and without the formulations.

    Both runs apply the ReLU patterns of a float64 run (parity_tests/relu_patterns.py), so that an
    input within rounding of zero cannot switch sides in one of them and move whole gradients.
    """
    images = jnp.asarray(np.random.default_rng(1).standard_normal((4, 33, 33, 3), np.float32))
    labels = jnp.asarray([1, 2, 3, 4])
    twin = torch_ref.create_model("resnet18", num_classes=10)
    twin.load_state_dict({key: torch.from_numpy(value) for key, value in to_torch_state_dict(
        flax_resnet.create_model("resnet18", num_classes=10, rngs=nnx.Rngs(0))).items()})
    pattern = float64_relu_pattern(twin, np.asarray(images).transpose(0, 3, 1, 2), train=True)

    def grads_and_stats():
        model = flax_resnet.create_model("resnet18", num_classes=10, rngs=nnx.Rngs(0))
        model.train()
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        def loss_fn(params):
            merged = nnx.merge(graphdef, _cast_floating(params, jnp.float32), rest, copy=True)
            loss = cross_entropy(merged(images), labels).mean()
            return loss, nnx.split(merged, nnx.Param, ...)[2]

        with pinned_flax_relus(pattern):
            return jax.jit(jax.grad(loss_fn, has_aux=True))(params)

    tuned = grads_and_stats()
    with xla_cpu.disabled():
        plain = grads_and_stats()
    for ours, theirs in zip(jax.tree.leaves(tuned), jax.tree.leaves(plain)):
        assert relative_error(ours, theirs, floor=1e-6) <= 1e-4
    assert optax.tree.norm(tuned[0]) > 0
