"""`hf-hub:` names: the Hugging Face hub's timm and transformers ResNets, through huggingface_hub.

Every file comes from `hf_hub_download`, so the hub's own cache, HF_HOME / HF_HUB_CACHE,
HF_HUB_OFFLINE, revisions (`hf-hub:org/name@rev`) and its progress bars apply. A repository is
described by its config.json: timm's `architecture` and `pretrained_cfg`, or transformers'
ResNetConfig and `id2label` (with preprocessor_config.json for the transform). Plain Python.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

from flax_resnet.core.files import read_json_object
from flax_resnet.core.pretrained.catalog import (HUB_PREFIX, IMAGENET_MEAN, IMAGENET_STD, Entry, EvalTransform,
                                                 PretrainedError, timm_architectures)
from flax_resnet.core.registry import IMAGENET_WIDTHS, MODELS

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
EXPANSION = {"basic": 1, "bottleneck": 4}  # transformers' ResNetBottleNeckLayer `reduction`
# PIL's resampling codes, which transformers' image processors store.
RESAMPLE = {2: "bilinear", 3: "bicubic"}


def parse_hub_name(name: str) -> tuple[str, str | None]:
    """'hf-hub:org/repo@rev' -> ('org/repo', 'rev'); PretrainedError for another spelling."""
    repo_id, _, revision = name[len(HUB_PREFIX):].partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise PretrainedError(name, "a hub name is hf-hub:<org>/<repository>[@revision]")
    return repo_id, revision or None


def hub_file(name: str, filename: str, *, required: bool = True) -> str | None:
    """The local path of `filename` in the repository `name` names, downloaded into the hub's
    cache if it is not there. None if the repository has no such file and not `required`."""
    import huggingface_hub
    from huggingface_hub import errors

    repo_id, revision = parse_hub_name(name)
    try:
        return huggingface_hub.hf_hub_download(repo_id, filename, revision=revision)
    except errors.LocalEntryNotFoundError:  # a subclass of EntryNotFoundError: caught first
        if not required:
            return None
        raise PretrainedError(name, _not_cached(repo_id, filename, revision)) from None
    except errors.EntryNotFoundError:
        if not required:
            return None
        raise PretrainedError(name, f"the repository has no {filename}") from None
    except errors.RevisionNotFoundError:
        raise PretrainedError(name, f"the hub has no revision {revision!r} of {repo_id}") from None
    except errors.RepositoryNotFoundError:
        raise PretrainedError(name, f"the hub has no repository {repo_id} (or it is private)") from None
    except (errors.HfHubHTTPError, OSError) as error:
        raise PretrainedError(name, f"cannot fetch {filename}: {str(error).splitlines()[0]}") from None


def _not_cached(repo_id: str, filename: str, revision: str | None) -> str:
    import huggingface_hub
    from huggingface_hub import constants

    folder = os.path.join(constants.HF_HUB_CACHE, f"models--{repo_id.replace('/', '--')}")
    why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the hub cannot be reached"
    url = huggingface_hub.hf_hub_url(repo_id, filename, revision=revision)
    return (f"{filename} is not in the Hugging Face cache {folder} and {why}; download {url} there "
            f"(`hf download {repo_id} {filename}`)")


def hub_weights(entry: Entry) -> str:
    """The local path of the repository's weights: model.safetensors, else pytorch_model.bin."""
    for filename in WEIGHT_FILES:
        path = hub_file(entry.name, filename, required=False)
        if path is not None:
            return path
    repo_id, revision = parse_hub_name(entry.name)
    raise PretrainedError(entry.name, _not_cached(repo_id, " or ".join(WEIGHT_FILES), revision))


def hub_entry(name: str) -> Entry:
    """The catalog entry of a hub repository, from its config.json. PretrainedError if it is not a
    ResNet the registry has, saying what it is."""
    repo_id, revision = parse_hub_name(name)
    config = read_json_object(hub_file(name, "config.json"), PretrainedError, name)
    if "architecture" in config:
        return _timm_entry(name, repo_id, revision, config)
    if "model_type" in config or "architectures" in config:
        processor_path = hub_file(name, "preprocessor_config.json", required=False)
        processor = read_json_object(processor_path, PretrainedError, name) if processor_path else None
        return _transformers_entry(name, repo_id, revision, config, processor)
    raise PretrainedError(name, "config.json is neither timm's (no 'architecture') nor transformers' (no 'model_type')")


# ---------------------------------------------------------------------------------------------
# timm
# ---------------------------------------------------------------------------------------------

def _timm_entry(name, repo_id, revision, config) -> Entry:
    architecture = config["architecture"]
    if architecture not in timm_architectures():
        raise PretrainedError(name, f"is timm's {architecture!r}, not a registered variant; the registered timm "
                                    f"architectures are {', '.join(timm_architectures())}")
    cfg = config.get("pretrained_cfg") or {}
    num_classes = int(config.get("num_classes", cfg.get("num_classes", 1000)))
    input_size = cfg.get("input_size") or (3, 224, 224)
    names = config.get("label_names") or cfg.get("label_names")
    if isinstance(names, Mapping):
        names = [names[key] for key in sorted(names, key=int)]
    classes = tuple(names) if names else ("imagenet-1k" if num_classes == 1000 else "numbered")
    return Entry(name=name, model=architecture, source="timm", tag=cfg.get("tag"), hub_id=repo_id,
                 revision=revision, num_classes=num_classes, in_channels=int(input_size[0]),
                 transform=timm_transform(name, cfg), classes=classes,
                 reference=f"{repo_id}'s config.json (timm)")


def timm_transform(name: str, cfg: Mapping[str, Any]) -> EvalTransform:
    """timm's eval transform for a pretrained_cfg, as its validate.py builds it: the test size and
    crop when the config has them (`use_test_size=not args.use_train_size`), resized to
    floor(size / crop_pct) (transforms_factory.transforms_imagenet_eval), centre crop."""
    crop_mode = cfg.get("crop_mode") or "center"
    if crop_mode != "center":
        raise PretrainedError(name, f"timm crop_mode {crop_mode!r}: only 'center' has an equivalent here")
    size = cfg.get("test_input_size") or cfg.get("input_size") or (3, 224, 224)
    crop_pct = (cfg.get("test_crop_pct") if cfg.get("test_input_size") else None) or cfg.get("crop_pct") or 0.875
    if size[1] != size[2]:
        raise PretrainedError(name, f"timm input size {tuple(size)} is not square")
    interpolation = cfg.get("interpolation") or "bicubic"
    if interpolation not in ("bilinear", "bicubic"):
        raise PretrainedError(name, f"timm interpolation {interpolation!r}: choose bilinear or bicubic")
    return EvalTransform(math.floor(size[1] / crop_pct), int(size[1]), interpolation,
                         tuple(cfg.get("mean") or IMAGENET_MEAN), tuple(cfg.get("std") or IMAGENET_STD),
                         "timm's pretrained_cfg")


# ---------------------------------------------------------------------------------------------
# transformers
# ---------------------------------------------------------------------------------------------

def _transformers_entry(name, repo_id, revision, config, processor) -> Entry:
    model_type = config.get("model_type", "resnet")
    if model_type != "resnet":
        raise PretrainedError(name, f"is a transformers {model_type!r} model, not a ResNet")
    model = transformers_variant(name, config)
    id2label = config.get("id2label") or {}
    try:
        labels = tuple(str(id2label[key]) for key in sorted(id2label, key=int))
    except ValueError:
        raise PretrainedError(name, "config.json's id2label is not a map of class indices to names") from None
    return Entry(name=name, model=model, source="transformers", hub_id=repo_id, revision=revision,
                 num_classes=len(labels), in_channels=int(config.get("num_channels", 3)),
                 transform=None if processor is None else transformers_transform(name, processor),
                 classes=labels, reference=f"{repo_id}'s config.json (transformers)")


def transformers_variant(name: str, config: Mapping[str, Any]) -> str:
    """The registered variant a transformers ResNetConfig describes; PretrainedError if none."""
    block = config.get("layer_type", "bottleneck")
    depths = tuple(config.get("depths", (3, 4, 6, 3)))
    hidden = tuple(config.get("hidden_sizes", (256, 512, 1024, 2048)))
    described = f"transformers' ResNet with {block} blocks, depths {list(depths)}, hidden_sizes {list(hidden)}"
    if config.get("downsample_in_bottleneck") or config.get("downsample_in_first_stage"):
        raise PretrainedError(name, f"is {described} and its stride in another place; no registered variant has it")
    if config.get("hidden_act", "relu") != "relu":
        raise PretrainedError(name, f"is {described} with {config['hidden_act']} activations; no registered variant")
    for model, spec in MODELS.items():
        if (spec.family == "resnet" and spec.residual and spec.stem == "imagenet" and spec.groups == 1
                and spec.base_width == 64 and spec.widths == IMAGENET_WIDTHS and spec.block == block
                and spec.layers == depths and spec.stem_width == config.get("embedding_size", 64)
                and tuple(w * EXPANSION.get(block, 0) for w in spec.widths) == hidden):
            return model
    raise PretrainedError(name, f"is {described}: no registered variant")


def transformers_transform(name: str, processor: Mapping[str, Any]) -> EvalTransform:
    """transformers' ConvNextImageProcessor at evaluation (ResNets use it; image_processing_convnext.py):
    below 384 pixels, resize the shortest edge to int(shortest_edge / crop_pct), then cut out the
    centre shortest_edge."""
    size = processor.get("size") or {}
    edge = size.get("shortest_edge") if isinstance(size, Mapping) else size
    if not edge:
        raise PretrainedError(name, "preprocessor_config.json gives no size.shortest_edge")
    if edge >= 384:
        raise PretrainedError(name, f"preprocessor_config.json's shortest_edge {edge}: from 384 on the processor "
                                    f"warps the image to a square, which has no equivalent here")
    crop_pct = processor.get("crop_pct") or 224 / 256
    resize = int(edge / crop_pct)
    interpolation = RESAMPLE.get(processor.get("resample"), None)
    if interpolation is None:
        raise PretrainedError(name, f"preprocessor_config.json's resample {processor.get('resample')!r}: "
                                    f"only bilinear (2) and bicubic (3) have an equivalent")
    return EvalTransform(resize, int(edge), interpolation, tuple(processor.get("image_mean") or IMAGENET_MEAN),
                         tuple(processor.get("image_std") or IMAGENET_STD), "transformers' preprocessor_config.json")
