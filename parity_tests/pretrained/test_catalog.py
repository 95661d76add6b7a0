"""The weights catalog against the libraries that publish the weights: every torchvision entry agrees
with the installed weight enums, the twins have the parameter counts the catalog gives, the eval
transform makes torchvision's own pixels, and unknown names are answered with the valid ones."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import flax_resnet
import torch_ref
from flax_resnet.core.pretrained import Catalog, EvalTransform, PretrainedError
from flax_resnet.core.pretrained.catalog import akamaster_entries, imagenet_classes, torchvision_entries
from flax_resnet.core.registry import TORCHVISION_MODELS
from parity_tests.helpers.scripts import REPO, load_script
from parity_tests.pretrained.conftest import child_environment


def enum_members():
    from torchvision.models import get_model_weights

    return [(model, enum, member) for model in TORCHVISION_MODELS
            for enum in [get_model_weights(model)] for member in enum]


def test_every_torchvision_entry_agrees_with_the_installed_enums():
    entries = {entry.name: entry for entry in torchvision_entries()}
    members = enum_members()
    assert sorted(entries) == sorted(f"torchvision:{model}.{member.name}" for model, _, member in members)
    for model, enum, member in members:
        entry = entries[f"torchvision:{model}.{member.name}"]
        transform = member.transforms()
        (metrics,) = member.meta["_metrics"].values()
        assert entry.file_name == member.url.rsplit("/", 1)[-1] and entry.url == member.url
        assert entry.file_name.endswith(f"-{entry.sha256}.pth")  # torch.hub's hash-prefix naming
        assert (entry.metrics["acc@1"], entry.metrics["acc@5"]) == (metrics["acc@1"], metrics["acc@5"])
        assert (entry.transform.resize_size, entry.transform.crop_size) == (transform.resize_size[0],
                                                                            transform.crop_size[0])
        assert entry.transform.interpolation == transform.interpolation.value and transform.antialias
        assert (entry.transform.mean, entry.transform.std) == (tuple(transform.mean), tuple(transform.std))
        assert entry.num_classes == len(member.meta["categories"]) and entry.num_params == member.meta["num_params"]
        assert entry.labels() == tuple(member.meta["categories"])
        assert entry.default == (member is enum.DEFAULT)
    assert len(imagenet_classes()) == 1000


def test_the_generated_files_are_current():
    assert load_script("make_catalog").main(["--check"]) == 0


def test_the_twins_have_the_catalogs_parameter_counts():
    with torch.device("meta"):
        for entry in [*torchvision_entries(), *akamaster_entries()]:
            model = torch_ref.create_model(entry.model, num_classes=entry.num_classes)
            assert sum(parameter.numel() for parameter in model.parameters()) == entry.num_params, entry.name


@pytest.mark.parametrize("transform, sizes", [
    (EvalTransform(256, 224, "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), [(301, 257), (224, 320)]),
    (EvalTransform(232, 224, "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), [(233, 233), (500, 375)]),
    (EvalTransform(235, 224, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), [(240, 311), (236, 236)]),
    (EvalTransform(32, 32, "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), [(32, 32), (41, 33)]),
], ids=["V1", "V2", "timm-bicubic", "cifar"])
def test_the_eval_transform_makes_torchvisions_pixels(transform, sizes, tmp_path, monkeypatch):
    from torchvision.models import ResNet50_Weights
    from torchvision.transforms import InterpolationMode

    # The enum's own preset (ImageClassification), given this transform's numbers.
    preset = ResNet50_Weights.IMAGENET1K_V2.transforms(
        crop_size=transform.crop_size, resize_size=transform.resize_size, mean=transform.mean, std=transform.std,
        interpolation=InterpolationMode(transform.interpolation))
    entry_name = "local:resnet18.T"
    entries = tmp_path / "entries.json"
    entries.write_text(json.dumps([{"name": entry_name, "model": "resnet18", "url": "http://127.0.0.1:9/resnet18-0.pth",
                                    "sha256": "0", "transform": transform.to_json()}]))
    monkeypatch.setenv("FLAX_RESNET_WEIGHTS_EXTRA", str(entries))
    rng = np.random.default_rng(7)
    for width, height in sizes:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        expected = preset(image).numpy().transpose(1, 2, 0)
        ours = transform(image)
        assert ours.shape == expected.shape == (transform.crop_size, transform.crop_size, 3)
        # Equal pixels: the normalized values differ by float32 rounding alone (<= 1/255 / std would be one level).
        assert np.abs(ours - expected).max() <= 1e-5
        assert int(transform.crop_size / transform.crop_pct) == transform.resize_size  # evaluation's floor
        torch_side = torch_ref.pretrained_transform(entry_name)(image).numpy().transpose(1, 2, 0)
        assert np.abs(torch_side - expected).max() <= 1e-5
        assert flax_resnet.pretrained_transform(entry_name) == transform


def test_unknown_names_and_tags_list_the_valid_ones_closest_first():
    catalog = Catalog()
    with pytest.raises(PretrainedError) as raised:
        catalog.find("torchvision:resnet50.IMAGENET1K_V3")
    assert set(str(raised.value).split("valid: ")[1].split(", ")) == {"IMAGENET1K_V1", "IMAGENET1K_V2"}
    with pytest.raises(PretrainedError) as raised:
        catalog.find("torchvision:resnet5O.IMAGENET1K_V2")  # a letter O for the zero
    assert str(raised.value).split("closest first: ")[1].startswith("torchvision:resnet50.IMAGENET1K_V2, ")
    with pytest.raises(PretrainedError, match="unknown pretrained tag 'V2'; valid: IMAGENET1K_V2, IMAGENET1K_V1"):
        catalog.for_model("resnet50", "V2")
    with pytest.raises(PretrainedError, match="no pretrained weights in the catalog"):
        catalog.for_model("plain18", True)
    with pytest.raises(PretrainedError, match="holds a resnet50, not a resnet18"):
        catalog.for_model("resnet18", "torchvision:resnet50.IMAGENET1K_V2")
    with pytest.raises(PretrainedError, match="fine-tune them"):
        catalog.find("torchvision:resnet50.IMAGENET1K_V2").check_arguments(10, None, {})
    catalog.find("torchvision:resnet50.IMAGENET1K_V2").check_arguments(1000, 3, {"maxpool": True})  # its own


def test_a_base_url_and_extra_entries(tmp_path, monkeypatch):
    mirrored = Catalog(base_url="http://127.0.0.1:8000/mirror/").find("torchvision:resnet50.IMAGENET1K_V2")
    assert mirrored.url == "http://127.0.0.1:8000/mirror/resnet50-11ad3fa6.pth" and mirrored.sha256 == "11ad3fa6"
    with pytest.raises(ValueError, match="unknown model 'resnet51'"):
        Catalog(extra=[{"name": "x:resnet51.A", "model": "resnet51"}])
    broken = tmp_path / "entries.json"
    broken.write_text("[{")
    monkeypatch.setenv("FLAX_RESNET_WEIGHTS_EXTRA", str(broken))
    with pytest.raises(PretrainedError, match="unreadable catalog entries"):
        Catalog.from_environment()
    broken.write_text(json.dumps([{"name": "x:resnet18.A", "model": "resnet18", "colour": "red"}]))
    with pytest.raises(PretrainedError, match="unknown: colour"):
        Catalog.from_environment()


def test_the_catalog_imports_neither_jax_nor_torch():
    probe = ("import sys, json\n"
             "from flax_resnet.core.pretrained import find, cache, hub, predict, listing_lines\n"
             "find('torchvision:resnet50.IMAGENET1K_V2').eval_transform(); listing_lines()\n"
             "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & {'jax', 'flax', 'torch', 'torchvision'})))")
    done = subprocess.run([sys.executable, "-c", probe], env=child_environment(), capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
