"""URL weights by name, served from 127.0.0.1: downloaded once through torch.hub with a progress
bar and the sha256 checked, converted once to a Flax checkpoint, then read from the caches alone;
damaged, cut and unreachable files refused in one line, leaving nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import flax_resnet
import torch_ref
from flax_resnet.core.pretrained import PretrainedError
from parity_tests.helpers.scripts import load_script
from parity_tests.helpers.training_fixtures import make_cifar_folder
from parity_tests.pretrained.conftest import assert_holds, child_environment, sha256_of


def test_first_load_downloads_checks_and_converts_then_the_caches_serve_alone(served_catalog, caches, weight_files,
                                                                              weights_server, capfd, tmp_path):
    model = flax_resnet.from_pretrained("local:resnet18.RANDOM")
    progress = capfd.readouterr().err
    assert "100%" in progress and "44.7M" in progress  # torch.hub's progress bar, to the whole file
    entry = served_catalog.find("local:resnet18.RANDOM")
    downloaded = caches["torch"] / entry.file_name
    assert downloaded.read_bytes() == weight_files["resnet18"].path.read_bytes()
    assert not list(caches["torch"].glob("*.partial"))
    (converted,) = caches["flax"].iterdir()
    assert converted.name == downloaded.stem  # keyed by the file's sha256 prefix
    expected = weight_files["resnet18"].arrays
    assert_holds(model, expected)
    assert_holds(torch_ref.from_pretrained("local:resnet18.RANDOM"), expected)

    # With the server gone, a fresh interpreter reads the converted checkpoint: no torch, no conversion.
    weights_server.stop()
    np.savez(tmp_path / "expected.npz", **expected)
    probe = (
        "import sys, json, numpy as np\n"
        "import flax_resnet\n"
        "from flax_resnet.porting import to_torch_state_dict\n"
        "held = to_torch_state_dict(flax_resnet.from_pretrained('local:resnet18.RANDOM'))\n"
        f"expected = np.load({str(tmp_path / 'expected.npz')!r})\n"
        "print(json.dumps({'equal': sorted(held) == sorted(expected.files) and all(\n"
        "    np.array_equal(held[key], expected[key]) for key in expected.files),\n"
        "    'torch': 'torch' in sys.modules, 'porting': 'flax_resnet.porting.sources' in sys.modules}))\n")
    done = subprocess.run([sys.executable, "-c", probe], env=child_environment(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"equal": True, "torch": False, "porting": False}
    # The torch side reads its kept file, hashed again.
    assert_holds(torch_ref.create_model("resnet18", pretrained="RANDOM"), expected)


def test_akamaster_layout_loads_in_both_frameworks_with_its_classes(served_catalog, caches, weight_files, tmp_path):
    expected = weight_files["resnet20"].arrays
    # The twin respells DataParallel's `module.` and `linear` by the core's rules: no JAX in its interpreter.
    np.savez(tmp_path / "expected.npz", **expected)
    probe = (
        "import sys, json, numpy as np\n"
        "import torch_ref\n"
        "held = torch_ref.from_pretrained('local:resnet20.RANDOM').state_dict()\n"
        f"expected = np.load({str(tmp_path / 'expected.npz')!r})\n"
        "print(json.dumps({'equal': sorted(held) == sorted(expected.files) and all(\n"
        "    np.array_equal(held[key].numpy(), expected[key]) for key in expected.files),\n"
        "    'jax': 'jax' in sys.modules}))\n")
    done = subprocess.run([sys.executable, "-c", probe], env=child_environment(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"equal": True, "jax": False}
    assert_holds(flax_resnet.create_model("resnet20", pretrained="RANDOM"), expected)
    assert_holds(torch_ref.from_pretrained("local:resnet20.RANDOM"), expected)
    assert served_catalog.find("local:resnet20.RANDOM").labels()[:2] == ("airplane", "automobile")


def test_a_download_with_another_hash_is_deleted_and_reported(served_catalog, caches, weight_files):
    entry = served_catalog.find("local:resnet20.WRONG_HASH")
    with pytest.raises(PretrainedError) as raised:
        torch_ref.from_pretrained(entry.name)
    message = str(raised.value)
    assert entry.url in message and entry.sha256 in message and sha256_of(weight_files["resnet20"].path) in message
    assert "\n" not in message
    assert not any(caches["torch"].iterdir())


def test_a_connection_cut_mid_file_leaves_nothing_in_the_cache(served_catalog, caches):
    with pytest.raises(PretrainedError) as raised:
        flax_resnet.from_pretrained("local:resnet20.CUT")
    assert "cut short" in str(raised.value) and "\n" not in str(raised.value)
    assert not any(caches["torch"].iterdir())
    assert not caches["flax"].exists() or not any(caches["flax"].iterdir())


def test_no_network_and_nothing_kept_says_which_file_goes_where(served_catalog, caches, weights_server):
    weights_server.stop()
    entry = served_catalog.find("local:resnet20.RANDOM")
    with pytest.raises(PretrainedError) as raised:
        torch_ref.from_pretrained(entry.name)
    message = str(raised.value)
    assert entry.file_name in message and str(caches["torch"]) in message and entry.url in message
    assert "\n" not in message


def test_a_changed_kept_file_is_refused_not_loaded(served_catalog, caches):
    entry = served_catalog.find("local:resnet20.RANDOM")
    torch_ref.from_pretrained(entry.name)
    kept = caches["torch"] / entry.file_name
    data = bytearray(kept.read_bytes())
    data[len(data) // 2] ^= 0xFF
    kept.write_bytes(bytes(data))
    with pytest.raises(PretrainedError, match="truncated or changed"):
        torch_ref.from_pretrained(entry.name)
    kept.write_bytes(bytes(data[:len(data) // 3]))
    with pytest.raises(PretrainedError, match="truncated or changed"):
        flax_resnet.from_pretrained(entry.name)  # no converted checkpoint yet: the file would be read


def test_a_damaged_converted_checkpoint_is_refused(served_catalog, caches):
    flax_resnet.from_pretrained("local:resnet20.RANDOM")
    (converted,) = caches["flax"].iterdir()
    largest = max((path for path in converted.rglob("*") if path.is_file()), key=lambda path: path.stat().st_size)
    data = bytearray(largest.read_bytes())
    data[-1] ^= 0xFF
    largest.write_bytes(bytes(data))
    with pytest.raises(PretrainedError) as raised:
        flax_resnet.from_pretrained("local:resnet20.RANDOM")
    assert str(converted) in str(raised.value) and "delete it" in str(raised.value)


def test_names_work_wherever_a_path_does(served_catalog, caches, capsys, tmp_path):
    from flax_resnet.core.config import ConfigError, TrainConfig
    from flax_resnet.core.run.init_from import open_init
    from flax_resnet.porting.sources import read_source

    name = "local:resnet20.RANDOM"
    entry = served_catalog.find(name)
    source = read_source(name)
    assert source.model == "resnet20" and source.labels[:2] == ("airplane", "automobile")
    assert (source.preprocessing.input_size, source.preprocessing.mean) == (32, entry.transform.mean)

    # train.py --init-from: the run takes the weights' variant and transform; a bad name is one ConfigError.
    config, _ = open_init(TrainConfig(dataset="cifar10", model=None, init_from=name), channels=3)
    assert (config.model, config.image_size, config.mean) == ("resnet20", 32, entry.transform.mean)
    with pytest.raises(ConfigError, match="^--init-from local:resnet20.NONE: unknown tag 'NONE'"):
        open_init(TrainConfig(dataset="cifar10", model=None, init_from="local:resnet20.NONE"), channels=3)

    # evaluate.py takes the catalog's transform and prints the published figures beside its own.
    make_cifar_folder(tmp_path / "cifar")
    status = load_script("evaluate").main(["--weights", name, "--dataset", "cifar10", "--data-dir",
                                           str(tmp_path / "cifar"), "--framework", "both", "--no-progress"])
    out = capsys.readouterr().out.strip().splitlines()
    report = json.loads(out[-1])
    assert status == 0 and report["model"] == "resnet20" and report["top1_agreement"] == 1.0
    assert tuple(report["preprocessing"]["mean"]) == entry.transform.mean
    assert report["preprocessing"]["image_size"] == entry.transform.crop_size
    assert f"published: top-1 {entry.metrics['acc@1']:.2f}%" in "\n".join(out)

    assert load_script("port_weights").main(["--list-pretrained"]) == 0
    listed = capsys.readouterr().out
    assert "torchvision:resnet50.IMAGENET1K_V2" in listed and name in listed
