"""hf-hub: names from a Hugging Face cache laid out as huggingface_hub writes it, with HF_HUB_OFFLINE=1:
timm and transformers repositories resolve (variant, transform, classes) and load in both frameworks;
a missing file, an unregistered architecture and a changed blob are refused in one line."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import pytest
import safetensors.torch
import torch

import flax_resnet
import torch_ref
from flax_resnet.core.pretrained import PretrainedError, find
from flax_resnet.core.pretrained.catalog import imagenet_classes
from flax_resnet.porting import hub as porting_hub
from parity_tests.helpers.twins import randomize_batchnorm
from parity_tests.pretrained.conftest import assert_holds, twin_arrays

TIMM_ID = "timm/resnet10t.c3_in1k"
TRANSFORMERS_ID = "microsoft/resnet-18"
# timm's pretrained_cfg of resnet10t.c3_in1k (timm 1.0's resnet.py default_cfgs), as save_for_hf
# writes it into config.json beside the architecture, num_classes, num_features and global_pool.
TIMM_CONFIG = {
    "architecture": "resnet10t", "num_classes": 1000, "num_features": 512, "global_pool": "avg",
    "pretrained_cfg": {"tag": "c3_in1k", "custom_load": False, "input_size": [3, 176, 176],
                       "test_input_size": [3, 224, 224], "fixed_input_size": False, "interpolation": "bicubic",
                       "crop_pct": 0.875, "test_crop_pct": 0.95, "crop_mode": "center",
                       "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "num_classes": 1000,
                       "pool_size": [6, 6], "first_conv": "conv1.0", "classifier": "fc"},
}
# microsoft/resnet-18's preprocessor_config.json (ConvNextImageProcessor's fields).
PROCESSOR_CONFIG = {"crop_pct": 0.875, "do_normalize": True, "do_resize": True, "do_rescale": True,
                    "image_processor_type": "ConvNextImageProcessor", "image_mean": [0.485, 0.456, 0.406],
                    "image_std": [0.229, 0.224, 0.225], "resample": 3, "rescale_factor": 1 / 255,
                    "size": {"shortest_edge": 224}}
LFS_FILES = ("model.safetensors", "pytorch_model.bin")


def lay_out_repository(cache: Path, repo_id: str, files: dict[str, bytes]) -> str:
    """`files` as huggingface_hub's cache keeps a download of `repo_id` at one commit: each in
    blobs/ under its hash (sha256 for LFS files, git's blob sha1 for the others), refs/main naming
    the commit, snapshots/COMMIT/NAME a relative link to the blob. Returns the commit."""
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    (folder / "blobs").mkdir(parents=True, exist_ok=True)
    (folder / "refs").mkdir(exist_ok=True)
    for name, data in files.items():
        if name in LFS_FILES:
            blob = hashlib.sha256(data).hexdigest()
        else:
            blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        (folder / "blobs" / blob).write_bytes(data)
        link = folder / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(folder / "blobs" / blob, link.parent))
    (folder / "refs" / "main").write_text(commit)
    return commit


def safetensors_bytes(state_dict) -> bytes:
    return safetensors.torch.save({key: value.contiguous() for key, value in state_dict.items()}, {"format": "pt"})


@pytest.fixture(scope="module")
def hub_models():
    """Random-weight twins with randomized BatchNorm: a resnet10t (timm's keys are the twin's) and a resnet18."""
    torch.manual_seed(3)
    models = {name: torch_ref.create_model(name) for name in ("resnet10t", "resnet18")}
    for seed, model in enumerate(models.values()):
        randomize_batchnorm(model, seed=seed + 10)
    return models


@pytest.fixture
def hub_cache(caches, hub_models, tmp_path):
    """The cache with the timm and transformers repositories; {'timm': commit, 'transformers': commit}."""
    timm_files = {"config.json": json.dumps(TIMM_CONFIG).encode(),
                  "model.safetensors": safetensors_bytes(hub_models["resnet10t"].state_dict())}
    written = tmp_path / "transformers"
    twin = {key: value.numpy() for key, value in hub_models["resnet18"].state_dict().items()}
    config = porting_hub.transformers_config("resnet18", {"num_classes": 1000, "in_channels": 3},
                                             labels=list(imagenet_classes()))
    porting_hub.write_transformers_directory(written, twin, config)
    transformers_files = {name: (written / name).read_bytes() for name in ("config.json", "model.safetensors")}
    transformers_files["preprocessor_config.json"] = json.dumps(PROCESSOR_CONFIG).encode()
    return {"timm": lay_out_repository(caches["hf"], TIMM_ID, timm_files),
            "transformers": lay_out_repository(caches["hf"], TRANSFORMERS_ID, transformers_files)}


def assert_both_frameworks_hold(name: str, reference: torch.nn.Module) -> None:
    expected = twin_arrays(reference)
    assert_holds(flax_resnet.from_pretrained(name), expected)
    assert_holds(torch_ref.from_pretrained(name), expected)


def test_a_timm_id_resolves_from_the_offline_cache(hub_cache, hub_models):
    entry = find(f"hf-hub:{TIMM_ID}")
    cfg = TIMM_CONFIG["pretrained_cfg"]
    assert (entry.model, entry.num_classes, entry.labels()) == ("resnet10t", 1000, imagenet_classes())
    # timm's validate.py evaluates at the test size; transforms_imagenet_eval resizes to floor(size / crop_pct).
    transform = entry.transform
    assert (transform.crop_size, transform.interpolation) == (cfg["test_input_size"][-1], cfg["interpolation"])
    assert transform.resize_size == math.floor(cfg["test_input_size"][-1] / cfg["test_crop_pct"])
    assert_both_frameworks_hold(f"hf-hub:{TIMM_ID}", hub_models["resnet10t"])
    assert find(f"hf-hub:{TIMM_ID}@{hub_cache['timm']}").model == "resnet10t"  # a pinned revision


def test_a_transformers_id_resolves_with_its_labels_and_processor(hub_cache, hub_models):
    entry = find(f"hf-hub:{TRANSFORMERS_ID}")
    assert (entry.model, entry.labels()[:3]) == ("resnet18", imagenet_classes()[:3])
    edge = PROCESSOR_CONFIG["size"]["shortest_edge"]
    assert (entry.transform.crop_size, entry.transform.resize_size) == (edge, int(edge / PROCESSOR_CONFIG["crop_pct"]))
    assert entry.transform.interpolation == "bicubic"  # PIL's resampling code 3
    assert_both_frameworks_hold(f"hf-hub:{TRANSFORMERS_ID}", hub_models["resnet18"])


def test_a_missing_file_says_what_to_put_where(caches):
    lay_out_repository(caches["hf"], "timm/resnet18.a1_in1k", {"config.json": json.dumps(
        {**TIMM_CONFIG, "architecture": "resnet18"}).encode()})
    with pytest.raises(PretrainedError) as raised:
        flax_resnet.from_pretrained("hf-hub:timm/resnet18.a1_in1k")
    message = str(raised.value)
    assert "model.safetensors" in message and "HF_HUB_OFFLINE" in message and "\n" not in message
    assert str(caches["hf"] / "models--timm--resnet18.a1_in1k") in message
    assert "https://huggingface.co/timm/resnet18.a1_in1k/resolve/main/model.safetensors" in message
    with pytest.raises(PretrainedError, match="config.json is not in the Hugging Face cache"):
        find("hf-hub:timm/resnet50.a1_in1k")


@pytest.mark.parametrize("repo_id, config, said", [
    ("timm/convnext_tiny.fb_in1k", {**TIMM_CONFIG, "architecture": "convnext_tiny"}, "timm's 'convnext_tiny'"),
    ("microsoft/resnet-26", {"model_type": "resnet", "layer_type": "bottleneck", "depths": [2, 2, 2, 2],
                             "hidden_sizes": [256, 512, 1024, 2048], "embedding_size": 64},
     "bottleneck blocks, depths [2, 2, 2, 2]"),
    ("facebook/convnext-tiny-224", {"model_type": "convnext"}, "transformers 'convnext' model"),
])
def test_an_unregistered_architecture_is_refused_saying_what_it_is(caches, repo_id, config, said):
    lay_out_repository(caches["hf"], repo_id, {"config.json": json.dumps(config).encode()})
    with pytest.raises(PretrainedError, match="not a|no registered") as raised:
        torch_ref.from_pretrained(f"hf-hub:{repo_id}")
    assert said in str(raised.value)


@pytest.mark.parametrize("text, said", [('{"architecture": ', "unreadable config.json (Expecting value"),
                                        ("[1, 2]", "config.json is not a JSON object")])
def test_a_config_that_is_not_a_json_object_is_one_line(caches, text, said):
    lay_out_repository(caches["hf"], "timm/resnet18.broken", {"config.json": text.encode()})
    with pytest.raises(PretrainedError) as raised:
        find("hf-hub:timm/resnet18.broken")
    assert str(raised.value).startswith(f"hf-hub:timm/resnet18.broken: {said}") and "\n" not in str(raised.value)


def test_a_changed_blob_is_refused(hub_cache, caches):
    folder = caches["hf"] / f"models--{TIMM_ID.replace('/', '--')}" / "blobs"
    weights = max(folder.iterdir(), key=lambda path: path.stat().st_size)
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    for load in (torch_ref.from_pretrained, flax_resnet.from_pretrained):
        with pytest.raises(PretrainedError, match="truncated or changed"):
            load(f"hf-hub:{TIMM_ID}")
