"""Gradient flow in Flax: the gradient norm of every layer, input to output, and the parameter count.

A layer is a conv or linear weight ('kernel'), named by its torch state_dict key and listed in
the order the forward pass first reads it: the order `torch_ref.studies.gradient_flow`, its twin,
uses. `flax_resnet.studies.experiments` calls these for framework='flax'.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.extend import core as jax_core

from flax_resnet.porting.state_dict import torch_key
from flax_resnet.training.loop import build_model
from flax_resnet.training.step import cross_entropy


def initial_model(config, setup, data) -> nnx.Module:
    """The model the Flax trainer starts from for `config`."""
    return build_model(config, setup, data)


def model_gradient_norms(model: nnx.Module, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """`layer_gradient_norms` on an NHWC float32 numpy batch and int labels."""
    return layer_gradient_norms(model, jnp.asarray(images), jnp.asarray(labels))


def count_parameters(model: nnx.Module) -> int:
    """Trainable values: weights, biases, BatchNorm scales and shifts (not running statistics)."""
    return sum(int(np.prod(variable.get_value().shape))
               for _, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)))


def _first_reads(jaxpr, watched: dict, order: list) -> None:
    """Append the `watched` variables' labels to `order` as the equations first read them,
    looking inside nested jaxprs (jit, custom_jvp) where a weight is passed straight through."""
    for equation in jaxpr.eqns:
        inner = list(jax_core.jaxprs_in_params(equation.params))
        if len(inner) == 1 and len(inner[0].invars) == len(equation.invars):
            passed = {inner_var: watched[outer] for outer, inner_var in zip(equation.invars, inner[0].invars)
                      if not isinstance(outer, jax_core.Literal) and outer in watched}
            _first_reads(inner[0], passed, order)
            continue
        for var in equation.invars:
            if not isinstance(var, jax_core.Literal) and var in watched and watched[var] not in order:
                order.append(watched[var])


def weight_forward_order(model: nnx.Module, images) -> list[str]:
    """Every conv and linear weight's torch key, in the order a forward pass on `images` (NHWC)
    first reads it. Found by tracing, so it follows the code of `__call__`, not attribute order."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    paths, values = zip(*((path, variable.get_value()) for path, variable in nnx.to_flat_state(params)))

    def forward(values):
        return nnx.merge(graphdef, nnx.from_flat_state(list(zip(paths, values))), rest, copy=True)(images)

    closed = jax.make_jaxpr(forward)(list(values))  # one input variable per parameter, in `paths` order
    watched = {var: torch_key(path) for var, path in zip(closed.jaxpr.invars, paths) if path[-1] == "kernel"}
    order: list[str] = []
    _first_reads(closed.jaxpr, watched, order)
    if len(order) != len(watched):
        unread = sorted(set(watched.values()) - set(order))
        raise RuntimeError(f"the forward pass never read {', '.join(unread)}")
    return order


@functools.partial(jax.jit, static_argnums=0)
def _loss_gradients(graphdef, params, rest, images, labels):
    """d(mean cross-entropy)/d(params). Jitted once per architecture: the graphdef is the cache key."""

    def loss(params):
        logits = nnx.merge(graphdef, params, rest, copy=True)(images)
        return cross_entropy(logits.astype(jnp.float32), labels).mean()

    return jax.grad(loss)(params)


def layer_gradient_norms(model: nnx.Module, images, labels) -> dict[str, float]:
    """{weight key: L2 norm of d(mean cross-entropy)/d(weight)} for every conv and linear weight,
    from input to output, on one batch (NHWC float images, int labels) with BatchNorm in training
    mode, as a train step sees it. The model itself (weights, statistics, mode) is not changed."""
    order = weight_forward_order(model, images)
    twin = nnx.clone(model)
    twin.train()
    grads = _loss_gradients(*nnx.split(twin, nnx.Param, ...), images, labels)
    norms = {torch_key(path): variable.get_value() for path, variable in nnx.to_flat_state(grads)}
    return {name: float(jnp.linalg.norm(norms[name])) for name in order}
