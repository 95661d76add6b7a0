"""Where pretrained weights are kept, and the sha256 checks that decide whether a kept file may be used.

    $TORCH_HOME/hub/checkpoints/FILE           URL weights, as torch.hub keeps them (the torch side downloads)
    the Hugging Face cache                     hub weights, as huggingface_hub keeps them
    $FLAX_RESNET_CACHE/pretrained/KEY/         each source converted once to a Flax checkpoint; KEY
                                               ends in the source file's sha256 (its prefix for URL weights)

FLAX_RESNET_CACHE defaults to $XDG_CACHE_HOME/flax_resnet (~/.cache/flax_resnet). Plain Python.
"""

from __future__ import annotations

import hashlib
import os
import re

from flax_resnet.core.pretrained.catalog import Entry, PretrainedError

CACHE_VARIABLE = "FLAX_RESNET_CACHE"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def flax_cache() -> str:
    """The folder of converted Flax checkpoints."""
    root = os.environ.get(CACHE_VARIABLE) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "flax_resnet")
    return os.path.join(root, "pretrained")


def torch_checkpoints() -> str:
    """torch.hub's folder of downloaded weights ($TORCH_HOME/hub/checkpoints), as torch.hub.get_dir() finds it."""
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torch")
    return os.path.join(os.path.expanduser(torch_home), "hub", "checkpoints")


def converted_path(entry: Entry, source_hash: str) -> str:
    """The Flax checkpoint of `entry`'s weights whose source file has `source_hash`."""
    label = (entry.file_name.rsplit(".", 1)[0] if entry.url else (entry.hub_id or entry.model).replace("/", "--"))
    if not label.endswith(source_hash):
        label = f"{label}-{source_hash[:16]}"
    return os.path.join(flax_cache(), label)


def blob_hash(path: str) -> str:
    """The hash a huggingface_hub cache names the file's blob by (sha256 for weights, which are LFS files)."""
    return os.path.basename(os.path.realpath(path))


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_file(path: str, expected: str, *, what: str) -> None:
    """PretrainedError unless the file's sha256 starts with `expected`: a kept file that was
    truncated or changed is refused, never loaded."""
    actual = sha256_of(path)
    if not actual.startswith(expected.lower()):
        raise PretrainedError(path, f"sha256 {actual[:len(expected)]}..., but {what} says {expected}: the "
                                    f"file is truncated or changed; delete it to download it again")


def check_hub_blob(path: str) -> None:
    """`check_file` for a hub file whose blob is named by its sha256 (LFS files; others pass)."""
    name = blob_hash(path)
    if _SHA256.match(name):
        check_file(path, name, what="its name in the Hugging Face cache")
