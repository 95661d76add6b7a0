"""Offline fixtures for pretrained weights by name: generated weight files, a weights server on
127.0.0.1, catalog entries pointing at it, and caches (torch.hub's, Hugging Face's, the converted
Flax checkpoints') in the test's own folder."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import threading
import typing
from pathlib import Path

import numpy as np
import pytest
import torch

import torch_ref
from flax_resnet.core.pretrained import catalog
from parity_tests.helpers.scripts import REPO
from parity_tests.helpers.twins import randomize_batchnorm

# Small crops keep the forward passes cheap; the sizes are the weights' own, as a catalog entry records them.
IMAGENET_TRANSFORM = {"resize_size": 73, "crop_size": 64, "interpolation": "bilinear",
                      "mean": list(catalog.IMAGENET_MEAN), "std": list(catalog.IMAGENET_STD), "origin": "the test"}
CIFAR_TRANSFORM = {**IMAGENET_TRANSFORM, "resize_size": 32, "crop_size": 32}


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def saved_with_hash(folder: Path, stem: str, suffix: str, value) -> Path:
    """`value` saved by torch as STEM-<sha256 prefix>SUFFIX, torch.hub's naming."""
    temporary = folder / f"{stem}{suffix}"
    torch.save(value, temporary)
    final = folder / f"{stem}-{sha256_of(temporary)[:8]}{suffix}"
    temporary.rename(final)
    return final


@pytest.fixture(scope="session")
def weight_files(tmp_path_factory):
    """{'resnet18': a torchvision-keyed file, 'resnet20': akamaster's layout ({'state_dict': ...}
    with DataParallel's `module.` and `linear`)}: random weights and BatchNorm statistics. Their
    twin-keyed arrays beside each path: {name: Published}."""
    folder = tmp_path_factory.mktemp("published")
    torch.manual_seed(0)
    resnet18 = torch_ref.create_model("resnet18")
    randomize_batchnorm(resnet18, seed=1)
    resnet20 = torch_ref.create_model("resnet20")
    randomize_batchnorm(resnet20, seed=2)
    akamaster = {"module." + key.replace("fc.", "linear.") if key.startswith("fc.") else "module." + key: value
                 for key, value in resnet20.state_dict().items()}
    return {"resnet18": Published(saved_with_hash(folder, "resnet18", ".pth", resnet18.state_dict()),
                                  twin_arrays(resnet18)),
            "resnet20": Published(saved_with_hash(folder, "resnet20", ".th", {"best_prec1": 91.0, "state_dict": akamaster}),
                                  twin_arrays(resnet20))}


class Published(typing.NamedTuple):
    path: Path  # the file as its publisher saved it
    arrays: dict  # its weights in the twin's keys


def twin_arrays(model: torch.nn.Module) -> dict:
    return {key: value.numpy().copy() for key, value in model.state_dict().items()}


def assert_holds(model, expected: dict) -> None:
    """`model` (Flax or torch) holds exactly `expected` (twin-keyed arrays), every key."""
    if isinstance(model, torch.nn.Module):
        held = twin_arrays(model)
    else:
        from flax_resnet.porting import to_torch_state_dict

        held = to_torch_state_dict(model)
    assert sorted(held) == sorted(expected)
    unequal = [key for key in expected if not np.array_equal(np.asarray(held[key]), expected[key])]
    assert not unequal, unequal[:5]


class WeightsServer:
    """Serves a folder on 127.0.0.1 in a thread: /files/NAME whole, /cut/NAME stopping halfway
    through (the whole length announced, then the connection closed)."""

    def __init__(self, folder: Path):
        served = folder

        class Handler(http.server.BaseHTTPRequestHandler):
            timeout = 10  # a stuck client cannot hold a thread for longer

            def do_GET(self):
                kind, _, name = self.path.strip("/").partition("/")
                path = served / name
                if kind not in ("files", "cut") or not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data if kind == "files" else data[:len(data) // 2])
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(timeout=10)


@pytest.fixture
def weights_server(weight_files):
    server = WeightsServer(weight_files["resnet18"].path.parent)
    yield server
    server.stop()


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """TORCH_HOME, the Hugging Face cache (offline) and FLAX_RESNET_CACHE in the test's folder;
    {'torch': $TORCH_HOME/hub/checkpoints, 'hf': the hub cache, 'flax': converted checkpoints}."""
    from huggingface_hub import constants

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("FLAX_RESNET_CACHE", str(tmp_path / "flax_resnet"))
    # huggingface_hub reads these when it is imported; set them for this process too.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv(catalog.BASE_URL_VARIABLE, raising=False)
    monkeypatch.delenv(catalog.EXTRA_VARIABLE, raising=False)
    return {"torch": tmp_path / "torch" / "hub" / "checkpoints", "hf": tmp_path / "hf" / "hub",
            "flax": tmp_path / "flax_resnet" / "pretrained"}


def served_entries(server_url: str, files) -> list[dict]:
    """Catalog entries of the generated files, served from `server_url`."""
    resnet18, resnet20 = files["resnet18"].path, files["resnet20"].path
    return [
        {"name": "local:resnet18.RANDOM", "model": "resnet18", "url": f"{server_url}/files/{resnet18.name}",
         "sha256": sha256_of(resnet18)[:8], "num_params": 11689512, "transform": IMAGENET_TRANSFORM,
         "metrics": {"dataset": "nothing", "acc@1": 0.1, "acc@5": 0.5}, "default": True},
        {"name": "local:resnet20.RANDOM", "model": "resnet20", "url": f"{server_url}/files/{resnet20.name}",
         "sha256": sha256_of(resnet20), "num_classes": 10, "transform": CIFAR_TRANSFORM, "classes": "cifar-10",
         "state_dict_key": "state_dict", "metrics": {"dataset": "CIFAR-10", "acc@1": 10.0, "acc@5": 50.0}},
        {"name": "local:resnet20.CUT", "model": "resnet20", "url": f"{server_url}/cut/{resnet20.name}",
         "sha256": sha256_of(resnet20)[:8], "num_classes": 10, "transform": CIFAR_TRANSFORM},
        {"name": "local:resnet20.WRONG_HASH", "model": "resnet20", "url": f"{server_url}/files/{resnet20.name}",
         "sha256": "0123abcd", "num_classes": 10, "transform": CIFAR_TRANSFORM},
    ]


@pytest.fixture
def served_catalog(weights_server, weight_files, caches, tmp_path, monkeypatch):
    """The default catalog with the test entries (FLAX_RESNET_WEIGHTS_EXTRA), for this process and its children."""
    path = tmp_path / "entries.json"
    path.write_text(json.dumps(served_entries(weights_server.url, weight_files)))
    monkeypatch.setenv(catalog.EXTRA_VARIABLE, str(path))
    return catalog.default_catalog()


def child_environment() -> dict[str, str]:
    """os.environ for a child interpreter, with this checkout first on its path."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
