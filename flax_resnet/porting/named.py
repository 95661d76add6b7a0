"""Pretrained names wherever porting takes a path (`port_weights.py SRC`, `--init-from`, `--weights`).

A catalog name becomes its file (downloaded and checked by `weights_path`), read as any file of
its kind is, then given what the catalog knows and the file cannot say: the variant, the eval
transform and the class names. Every expected failure is an InputError: PretrainedError for the
name or the download, SourceError for a file that does not fit.
"""

from __future__ import annotations

import dataclasses

from flax_resnet.core.pretrained import Entry, cache, find, hub
from flax_resnet.porting.hub import Preprocessing
from flax_resnet.porting.sources import Source, build_model, read_source, resolve_variant


def read_named(name: str, *, key: str | None = None) -> Source:
    """The Source of catalog name `name`."""
    return read_entry(find(name), key=key)


def read_entry(entry: Entry, *, key: str | None = None) -> Source:
    """The weights of `entry`, read from its checked local file, with the catalog's facts."""
    source = read_source(weights_path(entry), key=key)
    preprocessing = source.preprocessing
    if entry.transform is not None:
        preprocessing = Preprocessing.from_json(entry.transform.preprocessing())
    labels = source.labels if entry.classes == "numbered" else entry.labels()
    return dataclasses.replace(source, path=entry.name, model=entry.model, preprocessing=preprocessing,
                               labels=labels)


def build_entry(entry: Entry):
    """(the Flax model holding `entry`'s weights, its Source)."""
    source = read_entry(entry)
    variant, hint = resolve_variant(source, name=entry.model, num_classes=entry.num_classes,
                                    in_channels=entry.in_channels)
    return build_model(source, variant, hint=hint), source


def weights_path(entry: Entry) -> str:
    """The local file of `entry`'s weights, its sha256 checked; downloaded if not kept yet: hub
    weights by huggingface_hub, URL weights by torch.hub (`torch_ref.pretrained.weights_path`), as
    the torch twin downloads them, into the same cache."""
    if entry.hub_id is not None:
        path = hub.hub_weights(entry)
        cache.check_hub_blob(path)
        return path
    from torch_ref.pretrained import weights_path as torch_hub_file

    return torch_hub_file(entry)
