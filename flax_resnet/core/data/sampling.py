"""Which images each step sees: the shuffled training batches and the fixed evaluation batches.

Plain numpy, shared by both trainers, so a Flax run and its torch twin see the same batches.
"""

from __future__ import annotations

import numpy as np


def epoch_order(seed: int, epoch: int, count: int, batch_size: int) -> np.ndarray:
    """This epoch's shuffled batches of indices (steps x batch); the partial last batch is dropped."""
    order = np.random.default_rng([seed, epoch]).permutation(count)
    steps = count // batch_size
    return order[: steps * batch_size].reshape(steps, batch_size)


def eval_batches(images: np.ndarray, labels: np.ndarray, batch_size: int):
    """Fixed-size batches over the whole set; the last is zero-padded with mask 0."""
    for start in range(0, len(labels), batch_size):
        end = min(start + batch_size, len(labels))
        pad = batch_size - (end - start)
        yield {
            "image": np.concatenate([images[start:end], np.zeros((pad, *images.shape[1:]), images.dtype)]),
            "label": np.concatenate([labels[start:end], np.zeros((pad,), labels.dtype)]),
            "mask": np.concatenate([np.ones(end - start, np.float32), np.zeros(pad, np.float32)]),
        }
