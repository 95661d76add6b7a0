"""Weights between a Flax model and its PyTorch twin: name rules plus layout transposes.

A Flax variable's path becomes the torch key by dropping `nnx.Sequential`'s `layers` level and
renaming the leaf; values change layout by their kind alone. No model needs code of its own.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from flax_resnet.core.files import InputError, summarize
from flax_resnet.core.layouts import canonical_key

# Flax leaf name -> torch leaf name.
LEAF_NAMES = {
    "kernel": "weight",
    "scale": "weight",
    "bias": "bias",
    "mean": "running_mean",
    "var": "running_var",
    "num_batches_tracked": "num_batches_tracked",
}


class StateDictMismatchError(InputError):
    """A state_dict does not fit the model; lists every missing, unexpected and mis-shaped key."""

    def __init__(self, missing=(), unexpected=(), mismatched=()):
        self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)
        lines = ["state_dict does not match the model:"]
        if self.missing:
            lines.append(f"  missing keys ({len(self.missing)}): {', '.join(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected keys ({len(self.unexpected)}): {', '.join(self.unexpected)}")
        for key, got, want in self.mismatched:
            lines.append(f"  shape mismatch for {key}: checkpoint {got}, model {want}")
        super().__init__("\n".join(lines))

    def summary(self, limit: int = 3) -> str:
        """The same facts on one line: '2 missing key(s): a, b; fc.weight has shape ... in the file'."""
        problems = []
        if self.missing:
            problems.append(f"{len(self.missing)} missing key(s): {summarize(self.missing)}")
        if self.unexpected:
            problems.append(f"{len(self.unexpected)} unexpected key(s): {summarize(self.unexpected)}")
        for key, got, want in self.mismatched[:limit]:
            problems.append(f"{key} has shape {got} in the file, {want} in the model")
        if len(self.mismatched) > limit:
            problems.append(f"and {len(self.mismatched) - limit} more shape mismatches")
        return "; ".join(problems)


def torch_key(path: tuple) -> str:
    """('layer1', 'layers', 0, 'bn1', 'mean') -> 'layer1.0.bn1.running_mean'."""
    *parents, leaf = path
    return ".".join([str(p) for p in parents if p != "layers"] + [LEAF_NAMES[leaf]])


def to_torch_layout(value, leaf: str) -> np.ndarray:
    """A Flax value in torch's layout: conv HWIO -> OIHW, linear (in, out) -> (out, in)."""
    value = np.array(value)  # a writable copy: torch.from_numpy warns on read-only arrays
    if leaf == "kernel" and value.ndim == 4:
        return np.ascontiguousarray(value.transpose(3, 2, 0, 1))
    if leaf == "kernel" and value.ndim == 2:
        return np.ascontiguousarray(value.T)
    if leaf == "num_batches_tracked":
        return value.astype(np.int64)
    return value


def from_torch_layout(value: np.ndarray, leaf: str) -> np.ndarray:
    """The inverse of `to_torch_layout`."""
    if leaf == "kernel" and value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    if leaf == "kernel" and value.ndim == 2:
        return value.T
    return value


def _variables(model: nnx.Module) -> Iterator[tuple[tuple, nnx.Variable]]:
    for path, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Variable):
            yield path, node


def state_to_torch(state: nnx.State) -> dict[str, np.ndarray]:
    """Any Flax state (parameters, statistics, gradients) as a dict in the torch twin's keys."""
    return {
        torch_key(path): to_torch_layout(variable.get_value(), path[-1])
        for path, variable in nnx.to_flat_state(state)
    }


def to_torch_state_dict(model: nnx.Module) -> dict[str, np.ndarray]:
    """The model's parameters and BatchNorm statistics in the torch twin's keys and layouts.

    `num_batches_tracked` is included (int64), so `load_state_dict(strict=True)` of torch_ref and
    torchvision accepts `{k: torch.from_numpy(v) for k, v in result.items()}`.
    """
    return {torch_key(p): to_torch_layout(v.get_value(), p[-1]) for p, v in _variables(model)}


def torch_shapes(model: nnx.Module) -> dict[str, tuple[int, ...]]:
    """Every entry of `to_torch_state_dict(model)` as its torch-layout shape; works on a skeleton."""
    shapes = {}
    for path, variable in _variables(model):
        shape = tuple(variable.get_value().shape)
        if path[-1] == "kernel" and len(shape) == 4:
            shape = (shape[3], shape[2], shape[0], shape[1])
        elif path[-1] == "kernel" and len(shape) == 2:
            shape = shape[::-1]
        shapes[torch_key(path)] = shape
    return shapes


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; numpy has no bfloat16/float16 torch interop
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def load_torch_state_dict(model: nnx.Module, state_dict: Mapping[str, Any]) -> None:
    """Copy a torch-layout state_dict into the model, in place and strictly.

    Keys may carry `module.` prefixes and `shortcut.` / `linear.` spellings (`layouts.canonical_key`); other
    layouts (transformers') are respelled first with `layouts.to_twin`. A
    missing `num_batches_tracked` counts as 0, as torch itself allows for old checkpoints. Any
    other mismatch raises one StateDictMismatchError listing every missing, unexpected and
    mis-shaped key, and the model is left unchanged.
    """
    incoming = {canonical_key(k): v for k, v in state_dict.items()}
    targets = {torch_key(path): (path[-1], variable) for path, variable in _variables(model)}
    missing = [k for k in targets if k not in incoming and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in incoming if k not in targets]
    mismatched, updates = [], []
    for key, (leaf, variable) in targets.items():
        if key not in incoming:
            if key in missing:
                continue
            value = np.zeros((), np.int64)
        else:
            value = _as_numpy(incoming[key])
        value = from_torch_layout(value, leaf)
        want = tuple(variable.get_value().shape)
        if tuple(value.shape) != want:
            mismatched.append((key, tuple(to_torch_layout(value, leaf).shape),
                               tuple(to_torch_layout(np.zeros(want), leaf).shape)))
            continue
        updates.append((variable, value.astype(variable.get_value().dtype)))
    if missing or unexpected or mismatched:
        raise StateDictMismatchError(missing, unexpected, mismatched)
    for variable, value in updates:
        variable.set_value(jax.device_put(value))  # jnp.asarray would compile a copy per shape
