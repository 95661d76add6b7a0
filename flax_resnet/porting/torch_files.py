"""Read and write PyTorch-layout weight files: `.pth` / `.pt` / `.bin` / `.th` (pickle) and `.safetensors`.

A `.pth` file is a pickle, and unpickling can run code. It is only ever read with
`torch.load(..., weights_only=True)`, which refuses anything but tensors and plain containers
before running it. A file is recognised by its content (zip or pickle magic, or a safetensors
header), so `checkpoint.th` and `pytorch_model.bin` read like any `.pth`. Every problem with a
file is a `WeightFileError` whose message names the file. Writes go to a temporary file in the
same folder that replaces the target only once complete.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch

from flax_resnet.core.files import PathError, atomic_file, summarize

TORCH_SUFFIXES = (".pth", ".pt", ".safetensors")
# Where training scripts commonly put the state_dict inside a saved dict, in the order tried
# ('net': kuangliu/pytorch-cifar's {'net', 'acc', 'epoch'}).
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")
DATA_PARALLEL_PREFIX = "module."
ZIP_MAGIC = b"PK\x03\x04"  # torch.save since 1.6
PICKLE_MAGIC = re.compile(rb"\x80[\x02-\x05]")  # the legacy format is a pickle from its first byte


class WeightFileError(PathError):
    """A weight file that cannot be used; the message names the file and the problem."""


class NoStateDictError(WeightFileError):
    """A readable file with no state_dict where one is looked for; `keys` are its top-level keys."""

    def __init__(self, path, problem: str, keys: list):
        super().__init__(path, problem)
        self.keys = keys


def is_torch_file(path) -> bool:
    """True for a path ending in .pth, .pt or .safetensors, or an existing file of any name that
    holds a zip, a pickle or safetensors (a Flax checkpoint is a directory)."""
    path = os.fspath(path)
    return path.lower().endswith(TORCH_SUFFIXES) or file_format(path) is not None


def file_format(path) -> str | None:
    """'safetensors' or 'pickle' (torch.save's zip or legacy pickle) from the first bytes, else None."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
    except OSError:
        return None
    if head.startswith(ZIP_MAGIC) or PICKLE_MAGIC.match(head):
        return "pickle"
    # safetensors: an 8-byte little-endian header length, then the JSON header.
    if len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 1 << 30:
        return "safetensors"
    return None


def read_torch_file(path, *, key: str | None = None, check_finite: bool = True,
                    keep_prefix: bool = False) -> dict[str, np.ndarray]:
    """A PyTorch-layout file's state_dict as numpy arrays, keys in file order (sorted in .safetensors).

    A pickle may hold a bare state_dict or one under 'state_dict', 'model_state_dict', 'model' or
    'net' (as training scripts save them), or under `key` when given. DataParallel's `module.`
    prefixes are removed unless `keep_prefix`. bfloat16 becomes float32 (exactly; numpy has no
    bfloat16), other dtypes are kept.
    Raises WeightFileError for a missing, unreadable, truncated or corrupt file, for a pickle that
    would run code or build objects (refused before anything in it runs), for a file without a
    state_dict in it (NoStateDictError), and, unless `check_finite` is False, for NaN or infinite values.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise WeightFileError(path, "no such file")
    if not os.path.isfile(path):
        raise WeightFileError(path, "is a directory, not a file")
    kind = file_format(path)
    if path.lower().endswith(".safetensors") or kind == "safetensors":
        tensors = _read_safetensors(path)
        if key is not None:
            raise WeightFileError(path, f"a safetensors file holds one state_dict; there is no entry {key!r} "
                                        f"to choose")
    else:
        tensors = _find_state_dict(_load_pickle(path), path, key)
    if not keep_prefix:
        tensors = _strip_prefix(tensors)
    state_dict = {name: _to_numpy(value, name, path) for name, value in tensors.items()}
    if not state_dict:
        raise WeightFileError(path, "holds no tensors")
    if check_finite:
        require_finite(state_dict, path)
    return state_dict


def write_torch_file(state_dict: Mapping[str, Any], path) -> None:
    """Write a state_dict (numpy, JAX or torch values) as `.pth` / `.pt` or `.safetensors`.

    Keys and values are written as given (int64 `num_batches_tracked` included), so
    `torch.load(path, weights_only=True)` or `safetensors.torch.load_file` gives them back
    bit for bit. The file appears complete or not at all; an existing file is replaced.
    """
    path = os.fspath(path)
    if not is_torch_file(path):
        raise WeightFileError(path, f"not a PyTorch file name (use one of {', '.join(TORCH_SUFFIXES)})")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise WeightFileError(path, f"folder {folder} does not exist")
    tensors = {key: _to_tensor(value) for key, value in state_dict.items()}
    with atomic_file(path) as temporary:
        if path.lower().endswith(".safetensors"):
            safetensors.torch.save_file(tensors, temporary, metadata={"format": "pt"})
        else:
            torch.save(tensors, temporary)


def non_finite_keys(state_dict: Mapping[str, np.ndarray]) -> list[str]:
    """Keys of floating-point values holding NaN or +-inf."""
    return [
        key for key, value in state_dict.items()
        if np.issubdtype(np.asarray(value).dtype, np.floating) and not np.isfinite(value).all()
    ]


def require_finite(state_dict: Mapping[str, np.ndarray], source) -> None:
    """Raise WeightFileError naming `source` and every key that holds NaN or +-inf."""
    bad = non_finite_keys(state_dict)
    if bad:
        raise WeightFileError(source, f"non-finite values (NaN or inf) in {len(bad)} tensor(s): "
                                      f"{summarize(bad)}")


def _read_safetensors(path: str) -> dict[str, torch.Tensor]:
    try:
        with safetensors.safe_open(path, framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}
    except safetensors.SafetensorError as error:
        raise WeightFileError(path, f"truncated or corrupt safetensors file ({error})") from None
    except OSError as error:
        raise WeightFileError(path, f"cannot read it ({error.strerror or error})") from None


def _load_pickle(path: str) -> Any:
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols; the error says enough
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # weights_only stops at the first global it does not allow, before calling anything.
        refused = re.search(r"GLOBAL ([\w.]+)", str(error))
        if refused:
            raise WeightFileError(path, (
                f"refused: unpickling it needs {refused.group(1)}, which could run code; only "
                f"tensors and plain containers are loaded and nothing in the file was run (if it "
                f"holds a whole pickled model, save model.state_dict() instead)")) from None
        raise WeightFileError(path, (
            "not a PyTorch weights file, or corrupt: it is not a pickle of tensors that "
            "weights-only loading accepts; nothing in the file was run")) from None
    except EOFError:
        raise WeightFileError(path, "empty or truncated PyTorch file") from None
    except OSError as error:
        raise WeightFileError(path, f"cannot read it ({error.strerror or error})") from None
    except RuntimeError as error:  # torch's zip reader: "PytorchStreamReader failed ..."
        detail = str(error).split(". ")[0]
        raise WeightFileError(path, f"truncated or corrupt PyTorch file ({detail})") from None
    except Exception as error:  # noqa: BLE001 - whatever else a damaged file makes torch.load raise
        raise WeightFileError(path, f"not a PyTorch weights file, or corrupt "
                                    f"({type(error).__name__} while reading it)") from None


def _is_tensor_dict(value: Any) -> bool:
    return (isinstance(value, Mapping) and len(value) > 0 and all(
        isinstance(k, str) and isinstance(v, (torch.Tensor, np.ndarray)) for k, v in value.items()))


def _find_state_dict(loaded: Any, path: str, key: str | None) -> Mapping[str, Any]:
    if key is not None:
        if not isinstance(loaded, Mapping):
            raise WeightFileError(path, f"holds a {type(loaded).__name__}, not a dict with an entry {key!r}")
        if key not in loaded:
            raise NoStateDictError(path, f"has no entry {key!r}; its top-level keys are "
                                         f"{summarize(list(loaded))}", list(loaded))
        if not _is_tensor_dict(loaded[key]):
            raise WeightFileError(path, f"its entry {key!r} holds a {type(loaded[key]).__name__}, "
                                        f"not a state_dict of tensors")
        return loaded[key]
    if _is_tensor_dict(loaded):
        return loaded
    if isinstance(loaded, Mapping):
        for candidate in WRAPPER_KEYS:
            if candidate in loaded and _is_tensor_dict(loaded[candidate]):
                return loaded[candidate]
        tensors = [k for k, v in loaded.items() if isinstance(v, (torch.Tensor, np.ndarray))]
        if tensors:
            others = [k for k in loaded if k not in tensors]
            raise WeightFileError(path, f"mixes tensors with other values under {summarize(others)}"
                                        f"; expected a state_dict of tensors only")
        raise NoStateDictError(path, (
            f"no state_dict found: the top-level keys are {summarize(list(loaded))}; expected "
            f"tensors, or a state_dict under {', '.join(repr(k) for k in WRAPPER_KEYS)}"), list(loaded))
    raise WeightFileError(path, f"holds a {type(loaded).__name__}, not a state_dict")


def _strip_prefix(tensors: Mapping[str, Any]) -> dict[str, Any]:
    tensors = dict(tensors)
    while tensors and all(key.startswith(DATA_PARALLEL_PREFIX) for key in tensors):
        tensors = {key[len(DATA_PARALLEL_PREFIX):]: value for key, value in tensors.items()}
    return tensors


def _to_numpy(value: Any, key: str, path: str) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    try:
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            value = value.float()
        return value.contiguous().numpy()
    except (RuntimeError, TypeError) as error:
        raise WeightFileError(path, f"{key}: cannot read this tensor as an array ({error})") from None


def _to_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        # A copy: safetensors refuses tensors that share storage, as tied weights do.
        return value.detach().cpu().contiguous().clone()
    return torch.from_numpy(np.array(value, copy=True))
