"""Flax checkpoints of a whole model: one directory that `load` turns back into the model.

    DIR/model.json   which variant: {"format", "version", "model", "model_kwargs"[, "source"]}
    DIR/state/       parameters and BatchNorm statistics (orbax, the nnx state as a pure dict)
    DIR/files.json   the size and CRC-32 of every file in state/, checked before orbax reads any:
                     orbax would load garbled array data silently, and a failed read leaves its
                     other reads pending on a closed event loop ("Event loop is closed" tracebacks)

`model_kwargs` are `create_model`'s keyword arguments with every default filled in
(num_classes, in_channels and the variant's options), so loading needs no flags. The optional
`source` says where ported weights came from (`porting.sources.Source.record`): their key
spelling, a hub's config, the preprocessing they expect and the class names.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from flax_resnet.core.files import (
    PathError,
    atomic_directory,
    checksum_problem,
    folder_checksums,
    summarize,
    write_json,
)
from flax_resnet.core.registry import full_kwargs
from flax_resnet.models import attach_recipe, model_recipe, model_skeleton

FORMAT = "flax_resnet.checkpoint"
VERSION = 1
METADATA_FILE = "model.json"
STATE_DIR = "state"
CHECKSUMS_FILE = "files.json"


class CheckpointError(PathError):
    """A checkpoint directory that cannot be read or written; the message names it."""


def is_checkpoint(path) -> bool:
    """True for a directory holding this module's metadata file."""
    return os.path.isfile(os.path.join(os.fspath(path), METADATA_FILE))




def save(model: nnx.Module, path, *, model_name: str | None = None,
         model_kwargs: Mapping[str, Any] | None = None, overwrite: bool = False,
         source: Mapping[str, Any] | None = None) -> None:
    """Write the model's parameters and BatchNorm statistics, and what variant it is, to `path`.

    The variant comes from `model_name` / `model_kwargs` or else from the model itself (a model
    made by `load`, or by `create_model` once it records its recipe). The directory appears
    complete or not at all. An existing checkpoint is replaced only with `overwrite=True`, and a
    path that exists but is not a checkpoint never is. `source` (JSON values) is kept in model.json.
    """
    path = os.fspath(path)
    name, kwargs = _variant_of(model, model_name, model_kwargs)
    expected = _flat_shapes(nnx.to_pure_dict(nnx.state(model_skeleton(name, **kwargs))))
    actual = _flat_shapes(nnx.to_pure_dict(nnx.state(model)))
    if expected != actual:
        raise ValueError(f"the model is not a {describe(name, kwargs)}: "
                         f"{_tree_difference(actual, expected, 'model', 'variant')}")
    _check_target(path, overwrite)
    metadata = {"format": FORMAT, "version": VERSION, "model": name, "model_kwargs": kwargs}
    if source:
        metadata["source"] = dict(source)
    with atomic_directory(path) as temporary:
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(os.path.abspath(os.path.join(temporary, STATE_DIR)),
                              nnx.to_pure_dict(nnx.state(model)))
            checkpointer.wait_until_finished()
        with open(os.path.join(temporary, METADATA_FILE), "w") as handle:
            json.dump(metadata, handle, indent=2)
            handle.write("\n")
        write_json(os.path.join(temporary, CHECKSUMS_FILE), folder_checksums(os.path.join(temporary, STATE_DIR)))


def read_metadata(path) -> tuple[str, dict[str, Any]]:
    """`(model name, create_model kwargs)` of a checkpoint; CheckpointError if it is not one."""
    metadata = _read_metadata_file(path)
    try:
        return metadata["model"], full_kwargs(metadata["model"], metadata["model_kwargs"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(path, f"{METADATA_FILE} names no valid variant ({error})") from None


def read_source_record(path) -> dict[str, Any] | None:
    """The `source` record saved with a checkpoint, or None; CheckpointError if it is not one."""
    source = _read_metadata_file(path).get("source")
    return dict(source) if isinstance(source, dict) else None


def _read_metadata_file(path) -> dict[str, Any]:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(path, "no such checkpoint directory")
    if not os.path.isdir(path):
        raise CheckpointError(path, "not a Flax checkpoint directory, and not a PyTorch file (it "
                                    "holds neither a zip, a pickle nor safetensors)")
    if not is_checkpoint(path):
        raise CheckpointError(path, f"not a flax_resnet checkpoint: no {METADATA_FILE} in it")
    try:
        with open(os.path.join(path, METADATA_FILE)) as handle:
            metadata = json.load(handle)
    except (OSError, ValueError) as error:
        raise CheckpointError(path, f"unreadable {METADATA_FILE} ({error})") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise CheckpointError(path, f"{METADATA_FILE} is not a {FORMAT} file")
    if metadata.get("version") != VERSION:
        raise CheckpointError(path, f"checkpoint version {metadata.get('version')!r} is not "
                                    f"supported (this code reads version {VERSION})")
    return metadata


def load(path) -> nnx.Module:
    """The model saved at `path`, rebuilt as the variant its metadata names.

    Like `create_model`'s, the model starts in training mode: call `.eval()` for inference.
    Raises CheckpointError naming the directory if it is missing, not a checkpoint, damaged, or
    holds arrays that do not fit the variant (naming the missing, unexpected and mis-shaped ones).
    """
    path = os.fspath(path)
    name, kwargs = read_metadata(path)
    skeleton = model_skeleton(name, **kwargs)
    graphdef, state = nnx.split(skeleton)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device),
                          nnx.to_pure_dict(state))
    state_dir = os.path.abspath(os.path.join(path, STATE_DIR))
    _check_files(path, state_dir)
    try:
        with _orbax_warnings_silenced(), ocp.StandardCheckpointer() as checkpointer:
            stored = checkpointer.metadata(state_dir).item_metadata
            if stored is None:
                raise CheckpointError(path, f"damaged checkpoint: the array metadata in "
                                            f"{STATE_DIR}/ is missing or unreadable")
            stored, expected = _flat_shapes(stored.tree), _flat_shapes(target)
            if stored != expected:
                raise CheckpointError(path, f"does not fit {describe(name, kwargs)}: "
                                            f"{_tree_difference(stored, expected, 'checkpoint', 'model')}")
            restored = checkpointer.restore(state_dir, target)
    except CheckpointError:
        raise
    except Exception as error:  # noqa: BLE001 - orbax and tensorstore raise many kinds for bad files
        failure = str(error).split(". ")[0].splitlines()[0][:120]
    else:
        failure = None
    # Raised out here so the error does not keep orbax's failed reads (and their frames) alive.
    if failure is not None:
        raise CheckpointError(path, f"damaged checkpoint: cannot read the arrays in {STATE_DIR}/ "
                                    f"({failure})")
    nnx.replace_by_pure_dict(state, restored)
    model = nnx.merge(graphdef, state)
    attach_recipe(model, name, kwargs)
    return model


def _check_files(path: str, state_dir: str) -> None:
    checksums_path = os.path.join(path, CHECKSUMS_FILE)
    if not os.path.exists(checksums_path):
        return  # written before checksums were: orbax alone judges the files
    try:
        with open(checksums_path) as handle:
            problem = checksum_problem(state_dir, json.load(handle))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(path, f"unreadable {CHECKSUMS_FILE} ({error})") from None
    if problem is not None:
        raise CheckpointError(path, f"damaged checkpoint: {STATE_DIR}/{problem}")


def describe(name: str, kwargs: Mapping[str, Any]) -> str:
    """'resnet20(num_classes=10, in_channels=3, shortcut='B', ...)'."""
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"


def _variant_of(model, model_name, model_kwargs) -> tuple[str, dict[str, Any]]:
    if model_name is None:
        recipe = model_recipe(model)
        if recipe is None:
            raise ValueError("cannot tell which variant the model is: pass model_name= and "
                             "model_kwargs= (as given to create_model)")
        model_name, recorded = recipe
        model_kwargs = recorded if model_kwargs is None else model_kwargs
    return model_name, full_kwargs(model_name, model_kwargs or {})


def _flat_shapes(tree) -> dict[str, tuple[tuple[int, ...], str]]:
    flat = {}
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = ".".join(str(getattr(key, "key", getattr(key, "idx", key))) for key in key_path)
        flat[name] = (tuple(leaf.shape), np.dtype(leaf.dtype).name)
    return flat


def _tree_difference(got: dict, want: dict, got_label: str, want_label: str) -> str:
    parts = []
    missing = [k for k in want if k not in got]
    unexpected = [k for k in got if k not in want]
    if missing:
        parts.append(f"missing in the {got_label} ({len(missing)}): {summarize(missing)}")
    if unexpected:
        parts.append(f"not in the {want_label} ({len(unexpected)}): {summarize(unexpected)}")
    for key in want:
        if key in got and got[key] != want[key]:
            parts.append(f"{key}: {got_label} {got[key][0]} {got[key][1]}, "
                         f"{want_label} {want[key][0]} {want[key][1]}")
    return "; ".join(parts[:8]) + ("" if len(parts) <= 8 else f"; and {len(parts) - 8} more")


def _check_target(path: str, overwrite: bool) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CheckpointError(path, f"folder {folder} does not exist")
    if os.path.lexists(path):
        if not is_checkpoint(path):
            raise CheckpointError(path, "exists and is not a flax_resnet checkpoint; not replacing it")
        if not overwrite:
            raise CheckpointError(path, "already exists (pass overwrite=True to replace it)")


@contextlib.contextmanager
def _orbax_warnings_silenced() -> Iterator[None]:
    """Orbax logs warnings about damaged files through absl; the CheckpointError says it once."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
