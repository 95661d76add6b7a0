"""Pin every ReLU's on/off pattern to the float64 run's, so float32 gradients can be compared.

A ReLU input within float32 rounding of zero can land on either side in two float32 runs of the
same net. Its gradient then switches between a value and zero, and through the BatchNorms of a
small test batch that one element moved whole gradient tensors by 10 % (resnet34's third stage,
in one run and not in another, depending on the CPU's rounding). A float32 gradient comparison
means something only at one pattern, so `record_torch_relus` takes every ReLU's pattern
(input > 0) from the float64 torch run, and `pinned_torch_relus` / `pinned_flax_relus` make the
float32 runs apply exactly those patterns (`x * mask`, whose gradient is the mask). Away from
the pattern's boundary that is the model's own function.

Both models call their ReLUs in the same order (the twins mirror each other line by line):
torch_ref through `torch.nn.functional.relu` (nn.ReLU included), flax_resnet through
`jax.nn.relu`. Replays check that every mask is used, in order, with the shape it was recorded at.
"""

from __future__ import annotations

import contextlib
import copy

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F


@contextlib.contextmanager
def _replaced(owner, name, value):
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield original
    finally:
        setattr(owner, name, original)


@contextlib.contextmanager
def record_torch_relus():
    """Yield a list that fills with every F.relu's `input > 0` (numpy, NCHW) inside the block."""
    masks: list[np.ndarray] = []

    def relu(x, inplace=False):
        masks.append((x > 0).detach().cpu().numpy())
        return original(x)

    with _replaced(F, "relu", relu) as original:
        yield masks


def float64_relu_pattern(torch_model: torch.nn.Module, nchw_images, *, train: bool) -> list[np.ndarray]:
    """The ReLU pattern of a float64 copy of `torch_model` on these images (the model is untouched)."""
    twin = copy.deepcopy(torch_model).double().train(train)
    with torch.no_grad(), record_torch_relus() as masks:
        twin(torch.from_numpy(np.asarray(nchw_images, np.float64)))
    return masks


@contextlib.contextmanager
def pinned_torch_relus(masks: list[np.ndarray]):
    """Every F.relu applies the next recorded mask instead of its own."""
    remaining = iter(masks)

    def relu(x, inplace=False):
        mask = torch.from_numpy(next(remaining))
        assert mask.shape == x.shape, (tuple(mask.shape), tuple(x.shape))
        return x * mask.to(x.dtype)

    with _replaced(F, "relu", relu):
        yield
    assert next(remaining, None) is None, "the run used fewer ReLUs than the recorded one"


@contextlib.contextmanager
def pinned_flax_relus(masks: list[np.ndarray]):
    """Every jax.nn.relu applies the next recorded (NCHW) mask, transposed to NHWC."""
    remaining = iter(masks)

    def relu(x):
        mask = next(remaining)
        mask = jnp.asarray(mask.transpose(0, 2, 3, 1) if mask.ndim == 4 else mask)
        assert mask.shape == x.shape, (mask.shape, x.shape)
        return jnp.where(mask, x, jnp.zeros((), x.dtype))

    with _replaced(jax.nn, "relu", relu):
        yield
    assert next(remaining, None) is None, "the run used fewer ReLUs than the recorded one"
