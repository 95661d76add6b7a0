"""The hubs' own models, ported: transformers' ResNetForImageClassification / ResNetModel and timm's
ResNets, with random weights and randomized BatchNorm statistics, saved the way those libraries
save them. Logits agree to 1e-5 in float32 and to rounding in float64, both directions; the
round trips are bit-exact; the files written load strictly into the libraries' own classes.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import safetensors.torch
import torch
from flax import nnx
from transformers import ResNetConfig, ResNetForImageClassification

import torch_ref
from flax_resnet.core.layouts import detect_spelling, from_twin, to_twin
from flax_resnet.porting import hub
from flax_resnet.porting.sources import build_model, read_source, resolve_variant
from flax_resnet.porting.state_dict import to_torch_state_dict
from parity_tests.helpers.hub_fixtures import (
    TRANSFORMERS_CONFIGS,
    numpy_state,
    save_for_hf,
    save_pretrained,
    timm_model,
    torch_float64,
    transformers_model,
)
from parity_tests.helpers.scripts import load_script
from parity_tests.helpers.twins import as_float64, randomize_batchnorm, relative_error

TOLERANCE = 1e-5  # float32, relative to max |logit|
# float64 rounding through ~50 layers stays near 1e-14 relative; 1e-9 leaves a wide margin and
# still catches any mapping mistake, which is of order 1.
FLOAT64_TOLERANCE = 1e-9
SIZES = {"resnet18": [(64, 64), (65, 63)], "resnet50": [(65, 63)]}  # even and odd; the mapping is size-blind



port_weights = load_script("port_weights")


def port(*argv, capsys):
    capsys.readouterr()  # what the test printed before
    status = port_weights.main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert (status, captured.err) == (0, ""), captured.err
    return captured.out


def images(height, width, seed=0):
    return np.random.default_rng(seed).standard_normal((2, 3, height, width)).astype(np.float32)


def torch_logits(model, nchw):
    with torch.no_grad():
        output = model(torch.from_numpy(nchw))
    return getattr(output, "logits", output).numpy()


def flax_logits(model, nchw):
    # Jitted: compiling the whole net once is faster here than compiling each op for eager execution.
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, images: nnx.merge(graphdef, state)(images))
    return np.asarray(forward(state, nchw.transpose(0, 2, 3, 1)))


def same_bits(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype and got[key].tobytes() == value.tobytes(), key


# ---------------------------------------------------------------- the name rules, against the installed source


@pytest.mark.parametrize("headless", [False, True], ids=["ForImageClassification", "ResNetModel"])
@pytest.mark.parametrize("name", list(TRANSFORMERS_CONFIGS))
def test_every_transformers_key_maps_to_the_twin_and_back(name, headless):
    from transformers import ResNetModel

    config = ResNetConfig(**TRANSFORMERS_CONFIGS[name], num_labels=7)
    with torch.device("meta"):  # shapes only
        theirs = (ResNetModel if headless else ResNetForImageClassification)(config).state_dict()
        twin = torch_ref.create_model(name, num_classes=7).state_dict()
    shapes = {key: tuple(value.shape) for key, value in theirs.items()}
    spelling = detect_spelling(shapes)
    assert spelling == (("transformers_backbone",) if headless else ("transformers",))
    respelled = to_twin(shapes, spelling)
    want = {key: tuple(value.shape) for key, value in twin.items() if not (headless and key.startswith("fc."))}
    assert respelled == want  # every key, every shape (v1.5: the strided 3x3 is conv2 in both)
    assert from_twin(respelled, spelling) == shapes


def test_the_config_defaults_are_transformers_own():
    defaults = ResNetConfig()
    for key, value in hub.TRANSFORMERS_DEFAULTS.items():
        have = getattr(defaults, key)
        assert (list(have) if isinstance(have, (list, tuple)) else have) == value, key


# ---------------------------------------------------------------- transformers directories


@pytest.mark.parametrize("name", list(TRANSFORMERS_CONFIGS))
def test_a_transformers_directory_gives_transformers_logits(tmp_path, name):
    theirs = transformers_model(name)
    save_pretrained(theirs, tmp_path / "hf")
    source = read_source(tmp_path / "hf")
    variant, _ = resolve_variant(source)
    assert (source.kind, source.spelling, variant.name, variant.kwargs["num_classes"]) == \
        ("transformers", ("transformers",), name, 7)
    ours = build_model(source, variant)
    ours.eval()
    for height, width in SIZES[name]:
        nchw = images(height, width, seed=height)
        error = relative_error(flax_logits(ours, nchw), torch_logits(theirs, nchw))
        assert error <= TOLERANCE, f"{name} at {height}x{width}: {error:.2e}"


def test_a_transformers_directory_to_flax_and_back_is_bit_exact(tmp_path, capsys):
    labels = {i: f"class_{i}" for i in range(7)}
    theirs = transformers_model("resnet18", id2label=labels, label2id={v: k for k, v in labels.items()})
    save_pretrained(theirs, tmp_path / "hf")
    out = port(tmp_path / "hf", tmp_path / "flax", capsys=capsys)
    assert "inferred from the keys and shapes: resnet18 (num_classes=7" in out
    assert "config.json agrees: layer_type basic, depths [2, 2, 2, 2], v1.5 (stride on the 3x3), 7 labels" in out
    port(tmp_path / "flax", tmp_path / "back", "--layout", "source", capsys=capsys)
    reloaded, info = ResNetForImageClassification.from_pretrained(tmp_path / "back", output_loading_info=True)
    assert info == {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}
    assert reloaded.config.id2label == labels
    same_bits({k: v.numpy() for k, v in safetensors.torch.load_file(tmp_path / "back" / "model.safetensors").items()},
              numpy_state(theirs))


@pytest.mark.usefixtures("float64_enabled")
def test_transformers_bottleneck_port_is_exact_in_float64():
    """v1.5 (stride on the 3x3) on both sides: float64 leaves nothing but rounding to differ."""
    name = "resnet50"
    theirs = transformers_model(name, seed=1)
    source = read_source_of(theirs)
    variant, _ = resolve_variant(source)
    ours = as_float64(build_model(source, variant))
    ours.eval()
    nchw = images(65, 63, seed=2).astype(np.float64)
    error = relative_error(flax_logits(ours, nchw), torch_logits(torch_float64(theirs), nchw))
    assert error <= FLOAT64_TOLERANCE, f"{name} float64: {error:.2e}"


def read_source_of(model):
    from flax_resnet.porting.sources import Source

    raw = numpy_state(model)
    spelling = detect_spelling(raw)
    return Source("in memory", "file", to_twin(raw, spelling), spelling)


def test_transformers_backbone_without_classifier(tmp_path, capsys):
    theirs = transformers_model("resnet18", headless=True, seed=3)
    save_pretrained(theirs, tmp_path / "base")
    out = port(tmp_path / "base", tmp_path / "flax", "--num-classes", "3", capsys=capsys)
    assert "base has no classifier: resnet18's is newly initialized for 3 classes" in out
    nchw = images(65, 63)
    with torch.no_grad():
        features = theirs(torch.from_numpy(nchw)).last_hidden_state.numpy().transpose(0, 2, 3, 1)
    source = read_source(tmp_path / "flax")
    ours = build_model(source, resolve_variant(source)[0])
    ours.eval()
    graphdef, state = nnx.split(ours)
    last_stage = jax.jit(lambda state, images: nnx.merge(graphdef, state).stages(images)["layer4"])
    assert relative_error(np.asarray(last_stage(state, nchw.transpose(0, 2, 3, 1))), features) <= TOLERANCE
    # Back out as a ResNetForImageClassification: the backbone bit for bit, the new classifier added.
    port(tmp_path / "flax", tmp_path / "back", "--layout", "source", capsys=capsys)
    reloaded, info = ResNetForImageClassification.from_pretrained(tmp_path / "back", output_loading_info=True)
    assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"])
    written = safetensors.torch.load_file(tmp_path / "back" / "model.safetensors")
    for key, value in theirs.state_dict().items():
        assert torch.equal(written["resnet." + key], value), key


def test_a_twin_file_to_a_transformers_directory_and_file(tmp_path, capsys):
    torch.manual_seed(4)
    twin = torch_ref.create_model("resnet18", num_classes=5).eval()
    randomize_batchnorm(twin, 4)
    torch.save(twin.state_dict(), tmp_path / "twin.pth")
    port(tmp_path / "twin.pth", tmp_path / "hf", "--layout", "transformers", capsys=capsys)
    theirs, info = ResNetForImageClassification.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"])
    nchw = images(64, 64)
    assert relative_error(torch_logits(theirs.eval(), nchw), torch_logits(twin, nchw)) <= TOLERANCE
    # A single file in transformers' names loads into transformers' class with strict=True.
    out = port(tmp_path / "twin.pth", tmp_path / "hf.safetensors", "--layout", "transformers", capsys=capsys)
    assert "keyed as transformers' ResNetForImageClassification" in out
    fresh = ResNetForImageClassification(ResNetConfig(**TRANSFORMERS_CONFIGS["resnet18"], num_labels=5))
    fresh.load_state_dict(safetensors.torch.load_file(tmp_path / "hf.safetensors"), strict=True)


# ---------------------------------------------------------------- timm directories


def test_timm_directory_to_flax_and_back(tmp_path, capsys):
    import timm

    theirs = timm_model("resnet18", num_classes=7, seed=5)
    save_for_hf(theirs, tmp_path / "timm")
    source = read_source(tmp_path / "timm")
    cfg = theirs.pretrained_cfg
    assert (source.kind, source.model, source.spelling) == ("timm", "resnet18", ())
    assert source.preprocessing == hub.Preprocessing(tuple(cfg["mean"]), tuple(cfg["std"]), cfg["input_size"][-1],
                                                     cfg["crop_pct"], cfg["interpolation"], "timm's pretrained_cfg")
    alone = read_source(tmp_path / "timm" / "model.safetensors")  # the weight file: its config.json beside it
    assert (alone.kind, alone.model, alone.preprocessing) == ("timm", "resnet18", source.preprocessing)
    ours = build_model(source, resolve_variant(source)[0])
    ours.eval()
    nchw = images(65, 63)
    assert relative_error(flax_logits(ours, nchw), torch_logits(theirs, nchw)) <= TOLERANCE

    out = port(tmp_path / "timm", tmp_path / "flax", capsys=capsys)
    assert "timm's config.json names it: resnet18 (num_classes=7" in out
    assert "expects mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225), input_size 224" in out
    metadata = json.loads((tmp_path / "flax" / "model.json").read_text())
    assert metadata["source"]["preprocessing"]["crop_pct"] == cfg["crop_pct"]
    assert read_source(tmp_path / "flax").preprocessing == source.preprocessing  # kept for evaluation
    port(tmp_path / "flax", tmp_path / "back.pth", capsys=capsys)
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    fresh = timm.create_model("resnet18", pretrained=False, num_classes=7)
    fresh.load_state_dict(back, strict=True)
    same_bits({k: v.numpy() for k, v in back.items()}, numpy_state(theirs))


def test_timm_bottleneck_is_inferred_and_round_trips_bit_exact():
    """timm's resnet50 keeps torchvision's names: inferred from its shapes, exported bit for bit."""
    theirs = timm_model("resnet50", num_classes=3, seed=6)
    source = read_source_of(theirs)
    assert source.spelling == ()
    ours = build_model(source, resolve_variant(source)[0])
    same_bits(to_torch_state_dict(ours), numpy_state(theirs))


def test_parts_that_transformers_has_no_place_for_are_refused(tmp_path):
    """A variant with parts of its own (squeeze-excitation, a deep stem) is never written half-mapped."""
    with torch.device("meta"):
        shapes = torch_ref.create_model("resnet18", num_classes=4).state_dict()
    state = {key: np.zeros(value.shape, np.float32) for key, value in shapes.items()}
    state["layer1.0.se.fc1.weight"] = np.zeros((4, 64, 1, 1), np.float32)  # as timm's SE nets name it
    state["conv1.0.weight"] = np.zeros((32, 3, 3, 3), np.float32)  # as timm's deep stems name it
    config = hub.transformers_config("resnet18", {"num_classes": 4, "in_channels": 3, "stem": "imagenet",
                                                  "maxpool": True})
    with pytest.raises(hub.HubConfigError, match=r"no place for 2 of these tensors: .*layer1\.0\.se\.fc1\.weight"):
        hub.write_transformers_directory(tmp_path / "hf", state, config)
    assert list(tmp_path.iterdir()) == []
