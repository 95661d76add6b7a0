"""tfds datasets read by index from prepared ArrayRecord files (`tfds.data_source`), no TensorFlow.

Fixed-size datasets (mnist, cifar10, ...) are decoded once into memory by `memory`; datasets of
varying image size (imagenet2012, imagenette, food101, ...) are streamed by `loader` through a
`TfdsSource`, which pickles as its name and opens the data source again in each worker.
Training never downloads: an unprepared dataset is a DataError that says how to prepare it.
"""

from __future__ import annotations

import contextlib

from flax_resnet.core.data.common import EMBEDDED_MNIST, IMAGEFOLDER, TORCHVISION_NAMES, DataError

__all__ = ["TfdsSource", "held_out_split", "open_builder", "open_split", "unprepared_message"]


def unprepared_message(name: str, where) -> str:
    """How to prepare `name` for tfds, on a machine with internet (and, for ImageNet, the archives)."""
    build = f"tfds build {name} --data_dir DIR --file_format array_record"
    if name.startswith("imagenet2012"):
        return (f"tfds dataset {name!r} is not prepared in {where} (training never downloads). ImageNet needs a "
                f"manual download: register at https://image-net.org/download-images, put ILSVRC2012_img_train.tar "
                f"and ILSVRC2012_img_val.tar in MANUAL, then, with TensorFlow installed (pip install tensorflow-cpu): "
                f"{build} --manual_dir MANUAL (hours; about 150 GB), and train with --data-dir DIR. Or extract the "
                f"archives as DIR/train/<wnid>/*.JPEG and DIR/val/<wnid>/*.JPEG and use --dataset imagefolder "
                f"--data-dir DIR")
    return (f"tfds dataset {name!r} is not prepared in {where} (training never downloads). On a machine with "
            f"internet: pip install tensorflow-cpu, then {build}, and copy DIR here (--data-dir DIR). Or pass "
            f"--data-dir with torchvision-format files, or use the offline --dataset {EMBEDDED_MNIST}")


@contextlib.contextmanager
def quiet_absl():
    """tfds warns through absl about folders it probes; the errors below say what matters."""
    from absl import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)


def open_builder(name: str, data_dir):
    """The tfds builder of `name`, with 'image' and 'label' features. Raises DataError."""
    import tensorflow_datasets as tfds

    with quiet_absl():
        try:
            builder = tfds.builder(name, data_dir=None if data_dir is None else str(data_dir))
        except tfds.core.registered.DatasetNotFoundError:
            where = f" and no torchvision-format folder for it in {data_dir}" if data_dir else ""
            raise DataError(f"unknown dataset {name!r}: not {EMBEDDED_MNIST}, not {IMAGEFOLDER}, not a tfds dataset"
                            f"{where}. torchvision folders: {', '.join(TORCHVISION_NAMES)} (with --data-dir); "
                            f"tfds names: tfds.list_builders()") from None
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise DataError(f"tfds dataset {name!r} has no 'image' and 'label' features "
                        f"(it has {', '.join(features.keys())})")
    return builder


def held_out_split(builder) -> str:
    """'test' or 'validation', whichever the dataset has (test first, as torchvision's sets)."""
    splits = list(builder.info.splits.keys())
    if not splits:  # tfds.testing.mock_data reports none, and reads any split
        return "test"
    for split in ("test", "validation"):
        if split in splits:
            return split
    raise DataError(f"tfds dataset {builder.name!r} has no test or validation split (it has {', '.join(splits)})")


def open_split(builder, split: str):
    """tfds's random-access source of one split. Raises DataError if it is not prepared."""
    with quiet_absl():
        try:
            return builder.as_data_source(split=split)
        except Exception as error:  # noqa: BLE001 - tfds raises several kinds for unprepared data
            if not builder.is_prepared():
                raise DataError(unprepared_message(builder.name, builder.data_dir)) from None
            raise DataError(f"tfds dataset {builder.name!r} in {builder.data_dir} cannot be read by index: "
                            f"{error} (prepare it with --file_format array_record)") from None


class TfdsSource:
    """One split of a tfds dataset as (decoded uint8 image, label) by index; picklable by name."""

    def __init__(self, name: str, split: str, data_dir, length: int):
        self.name, self.split, self.data_dir, self.length = name, split, data_dir, length
        self._source = None

    def __getstate__(self):
        return {**self.__dict__, "_source": None}

    def __len__(self) -> int:
        return self.length

    def describe(self, index: int) -> str:
        return f"{self.name}[{self.split}][{index}]"

    def read(self, index: int):
        """(image array HWC, label). Raises whatever tfds raises for a record it cannot decode."""
        if self._source is None:
            self._source = open_split(open_builder(self.name, self.data_dir), self.split)
        example = self._source[index]
        return example["image"], int(example["label"])
