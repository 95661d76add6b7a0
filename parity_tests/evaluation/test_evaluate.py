"""scripts/evaluate.py: top-1, top-5 and the loss of any weights, in Flax, torch or both, with the
eval transform the weights expect, and one line for weights that cannot be evaluated."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from flax_resnet.core.augment import AugmentSpec
from flax_resnet.training.device_transforms import eval_transform
from parity_tests.helpers.hub_fixtures import save_for_hf, save_pretrained, timm_model, transformers_model
from parity_tests.helpers.scripts import load_script
from parity_tests.helpers.training_fixtures import make_cifar_folder

# With the suite's loadgroup scheduling, the tests that start from `trained_run` share one worker,
# so the run is trained once.
pytestmark = pytest.mark.xdist_group("trained_run")



evaluate_script = load_script("evaluate")


def evaluate(argv, capsys):
    """(exit status, the JSON report or None, stdout, stderr) of scripts/evaluate.py in this process."""
    capsys.readouterr()
    status = evaluate_script.main([str(a) for a in argv])
    captured = capsys.readouterr()
    last = captured.out.strip().splitlines()[-1] if captured.out.strip() else ""
    return status, (json.loads(last) if status == 0 else None), captured.out, captured.err


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    """A torchvision CIFAR-10 folder: 40 training and 8 test images (random pixels and labels)."""
    root = tmp_path_factory.mktemp("cifar")
    make_cifar_folder(root)
    return root


def test_both_frameworks_agree_and_match_the_run(trained_run, capsys):
    run_dir, record = trained_run
    status, report, out, err = evaluate(["--weights", run_dir, "--dataset", "embedded_mnist",
                                         "--framework", "both"], capsys)
    assert status == 0, err
    assert report["images"] == 1000 and report["top1_agreement"] == 1.0
    assert report["logits_relative_difference"] <= 1e-5
    # The run's own evaluation of these weights: the same eval transform, the same numbers.
    for framework in ("flax", "torch"):
        assert report[framework]["top1"] == record["test_accuracy"], framework
        assert report[framework]["loss"] == pytest.approx(record["test_loss"], rel=1e-5), framework
        assert report[framework]["top1"] <= report[framework]["top5"] <= 1.0
    assert "top-1 agreement flax vs torch: 100.00% of 1000 images" in out
    assert "evaluate: 100%" in err  # the progress bar


def test_a_timm_directory_is_evaluated_with_its_own_preprocessing(tmp_path, cifar_dir, capsys):
    theirs = timm_model("resnet18", num_classes=10, seed=2)
    save_for_hf(theirs, tmp_path / "timm")
    status, report, out, err = evaluate(["--weights", tmp_path / "timm", "--dataset", "cifar10", "--data-dir",
                                         cifar_dir, "--image-size", "48", "--framework", "torch"], capsys)
    assert status == 0, err
    cfg = theirs.pretrained_cfg
    preprocessing = report["preprocessing"]
    assert (preprocessing["mean"], preprocessing["std"]) == (list(cfg["mean"]), list(cfg["std"]))
    assert (preprocessing["crop_pct"], preprocessing["interpolation"], preprocessing["image_size"]) == \
        (cfg["crop_pct"], cfg["interpolation"], 48)
    # The metrics, recomputed from timm's own model on the same pixels.
    from flax_resnet.core.data import load_dataset

    data = load_dataset("cifar10", cifar_dir)
    spec = AugmentSpec(tuple(cfg["mean"]), tuple(cfg["std"]), 0, False, 48, cfg["crop_pct"], cfg["interpolation"])
    pixels = np.asarray(eval_transform(data.test_images, spec)).transpose(0, 3, 1, 2)
    with torch.no_grad():
        logits = theirs(torch.from_numpy(np.ascontiguousarray(pixels)))
    labels = torch.from_numpy(data.test_labels.astype(np.int64))
    top5 = logits.topk(5, -1).indices
    assert report["torch"]["top1"] == pytest.approx(float((logits.argmax(-1) == labels).float().mean()))
    assert report["torch"]["top5"] == pytest.approx(float((top5 == labels[:, None]).any(-1).float().mean()))
    assert report["torch"]["loss"] == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-5)


@pytest.mark.parametrize("size, crop_pct", [(24, 0.875), (32, 0.95), (45, 1.0)])
def test_the_centre_crop_is_torchvision_resize_then_center_crop(size, crop_pct):
    images = np.random.default_rng(size).integers(0, 256, (2, 33, 33, 3), dtype=np.uint8)
    spec = AugmentSpec((0.0,) * 3, (1.0,) * 3, 0, False, size, crop_pct, "bilinear")
    ours = np.asarray(eval_transform(images, spec))
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    scaled = TF.resize(tensor, [int(size / crop_pct)] * 2, interpolation=TF.InterpolationMode.BILINEAR,
                       antialias=True)
    theirs = TF.center_crop(scaled, [size, size]).permute(0, 2, 3, 1).numpy()
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= 1e-5


def test_weights_that_cannot_be_evaluated_get_one_line(tmp_path, cifar_dir, capsys):
    save_pretrained(transformers_model("resnet18", headless=True), tmp_path / "base")
    save_for_hf(timm_model("resnet18", num_classes=7), tmp_path / "seven")
    cases = {
        "base": ("has no classifier", "fine-tune one first (scripts/train.py --init-from"),
        "seven": ("is a resnet18 for 3-channel images and 7 classes; cifar10 has 3 channel(s) and 10 classes",),
    }
    for name, fragments in cases.items():
        status, _, _, err = evaluate(["--weights", tmp_path / name, "--dataset", "cifar10", "--data-dir",
                                      cifar_dir, "--no-progress"], capsys)
        assert status == 1 and err.count("\n") == 1 and "Traceback" not in err, err
        for fragment in fragments:
            assert fragment in err, (fragment, err)


def test_an_image_folder_is_evaluated_streamed_as_training_evaluates_it(trained_run, tmp_path, capsys):
    """--dataset imagefolder reads DIR/val through the streaming loader; the figures equal the
    trained model's own predictions on the host transform's pixels, in both frameworks."""
    from flax_resnet.core.data.transforms import HostTransforms, decode_image
    from flax_resnet.porting.sources import open_weights
    from flax_resnet.training.device_transforms import normalize, to_unit_range
    from parity_tests.helpers.image_trees import write_digit_tree

    run_dir, _ = trained_run
    tree = write_digit_tree(tmp_path / "digits", train_per_class=2, val_per_class=3)
    status, report, out, err = evaluate(["--weights", run_dir, "--dataset", "imagefolder", "--data-dir", tree,
                                         "--framework", "both", "--image-size", "28", "--crop-pct", "1.0",
                                         "--batch-size", "7", "--workers", "0"], capsys)
    assert status == 0, err
    assert report["images"] == 30 and report["top1_agreement"] == 1.0
    assert report["logits_relative_difference"] <= 1e-5
    assert "centre crop of a bilinear resize to 28" in out

    weights = open_weights(str(run_dir))
    from flax_resnet.evaluation.predict import Predictor

    predictor = Predictor(weights.variant.name, weights.variant.kwargs, weights.state_dict)
    host = HostTransforms(size=28, channels=1, crop_fraction=1.0)
    paths = sorted((tree / "val").glob("*/*.png"))
    images = np.stack([host.eval(decode_image(str(path))) for path in paths])
    labels = np.array([int(path.parent.name) for path in paths])
    mean, std = report["preprocessing"]["mean"], report["preprocessing"]["std"]
    pixels = np.asarray(normalize(to_unit_range(images), tuple(mean), tuple(std)))
    logits = predictor.logits(pixels)
    assert report["flax"]["top1"] == pytest.approx(float(np.mean(logits.argmax(-1) == labels)))
    assert report["torch"]["top1"] == report["flax"]["top1"]
    assert report["flax"]["top1"] >= 0.5  # real digits, a trained net: far above chance (0.1)
