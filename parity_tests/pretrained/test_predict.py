"""scripts/predict.py on generated images: both frameworks give the top-5 that torchvision's own
transform and the publisher's file give in torch; an unreadable image is one line and exit 1."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

import torch_ref
from flax_resnet.core.pretrained import find
from parity_tests.helpers.scripts import load_script

predict_script = load_script("predict")


def test_both_frameworks_give_the_reference_top_5(served_catalog, caches, weight_files, tmp_path, capsys):
    rng = np.random.default_rng(4)
    paths = [tmp_path / "wide.png", tmp_path / "gray.jpg"]
    Image.fromarray(rng.integers(0, 256, (81, 97, 3), dtype=np.uint8)).save(paths[0])  # odd sides
    Image.fromarray(rng.integers(0, 256, (120, 90), dtype=np.uint8)).save(paths[1])  # mode L, even sides
    name = "local:resnet18.RANDOM"
    assert predict_script.main([*map(str, paths), "--weights", name, "--framework", "both"]) == 0
    output = capsys.readouterr().out.strip().splitlines()
    report = json.loads(output[-1])

    # The reference: torchvision's transform for the entry, the generated file loaded by torch_ref.
    transform = torch_ref.pretrained_transform(name)
    reference = torch_ref.create_model("resnet18").eval()
    reference.load_state_dict(torch.load(weight_files["resnet18"].path, weights_only=True))
    pixels = torch.stack([transform(Image.open(path)) for path in paths])
    with torch.no_grad():
        reference_logits = reference(pixels)
        float64_logits = reference.double()(pixels.double())
    torch_own_error = float((reference_logits - float64_logits).abs().max() / float64_logits.abs().max())
    labels = find(name).labels()
    for row, logits in zip(report["images"], reference_logits):
        expected = [labels[k] for k in torch.argsort(logits, descending=True, stable=True)[:5].tolist()]
        assert [item["class"] for item in row["flax"]] == [item["class"] for item in row["torch"]] == expected
        assert row["flax"][0]["class"] in "\n".join(output[:-1])  # the side-by-side table names them
    assert report["logits_relative_difference"] <= 10 * torch_own_error + 1e-7


def test_an_unreadable_image_is_one_line(served_catalog, caches, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    assert predict_script.main([str(broken), "--weights", "local:resnet20.RANDOM", "--framework", "torch"]) == 1
    error = capsys.readouterr().err.strip()
    assert str(broken) in error and "cannot read the image" in error and "\n" not in error
