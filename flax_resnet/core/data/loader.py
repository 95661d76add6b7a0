"""Streamed datasets: grain workers read, decode, crop and batch the images as training needs them.

`StreamedDataset` serves ImageFolder trees (`imagefolder.PathTable`) and tfds datasets of varying
image size (`tfds_source.TfdsSource`): any source with `len`, `read(index) -> (image, label)` and
`describe(index)`. Memory stays flat whatever the dataset's size: a few batches per worker.

The position contract (what a mid-epoch checkpoint stores and restores)
-----------------------------------------------------------------------
- A global training batch is a pure function of (seed, epoch, step): its examples are
  `sampling.epoch_order(seed, epoch, train_count, batch_size)[step]`, and example `i`'s random
  crop and flip in epoch `e` come from `numpy.random.default_rng([seed, HOST_AUGMENT_STREAM, e, i])`.
  Neither depends on the number of workers, their prefetching, or the number of processes.
  With repeated augmentation (`ra_reps`) an example comes several times an epoch, each copy
  augmented apart: the copy at place `p` of the epoch's order (step * batch_size + its place in
  the global batch) draws from `default_rng([seed, HOST_AUGMENT_STREAM, e, i, p])`. That order
  is torchvision's RASampler sharded across the processes, so it does depend on their number.
- Process `i` of `n` (`TrainingData.shard`) reads only its contiguous part of each global batch
  (`base.ProcessShard.part`): the processes together read the epoch's examples exactly once.
- `EpochBatches.state()` is `{"epoch", "step", "seed", "batch_size", "train_count"}` (JSON-ready)
  where `step` counts the batches the iterator has handed out, not those its workers have
  prefetched. `data.resume(state)`, or `data.train_batches(epoch, ..., start_step=step)`, yields
  exactly the batches an uninterrupted epoch had left, with the same pixels. grain's own iterator
  state is not needed, and the state stays valid for another worker or process count.
- Undecodable images: in training the example is replaced by the next decodable one in the
  dataset (so batches keep their size, deterministically); in evaluation it is masked out. Either
  way a warning names the file and `skipped_images` counts it.

Workers are grain's `mp_prefetch` processes. Each reads whole batches (its share is every
`workers`-th batch), which grain passes on through shared memory; the iterator hands them out in
order. `workers=0` decodes in the calling thread, batch by batch. The workers are
started once and kept: the training stream runs on from one epoch into the next (so the workers
prepare the next epoch's first batches while the model is evaluated), and the evaluation stream
cycles over the held-out set. Asking for batches at another position (a resumption, another
seed) restarts a stream there. `StreamedDataset.close()` stops the workers; so does garbage
collection. Workers are spawned processes, so a script that trains with `workers > 0` needs the
`if __name__ == "__main__":` guard (scripts/train.py has it).
"""

from __future__ import annotations

import atexit
import functools
import itertools
import math
import os
import warnings
import weakref
from typing import Any

import numpy as np

from flax_resnet.core.augment import channel_statistics
from flax_resnet.core.data.base import Batches, EpochBatches, ProcessShard, TrainingData, position_identity
from flax_resnet.core.data.common import DataError
from flax_resnet.core.data.sampling import epoch_order, steps_per_epoch
from flax_resnet.core.data.transforms import HostTransforms, decode_image

__all__ = ["HOST_AUGMENT_STREAM", "IMAGENET_MEAN", "IMAGENET_STD", "StreamedDataset", "default_workers"]

HOST_AUGMENT_STREAM = 2  # the device augmentation uses stream 1 (setup.AUGMENT_STREAM)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's, for RGB data without --mean/--std
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATION_SAMPLE = 512  # training images measured for the mean and std of 1-channel data
PREFETCH_PER_WORKER = 2  # batches each worker keeps ready
ENDLESS = 1 << 40  # the length of a stream: far more batches than any run takes


def default_workers() -> int:
    """Loader processes when --workers is not given: one per core available, at most 32."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 32))


class StreamedDataset(TrainingData):
    """A dataset read from its files (or tfds records) batch by batch; see the module docstring."""

    streamed = True

    def __init__(self, *, name: str, source: str, train, test, num_classes: int, class_names, transforms:
                 HostTransforms, workers: int, shard: ProcessShard = ProcessShard(), info: dict | None = None,
                 ra_reps: int | None = None):
        self.name, self.source, self.num_classes = name, source, num_classes
        self.class_names = None if class_names is None else tuple(class_names)
        self.train, self.test, self.transforms, self.workers, self.shard = train, test, transforms, workers, shard
        self.ra_reps = ra_reps
        self.info = dict(info or {})
        self._streams: dict[str, Stream] = {}

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.transforms.train_crop, self.transforms.train_crop, self.transforms.channels)

    @property
    def eval_image_shape(self) -> tuple[int, int, int]:
        return (self.transforms.size, self.transforms.size, self.transforms.channels)

    @property
    def train_count(self) -> int:
        return len(self.train)

    @property
    def test_count(self) -> int:
        return len(self.test)

    def normalization(self):
        if self.transforms.channels == 3:
            return IMAGENET_MEAN, IMAGENET_STD, "ImageNet's mean and std (torchvision's)"
        count = min(NORMALIZATION_SAMPLE, self.train_count)
        indices = np.sort(np.random.default_rng(0).permutation(self.train_count)[:count])
        reader = ExampleReader(self.train, self.transforms)
        images = np.stack([reader.eval_example(int(i))[0] for i in indices])
        mean, std = channel_statistics(images)
        return mean, std, f"measured on {count} training images (eval transform)"

    def details(self) -> dict[str, Any]:
        return {**super().details(), **self.info, "transforms": self.transforms.describe(),
                "workers": self.workers}

    def train_batches(self, epoch: int, *, seed: int, batch_size: int, start_step: int = 0) -> EpochBatches:
        steps = self.steps_per_epoch(batch_size)
        if not 0 <= start_step <= steps:
            raise ValueError(f"start_step {start_step} is outside the epoch's {steps} steps")
        position = epoch * steps + start_step  # batches of the run before this one
        stream = self._stream("train", (seed, batch_size), position, lambda: TrainBatchSource(
            ExampleReader(self.train, self.transforms), seed=seed, batch_size=batch_size, first=position,
            part=self.shard.part(batch_size), ra_reps=self.ra_reps, world_size=self.shard.count))
        return EpochBatches(stream.take(steps - start_step), epoch=epoch, start_step=start_step, steps_per_epoch=steps,
                            identity=position_identity(seed, batch_size, self.train_count, self.sampler_identity()))

    def eval_batches(self, batch_size: int) -> Batches:
        passes = math.ceil(self.test_count / batch_size)
        current = self._streams.get("eval")
        position = current.position if current is not None and current.key == batch_size else 0
        position = -(-position // passes) * passes  # the start of a pass
        stream = self._stream("eval", batch_size, position, lambda: EvalBatchSource(
            ExampleReader(self.test, self.transforms), batch_size=batch_size, part=self.shard.part(batch_size)))
        return Batches(stream.take(passes), passes)

    def _stream(self, name: str, key, position: int, make_source) -> Stream:
        """The stream `name`, restarted unless it is at `position` with the same `key`."""
        stream = self._streams.get(name)
        if stream is None or stream.key != key or stream.position != position:
            if stream is not None:
                stream.close()
            stream = self._streams[name] = Stream(key, make_source(), position, self.workers)
        return stream

    def close(self) -> None:
        """Stop the loader's worker processes (a later request starts them again)."""
        for stream in self._streams.values():
            stream.close()
        self._streams.clear()


# ---------------------------------------------------------------------------------------------
# One example, and what happens when it cannot be decoded
# ---------------------------------------------------------------------------------------------

class ExampleReader:
    """Reads example `index` of `source` and applies the train or eval transform."""

    def __init__(self, source, transforms: HostTransforms):
        self.source, self.transforms = source, transforms

    def _decoded(self, index: int):
        """(PIL image, label), or None after warning that the image cannot be decoded."""
        try:
            image, label = self.source.read(index)
            return decode_image(image), label
        except Exception as error:  # noqa: BLE001 - any failure to read one image skips it
            warnings.warn(f"skipping undecodable image {self.source.describe(index)}: "
                          f"{type(error).__name__}: {error}", stacklevel=2)
            return None

    def train_example(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, int, int]:
        """(pixels, label, skipped): an undecodable image is replaced by the next decodable one."""
        count = len(self.source)
        for offset in range(count):
            decoded = self._decoded((index + offset) % count)
            if decoded is not None:
                return self.transforms.train(decoded[0], rng), decoded[1], int(offset > 0)
        raise DataError(f"none of the {count} images of {self.source.describe(0)}'s dataset can be decoded")

    def eval_example(self, index: int) -> tuple[np.ndarray, int, bool]:
        """(pixels, label, decoded): an undecodable image gives zeros and decoded=False."""
        decoded = self._decoded(index)
        if decoded is None:
            t = self.transforms
            return np.zeros((t.size, t.size, t.channels), np.uint8), 0, False
        return self.transforms.eval(decoded[0]), decoded[1], True


def _empty_batch(count: int, transforms: HostTransforms, size: int) -> np.ndarray:
    return np.empty((count, size, size, transforms.channels), np.uint8)


# ---------------------------------------------------------------------------------------------
# Batches as grain random-access sources: element k is a whole (process-local) batch
# ---------------------------------------------------------------------------------------------

class TrainBatchSource:
    """Element g: this process's part of the run's batch `first + g`, counting every epoch's steps
    from epoch 0 step 0 (an endless sequence: the stream runs from one epoch into the next)."""

    def __init__(self, reader: ExampleReader, *, seed: int, batch_size: int, first: int, part: slice,
                 ra_reps: int | None = None, world_size: int = 1):
        self.reader, self.seed, self.batch_size, self.first, self.part = reader, seed, batch_size, first, part
        self.ra_reps, self.world_size = ra_reps, world_size
        self.steps = steps_per_epoch(len(reader.source), batch_size, ra_reps=ra_reps, world_size=world_size)
        self._orders: dict[int, np.ndarray] = {}  # computed where they are used (in each worker), not pickled

    def __getstate__(self):
        return {**self.__dict__, "_orders": {}}

    def __len__(self) -> int:
        return ENDLESS

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders = {epoch: epoch_order(self.seed, epoch, len(self.reader.source), self.batch_size,
                                               ra_reps=self.ra_reps, world_size=self.world_size)}
        return self._orders[epoch]

    def __getitem__(self, g: int) -> dict[str, np.ndarray]:
        epoch, step = divmod(self.first + g, self.steps)
        indices = self._order(epoch)[step, self.part]
        places = step * self.batch_size + np.arange(self.batch_size)[self.part]  # in the epoch's order
        images = _empty_batch(len(indices), self.reader.transforms, self.reader.transforms.train_crop)
        labels, skipped = np.empty(len(indices), np.int32), np.empty(len(indices), np.int32)
        for j, (index, place) in enumerate(zip(indices, places)):
            # A repeated example's copies are augmented apart, each by its place in the order.
            copy = () if self.ra_reps is None else (int(place),)
            rng = np.random.default_rng([self.seed, HOST_AUGMENT_STREAM, epoch, int(index), *copy])
            images[j], labels[j], skipped[j] = self.reader.train_example(int(index), rng)
        return {"image": images, "label": labels, "index": indices.astype(np.int64), "skipped": skipped}


class EvalBatchSource:
    """Element g: this process's part of the held-out examples of batch b = g mod (batches per
    pass), i.e. [b * size, (b + 1) * size), padded; endless, one pass after another."""

    def __init__(self, reader: ExampleReader, *, batch_size: int, part: slice):
        self.reader, self.batch_size, self.part = reader, batch_size, part
        self.passes = math.ceil(len(reader.source) / batch_size)

    def __len__(self) -> int:
        return ENDLESS

    def __getitem__(self, g: int) -> dict[str, np.ndarray]:
        b = g % self.passes
        positions = np.arange(b * self.batch_size, (b + 1) * self.batch_size)[self.part]
        images = _empty_batch(len(positions), self.reader.transforms, self.reader.transforms.size)
        labels, mask = np.zeros(len(positions), np.int32), np.zeros(len(positions), np.float32)
        skipped = np.zeros(len(positions), np.int32)
        for j, index in enumerate(positions):
            if index >= len(self.reader.source):
                images[j] = 0
                continue
            images[j], labels[j], decoded = self.reader.eval_example(int(index))
            mask[j], skipped[j] = float(decoded), int(not decoded)
        index = np.where(positions < len(self.reader.source), positions, -1)
        return {"image": images, "label": labels, "mask": mask, "index": index, "skipped": skipped}


class Stream:
    """A grain iterator over an endless batch source, with the position of its next batch."""

    def __init__(self, key, source, position: int, workers: int):
        self.key, self.position = key, position
        self._iterator, self._close = _iterate(source, workers)
        if self._close is not None:
            _open_streams.add(self)

    def take(self, count: int):
        """The next `count` batches, advancing the position as each is handed out."""
        for _ in range(count):
            batch = next(self._iterator)
            self.position += 1
            yield batch

    def close(self) -> None:
        if self._close is not None:
            close, self._close = self._close, None
            _open_streams.discard(self)
            close()


# Streams still open at exit are closed first, so their workers stop and free their shared memory
# before multiprocessing's own exit handlers run (atexit runs the later registration first).
_open_streams: weakref.WeakSet = weakref.WeakSet()


@functools.cache
def _close_streams_at_exit() -> None:
    atexit.register(lambda: [stream.close() for stream in list(_open_streams)])


def _allow_absl_flags() -> None:
    """grain reads absl flags in the calling process; a program that never parsed them (anything
    but an absl app) would fail on the first read. Parsing none keeps every default."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _exit_with_parent(parent: int, worker_index: int, worker_count: int) -> None:
    """In each worker: exit when the training process (pid `parent`) is gone. grain stops its
    workers when the iterator is closed, but a parent killed by a signal never closes it."""
    import threading
    import time

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _iterate(source, workers: int):
    """(iterator over the source's elements in order, close): grain worker processes, or with
    `workers=0` plain calls in the calling thread (as the step runs asynchronously on an
    accelerator, the next batch is decoded meanwhile)."""
    if workers == 0:
        return (source[g] for g in itertools.count()), None
    import grain

    _allow_absl_flags()
    _close_streams_at_exit()
    # One reader thread per worker: the workers are the parallelism, and one batch in flight
    # per thread bounds memory.
    dataset = grain.MapDataset.source(source).to_iter_dataset(
        grain.ReadOptions(num_threads=1, prefetch_buffer_size=1))
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=workers, per_worker_buffer_size=PREFETCH_PER_WORKER), worker_init_fn=functools.partial(_exit_with_parent, os.getpid()))
    iterator = iter(dataset)
    return iterator, iterator.close
