"""What both trainers read: `TrainingData`, its process-local batches, and a pass's position.

Plain Python and numpy. Two kinds implement it: `memory.Dataset` (uint8 arrays held in memory)
and `loader.StreamedDataset` (images decoded by grain workers as they are needed).

Batches. A global training batch is the same for every process: batch `step` of epoch `epoch`
holds the examples `sampling.epoch_order(seed, epoch, train_count, batch_size)[step]` (the
partial last batch dropped). With several processes, process `i` of `n` gets the contiguous part
`[i * b / n, (i + 1) * b / n)` of every global batch, so the processes together read each
example of the epoch exactly once, and each process's batches have batch_size / n images.
With repeated augmentation (`ra_reps`, torchvision's RASampler) the order is that sampler's,
sharded across the n processes (`sampling.epoch_order`): each chosen example ra_reps times.
Evaluation batches cover the held-out set in order; the last is padded and has `mask` 0 there.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

from flax_resnet.core.data.common import DataError
from flax_resnet.core.data.sampling import sampler_identity, steps_per_epoch

__all__ = ["Batches", "EpochBatches", "ProcessShard", "TrainingData"]


@dataclasses.dataclass(frozen=True)
class ProcessShard:
    """Which process this is (`index` of `count`), as jax.process_index() and jax.process_count()."""

    index: int = 0
    count: int = 1

    def part(self, global_size: int) -> slice:
        """This process's contiguous part of a global batch of `global_size` examples."""
        if global_size % self.count:
            raise ValueError(f"a batch of {global_size} cannot be split evenly over {self.count} processes")
        local = global_size // self.count
        return slice(self.index * local, (self.index + 1) * local)


class Batches:
    """An iterator over batches ({'image': uint8 NHWC, 'label': int32[, 'mask': float32]}) that
    counts the images that could not be decoded (`skipped_images`), keeps the dataset indices of
    the batch it last handed out (`last_indices`, -1 for padding), and closes its workers when it
    ends, when it is closed, or on leaving a `with` block."""

    def __init__(self, batches: Iterator[dict], steps: int, close: Callable[[], None] | None = None):
        self._batches, self._steps, self._close = batches, steps, close
        self.done = 0  # batches yielded so far
        self.skipped_images = 0
        self.last_indices = None

    def __len__(self) -> int:
        """Batches left to yield."""
        return self._steps - self.done

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self.done >= self._steps:
            self.close()
            raise StopIteration
        try:
            batch = dict(next(self._batches))
        except BaseException:
            self.close()
            raise
        self.skipped_images += int(batch.pop("skipped").sum())
        self.last_indices = batch.pop("index")
        self.done += 1
        return batch

    def close(self) -> None:
        if self._close is not None:
            close, self._close = self._close, None
            close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


class EpochBatches(Batches):
    """One epoch's training batches from `start_step` on, with a resumable position.

    `state()` after k batches of epoch e were taken (counting from step 0, whatever the start) is
    `{"epoch": e, "step": k, "seed", "batch_size", "train_count"}` (with repeated augmentation also
    "ra_reps" and "world_size"): JSON-ready, and all a resumption needs, since a batch (its
    examples and their augmentation) is a pure function of seed, epoch and step.
    `TrainingData.resume(state)` yields exactly the batches an uninterrupted pass had left. Worker
    processes and prefetch buffers hold nothing that the position does not determine.
    """

    def __init__(self, batches: Iterator[dict], *, epoch: int, start_step: int, steps_per_epoch: int,
                 identity: dict[str, int], close: Callable[[], None] | None = None):
        super().__init__(batches, steps_per_epoch - start_step, close)
        self.epoch, self.start_step, self.identity = epoch, start_step, identity

    @property
    def step(self) -> int:
        """Steps of this epoch done, counted from its first batch."""
        return self.start_step + self.done

    def state(self) -> dict[str, int]:
        return self.state_at(self.step)

    def state_at(self, step: int) -> dict[str, int]:
        """The state once `step` batches of the epoch are used: a consumer that reads ahead
        (prefetching) is behind this iterator."""
        return {"epoch": self.epoch, "step": step, **self.identity}


class TrainingData(abc.ABC):
    """A dataset as the trainers see it. Attributes: name, source, num_classes, class_names (or
    None), image_shape (H, W, C of the batches), train_count, test_count, streamed (True when
    images are decoded and cropped on the host as they are read)."""

    name: str
    source: str
    num_classes: int
    class_names: tuple[str, ...] | None
    streamed: bool
    shard: ProcessShard  # the process whose part of each batch this object yields
    ra_reps: int | None = None  # repeated augmentation's copies of each image (None: a plain shuffle)
    host_augment = None  # an in-memory set's host crop, flip and policy (`memory_augment.HostAugment`)

    @property
    @abc.abstractmethod
    def image_shape(self) -> tuple[int, int, int]: ...

    @property
    def eval_image_shape(self) -> tuple[int, int, int]:
        """H, W, C of the evaluation batches: the training ones' unless they are cropped apart (FixRes)."""
        return self.image_shape

    @property
    @abc.abstractmethod
    def train_count(self) -> int: ...

    @property
    @abc.abstractmethod
    def test_count(self) -> int: ...

    @abc.abstractmethod
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...], str]:
        """(mean, std, how they were obtained) when the config gives none."""

    @abc.abstractmethod
    def train_batches(self, epoch: int, *, seed: int, batch_size: int, start_step: int = 0) -> EpochBatches:
        """This process's part of epoch `epoch`'s global batches of `batch_size`, from `start_step`."""

    @abc.abstractmethod
    def eval_batches(self, batch_size: int) -> Batches:
        """This process's part of every global evaluation batch of `batch_size` (padded, masked)."""

    def details(self) -> dict[str, Any]:
        """What config.json records about the data."""
        details = {"name": self.name, "source": self.source, "train_images": self.train_count,
                   "test_images": self.test_count, "image_shape": list(self.image_shape),
                   "classes": None if self.class_names is None else list(self.class_names)}
        if self.ra_reps is not None:
            details["sampler"] = {"kind": "repeated_augmentation", **self.sampler_identity()}
        return details

    def describe(self) -> str:
        """One line: name, source, sizes."""
        h, w, c = self.image_shape
        return (f"{self.name} ({self.source}): {self.train_count} train / {self.test_count} test "
                f"images, {h}x{w}x{c}, {self.num_classes} classes")

    def close(self) -> None:
        """Release what reading holds (a streamed dataset's worker processes)."""

    def steps_per_epoch(self, batch_size: int) -> int:
        """Global batches of `batch_size` in an epoch (`sampling.steps_per_epoch`)."""
        return steps_per_epoch(self.train_count, batch_size, ra_reps=self.ra_reps, world_size=self.shard.count)

    def sampler_identity(self) -> dict[str, int]:
        """What the position records about the order beyond its seed (`sampling.sampler_identity`)."""
        return sampler_identity(self.ra_reps, self.shard.count)

    def check_position(self, state: dict[str, int]) -> None:
        """Raise DataError if an `EpochBatches.state()` belongs to other data (another training-set
        size) or another order (repeated augmentation over another number of processes):
        resuming there would not read the batches the interrupted run had left."""
        if state.get("train_count") != self.train_count:
            raise DataError(f"the run was interrupted reading {state.get('train_count')} training images, "
                            f"and {self.name} ({self.source}) now has {self.train_count}; resume with the "
                            f"same data, or start a new run in another --workdir")
        recorded = {key: state[key] for key in ("ra_reps", "world_size") if key in state}
        if recorded != self.sampler_identity():
            def order(identity):
                return (f"repeated augmentation x{identity['ra_reps']} over {identity['world_size']} process(es)"
                        if identity else "a plain shuffle")
            raise DataError(f"the run was interrupted in an epoch ordered by {order(recorded)}, and this run "
                            f"orders it by {order(self.sampler_identity())}; resume with the same --ra-reps and "
                            f"number of processes")

    def resume(self, state: dict[str, int]) -> EpochBatches:
        """The rest of the epoch an `EpochBatches.state()` describes (`check_position` first)."""
        self.check_position(state)
        return self.train_batches(state["epoch"], seed=state["seed"], batch_size=state["batch_size"],
                                  start_step=state["step"])


def position_identity(seed: int, batch_size: int, train_count: int, sampler: dict[str, int] | None = None
                      ) -> dict[str, int]:
    return {"seed": seed, "batch_size": batch_size, "train_count": train_count, **(sampler or {})}
