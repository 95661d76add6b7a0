"""Pretrained weights by name in PyTorch. Its twin is `flax_resnet.pretrained`.

    torch_ref.from_pretrained("torchvision:resnet50.IMAGENET1K_V2")    the twin holding those weights
    torch_ref.create_model("resnet50", pretrained="IMAGENET1K_V2")     the same
    torch_ref.pretrained_transform(name)                               torchvision's transform for them

URL weights come through torch.hub's `download_url_to_file`: into $TORCH_HOME/hub/checkpoints,
under a `.partial` name until complete, with a progress bar and the sha256 prefix checked; a file
already there is hashed again before it is read. Hub weights come through huggingface_hub. The
names, files and transforms are the catalog's (`flax_resnet.core.pretrained`), the key spellings
(transformers', DataParallel's `module.`, CIFAR repositories' `linear`) the core's `layouts`, so
no JAX is loaded. Every expected failure is a PretrainedError whose one-line message names the
name, file or URL.
"""

from __future__ import annotations

import http.client
import os
import re
import urllib.error

import numpy as np
import torch
from torch import nn

from flax_resnet.core.files import summarize
from flax_resnet.core.layouts import detect_spelling, to_twin
from flax_resnet.core.pretrained import Entry, PretrainedError, cache, default_catalog, hub
from torch_ref.models import create_model


def from_pretrained(name: str, *, catalog=None) -> nn.Module:
    """The twin's model of the weights called `name`, in training mode like `create_model`'s
    (call `.eval()` to predict). Downloads the file the first time. Raises PretrainedError."""
    return _load((catalog or default_catalog()).find(name))


def pretrained_model(model: str, pretrained, *, num_classes=None, in_channels=None, **options) -> nn.Module:
    """`create_model(model, pretrained=...)`: a tag of the model's weights ('IMAGENET1K_V2'; True:
    the default ones) or a whole name. The other arguments may repeat the weights' own, not change them."""
    entry = default_catalog().for_model(model, pretrained)
    entry.check_arguments(num_classes, in_channels, options)
    return _load(entry)


def pretrained_transform(name: str):
    """torchvision's transform for the weights: PIL image -> normalized float32 CHW tensor, as
    the weights were evaluated (the catalog's `EvalTransform`, in torchvision.transforms.v2)."""
    from torchvision.transforms import InterpolationMode, v2

    transform = default_catalog().find(name).eval_transform()
    return v2.Compose([
        v2.RGB(), v2.Resize(transform.resize_size, interpolation=InterpolationMode(transform.interpolation),
                            antialias=True),
        v2.CenterCrop(transform.crop_size), v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(transform.mean), list(transform.std)),
    ])


def logits(model: nn.Module, pixels: np.ndarray) -> np.ndarray:
    """float32 logits of `model` in eval mode for NHWC float32 pixels (what `EvalTransform` makes)."""
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))).numpy()


def weights_path(entry: Entry) -> str:
    """The local file of `entry`'s weights, its sha256 checked; downloaded if not kept yet."""
    if entry.hub_id is not None:
        path = hub.hub_weights(entry)
        cache.check_hub_blob(path)
        return path
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    path = os.path.join(folder, entry.file_name)
    if os.path.exists(path):
        cache.check_file(path, entry.sha256, what=f"the catalog ({entry.name})")
        return path
    os.makedirs(folder, exist_ok=True)
    try:
        torch.hub.download_url_to_file(entry.url, path, hash_prefix=entry.sha256, progress=True)
    except RuntimeError as error:  # torch.hub's hash check; it has removed the download
        got = re.search(r'got "([0-9a-f]+)"', str(error))
        actual = got.group(1) if got else str(error)
        raise PretrainedError(entry.url, f"the download's sha256 is {actual}, expected {entry.sha256}...: deleted "
                                         f"(cut short or changed on the server)") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
        reason = getattr(error, "reason", None) or error
        raise PretrainedError(entry.name, f"cannot download {entry.url} ({reason}); put {entry.file_name} "
                                          f"from that URL in {folder}") from None
    return path


def _load(entry: Entry) -> nn.Module:
    path = weights_path(entry)
    model = create_model(entry.model, num_classes=entry.num_classes, in_channels=entry.in_channels)
    expected = model.state_dict()
    state_dict = _read(path, entry)
    try:
        state_dict = to_twin(state_dict, detect_spelling(state_dict))
    except ValueError as error:  # two spellings of one key
        raise PretrainedError(path, str(error)) from None
    # Files saved without BatchNorm's step counter (it does not change the outputs) keep the model's.
    missing = [key for key in expected if key not in state_dict and not key.endswith("num_batches_tracked")]
    unexpected = [key for key in state_dict if key not in expected]
    misshaped = [f"{key} {tuple(value.shape)} (model {tuple(expected[key].shape)})"
                 for key, value in state_dict.items() if key in expected and value.shape != expected[key].shape]
    if missing or unexpected or misshaped:
        problems = [f"{label} ({len(keys)}): {summarize(keys)}" for label, keys in (
            ("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)) if keys]
        raise PretrainedError(path, f"does not fit {entry.model}: {'; '.join(problems)}")
    model.load_state_dict({**expected, **state_dict})
    return model


def _read(path: str, entry: Entry) -> dict[str, torch.Tensor]:
    try:
        if path.endswith(".safetensors"):
            import safetensors.torch

            return safetensors.torch.load_file(path)
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - zip, pickle and safetensors readers raise many kinds
        raise PretrainedError(path, f"unreadable weights ({str(error).splitlines()[0][:160]})") from None
    if entry.state_dict_key is not None:
        loaded = loaded.get(entry.state_dict_key) if isinstance(loaded, dict) else None
    if not isinstance(loaded, dict) or not all(isinstance(value, torch.Tensor) for value in loaded.values()):
        raise PretrainedError(path, "holds no state_dict" + (f" under {entry.state_dict_key!r}"
                                                             if entry.state_dict_key else ""))
    return loaded
