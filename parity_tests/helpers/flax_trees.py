"""Flax state trees holding given torch values, and back: for comparing optimizer and EMA state."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from flax_resnet.porting.state_dict import from_torch_layout, torch_key


def tree_keys(path) -> tuple:
    """The nnx.State keys of a jax tree path (without the Variable's `value` attribute)."""
    return tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))


def from_torch_values(template, values: dict[str, np.ndarray], float_dtype=jnp.float32):
    """A tree shaped like `template` (an nnx.State) holding `values` (torch keys and layouts) as
    numpy arrays (a jitted function takes them as they are): floating leaves in `float_dtype`,
    integer leaves in the template's dtype."""
    def leaf(path, old):
        keys = tree_keys(path)
        value = from_torch_layout(np.asarray(values[torch_key(keys)]), keys[-1])
        dtype = float_dtype if jnp.issubdtype(old.dtype, jnp.floating) else old.dtype
        return np.asarray(value, dtype)

    return jax.tree_util.tree_map_with_path(leaf, template)
