"""LAMB as timm's `timm.optim.Lamb` computes it, as an optax transformation.

timm's RSB recipes (Wightman et al. 2021, "ResNet strikes back": A1 and A2 train ResNet-50 with
LAMB) use timm's Lamb, the NVIDIA FusedLAMB variant, with these defaults. One update:

1. clip: every gradient divided by max(global gradient norm / max_grad_norm, 1);
2. moments: m = lerp(m, g, 1 - b1) (with grad_averaging; else b1 * m + g), v = b2 * v + (1 - b2) * g^2;
3. Adam direction: u = (m / bc1) / (sqrt(v) / sqrt(bc2) + eps), bc = 1 - b^t (1 without bias_correction);
4. L2 weight decay into the direction: u += weight_decay * p;
5. trust ratio, only where weight_decay != 0 (or always_adapt): u *= |p| / |u|, 1 when either norm
   is 0, capped at 1 with trust_clip;
6. p -= lr * u.

The weight decay is one number or, as timm's param groups give, a tree of numbers shaped like
the parameters (`optim.decay_groups`): a parameter without decay gets no trust ratio either.
`torch_ref.training.lamb.Lamb` is the torch twin.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

# timm.optim.Lamb's defaults.
LAMB_BETAS = (0.9, 0.999)
LAMB_EPS = 1e-6
LAMB_WEIGHT_DECAY = 0.01
LAMB_MAX_GRAD_NORM = 1.0


class LambState(NamedTuple):
    count: jax.Array  # updates done (int32); the bias corrections use count + 1
    mu: optax.Updates  # timm's exp_avg
    nu: optax.Updates  # timm's exp_avg_sq


def lamb(learning_rate: optax.ScalarOrSchedule, b1: float = LAMB_BETAS[0], b2: float = LAMB_BETAS[1],
         eps: float = LAMB_EPS, weight_decay: float | Any = LAMB_WEIGHT_DECAY, grad_averaging: bool = True,
         max_grad_norm: float | None = LAMB_MAX_GRAD_NORM, trust_clip: bool = False, always_adapt: bool = False,
         bias_correction: bool = True) -> optax.GradientTransformation:
    """timm.optim.Lamb. learning_rate: a number or a schedule of the update count (0 first).
    weight_decay: a Python number, or a tree of them shaped like the parameters; which parameters
    get a trust ratio is decided from it at trace time (with optax.inject_hyperparams, list it in
    static_args). max_grad_norm None: no clipping."""

    def init(params):
        return LambState(jnp.zeros((), jnp.int32), jax.tree.map(jnp.zeros_like, params),
                         jax.tree.map(jnp.zeros_like, params))

    def update(grads, state, params):
        if params is None:
            raise ValueError("lamb needs the parameters: tx.update(grads, state, params)")
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        count = optax.safe_increment(state.count)
        if max_grad_norm is not None:
            clip = jnp.maximum(optax.tree.norm(grads) / max_grad_norm, 1.0)
            grads = jax.tree.map(lambda g: g / clip, grads)
        if grad_averaging:
            mu = jax.tree.map(lambda m, g: m + (1 - b1) * (g - m), state.mu, grads)
        else:
            mu = jax.tree.map(lambda m, g: b1 * m + g, state.mu, grads)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, grads)
        if bias_correction:
            t = count.astype(jnp.result_type(float))  # timm's are Python floats: float64 where JAX has it
            bias_correction1, bias_correction2 = _bias_correction(b1, t), _bias_correction(b2, t)
        else:
            bias_correction1 = bias_correction2 = 1.0

        def step(m, v, p, decay):
            if isinstance(m, optax.MaskedNode):  # a leaf of another transformation (optax.multi_transform)
                return m
            # Scalars in the parameter's dtype, as torch casts a Python scalar to the tensor's.
            denominator = jnp.sqrt(v) / jnp.asarray(jnp.sqrt(bias_correction2), m.dtype) + eps
            direction = (m / jnp.asarray(bias_correction1, m.dtype)) / denominator
            if decay != 0:
                direction = direction + decay * p
            if decay != 0 or always_adapt:
                direction = direction * _trust_ratio(jnp.linalg.norm(p), jnp.linalg.norm(direction), trust_clip)
            return -jnp.asarray(lr, m.dtype) * direction

        if callable(weight_decay):  # optim.ParameterDecays
            decays = weight_decay(params)
        elif _is_tree(weight_decay):
            decays = weight_decay
        else:
            decays = jax.tree.map(lambda _: weight_decay, params)
        updates = jax.tree.map(step, mu, nu, params, decays, is_leaf=lambda x: isinstance(x, optax.MaskedNode))
        return updates, LambState(count, mu, nu)

    return optax.GradientTransformation(init, update)


def _bias_correction(beta, t):
    """1 - beta ** t, to a few ulps in float32 too. Computed as written, float32 would round beta
    first: 1 - 0.999 loses 4 of its 7 digits, and LAMB's first updates would be 1e-5 off timm's."""
    return -jnp.expm1(t * jnp.log1p(-(1 - beta)))  # 1 - beta in Python's double when beta is a number


def _trust_ratio(weight_norm, direction_norm, trust_clip: bool):
    ratio = jnp.where((weight_norm > 0) & (direction_norm > 0), weight_norm / direction_norm, 1.0)
    return jnp.minimum(ratio, 1.0) if trust_clip else ratio


def _is_tree(weight_decay) -> bool:
    return not isinstance(weight_decay, (int, float))
