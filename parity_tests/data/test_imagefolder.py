"""ImageFolder trees: the classes, indices and files torchvision's ImageFolder finds, the held-out
split, and one clear error before any work for each broken layout."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torchvision

from flax_resnet.core.config import ConfigError, TrainConfig, validate
from flax_resnet.core.data import DataError, load_data
from flax_resnet.core.data.imagefolder import HOLDOUT_FRACTION, scan_image_folder
from flax_resnet.training import train
from parity_tests.helpers.image_trees import random_image, save, write_mixed_tree


def table_samples(table):
    return [(table.path(i), int(table.labels[i])) for i in range(len(table))]


def test_classes_indices_and_files_are_torchvisions(tmp_path):
    write_mixed_tree(tmp_path, classes=("zebra", "Apple", "cat", "bird"))
    splits = scan_image_folder(tmp_path)
    reference = torchvision.datasets.ImageFolder(str(tmp_path / "train"))
    assert list(splits.classes) == reference.classes == ["Apple", "bird", "cat", "zebra"]  # sorted, case-sensitive
    assert table_samples(splits.train) == reference.samples
    paths = [path for path, _ in reference.samples]
    assert any(p.endswith("UPPER.JPEG") for p in paths) and any(f"{os.sep}nested{os.sep}" in p for p in paths)
    assert not any(p.endswith(".txt") for p in paths)
    # val/ has every class here, so torchvision's own indices for it are train's.
    assert splits.test_source == "val" and splits.notice is None
    assert table_samples(splits.test) == torchvision.datasets.ImageFolder(str(tmp_path / "val")).samples


def test_held_out_folder_missing_a_class_keeps_trains_indices(tmp_path):
    write_mixed_tree(tmp_path, classes=("a", "b", "c"))
    for file in (tmp_path / "val" / "a").rglob("*"):
        if file.is_file():
            file.unlink()
    for folder in sorted((tmp_path / "val" / "a").rglob("*"), reverse=True) + [tmp_path / "val" / "a"]:
        folder.rmdir()
    splits = scan_image_folder(tmp_path)
    labels = {os.path.basename(os.path.dirname(p.replace(f"{os.sep}nested", ""))): l for p, l in table_samples(splits.test)}
    assert labels == {"b": 1, "c": 2}  # torchvision's ImageFolder(val) would call them 0 and 1


@pytest.mark.parametrize("layout", ["flat", "train_only"])
def test_without_a_held_out_folder_a_fixed_tenth_of_each_class_is_held_out(tmp_path, layout, capsys):
    rng = np.random.default_rng(1)
    base = tmp_path / "tree" / ("train" if layout == "train_only" else "")
    for name, count in (("a", 30), ("b", 20), ("c", 11)):
        for k in range(count):
            save(random_image(rng, "RGB", 12, 10), base / name / f"{k}.png")
    splits = scan_image_folder(tmp_path / "tree")
    assert splits.test_source == "held out of train" and "holding out 10%" in splits.notice
    held = np.bincount(splits.test.labels, minlength=3).tolist()
    assert held == [round(30 * HOLDOUT_FRACTION), round(20 * HOLDOUT_FRACTION), round(11 * HOLDOUT_FRACTION)]
    train_paths, test_paths = {p for p, _ in table_samples(splits.train)}, {p for p, _ in table_samples(splits.test)}
    everything = {p for p, _ in torchvision.datasets.ImageFolder(str(base)).samples}
    assert not train_paths & test_paths and train_paths | test_paths == everything
    assert table_samples(scan_image_folder(tmp_path / "tree").test) == table_samples(splits.test)  # fixed

    # load_data prints the notice once, before any training work.
    config = TrainConfig(model="resnet18", dataset="imagefolder", data_dir=str(tmp_path / "tree"), workers=0)
    data = load_data(config)
    assert "holding out 10%" in capsys.readouterr().out
    assert (data.train_count, data.test_count) == (len(train_paths), len(test_paths))


def _empty_class(root):
    write_mixed_tree(root)
    (root / "train" / "owl").mkdir()
    (root / "train" / "owl" / "readme.md").write_text("no images here")


def _extra_held_out_class(root):
    write_mixed_tree(root)
    save(random_image(np.random.default_rng(0), "RGB", 10, 10), root / "val" / "yak" / "0.jpg")


def _no_class_folders(root):
    root.mkdir(parents=True)
    save(random_image(np.random.default_rng(0), "RGB", 10, 10), root / "loose.jpg")


@pytest.mark.parametrize("make, message", [
    (_empty_class, r"train: class folder\(s\) owl hold no images"),
    (_extra_held_out_class, r"val has class folder\(s\) yak that .*train lacks"),
    (_no_class_folders, r"holds no class folders; an ImageFolder is DIR/train/<class>/<image>"),
    (lambda root: None, r"no such folder"),
])
def test_broken_trees_are_one_clear_error_before_any_work(tmp_path, make, message):
    root = tmp_path / "tree"
    make(root)
    workdir = tmp_path / "run"
    config = TrainConfig(model="resnet18", dataset="imagefolder", data_dir=str(root), workdir=str(workdir),
                         progress=False)
    with pytest.raises(DataError, match=message) as error:
        train(config)
    assert "\n" not in str(error.value) and not workdir.exists()


def test_imagefolder_needs_a_data_dir():
    with pytest.raises(ConfigError, match="--dataset imagefolder needs --data-dir DIR"):
        validate(TrainConfig(dataset="imagefolder"))
