"""The files people have, ported as a new user would: CIFAR repositories' checkpoints, any wrapper,
any name and dtype, the source's own key spelling written back, and one line for every failure."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
import torchvision

import flax_resnet
import torch_ref
from flax_resnet.core.layouts import from_twin
from flax_resnet.porting.state_dict import to_torch_state_dict
from parity_tests.porting.test_port_weights import assert_one_line_error, assert_same_weights, run, torch_state


@pytest.fixture(scope="module")
def cifar18():
    """resnet18 with the CIFAR stem (kuangliu/pytorch-cifar's ResNet18), random statistics."""
    return torch_state("resnet18", stem="cifar", num_classes=10)


@pytest.fixture(scope="module")
def resnet20():
    """resnet20 with option-A shortcuts (akamaster/pytorch_resnet_cifar10's), random statistics."""
    return torch_state("resnet20")


def tensors(state, rename=lambda key: key, dtype=None):
    out = {}
    for key, value in state.items():
        tensor = torch.from_numpy(value.copy())
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        out[rename(key)] = tensor
    return out


def kuangliu_key(key: str) -> str:
    """kuangliu/pytorch-cifar's names, saved from DataParallel: module., shortcut, linear."""
    key = key.replace(".downsample.", ".shortcut.")
    return "module." + ("linear." + key[3:] if key.startswith("fc.") else key)


def users_resnet18() -> torch.nn.Module:
    """A user's own class with kuangliu's names: the twin, its modules registered as `shortcut` and
    `linear` (its forward still finds them under the old names)."""
    net = torch_ref.create_model("resnet18", stem="cifar", num_classes=10)
    for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
        for block in stage:
            shortcut = block.downsample
            del block.downsample
            if shortcut is not None:
                block.shortcut = shortcut
            object.__setattr__(block, "downsample", shortcut)
    classifier = net.fc
    del net.fc
    net.linear = classifier
    object.__setattr__(net, "fc", classifier)
    return net


# ---------------------------------------------------------------- the files people have


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_weights_of_any_precision_port_and_verify(tmp_path, capsys, resnet20, dtype):
    torch.save(tensors(resnet20, dtype=dtype), tmp_path / "w.pth")
    status, out, err = run([tmp_path / "w.pth", tmp_path / "flax", "--verify", "--model", "resnet20"], capsys)
    assert (status, err) == (0, ""), err
    assert "verify: passed" in out
    ported = to_torch_state_dict(flax_resnet.load(tmp_path / "flax"))
    for key, value in tensors(resnet20, dtype=dtype).items():
        expected = value.float().numpy() if value.is_floating_point() else value.numpy()
        np.testing.assert_array_equal(ported[key], expected, err_msg=key)


def test_kuangliu_checkpoint_ports_and_goes_back_in_its_own_spelling(tmp_path, capsys, cifar18):
    torch.save({"net": tensors(cifar18, kuangliu_key), "acc": 95.1, "epoch": 199}, tmp_path / "ckpt.pth")
    status, out, err = run([tmp_path / "ckpt.pth", tmp_path / "flax", "--verify"], capsys)
    assert (status, err) == (0, ""), err
    assert "keyed as torchvision's names with `module.` prefixes (DataParallel), `shortcut` for " \
        "`downsample`, `linear` for `fc`" in out
    assert "resnet18 (num_classes=10, in_channels=3, stem='cifar'); assumed maxpool=False" in out
    status, out, err = run([tmp_path / "flax", tmp_path / "back.pth", "--layout", "source"], capsys)
    assert (status, err) == (0, ""), err
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    users = torch.nn.DataParallel(users_resnet18())  # module. prefixes, as the file was saved
    users.load_state_dict(back, strict=True)
    assert_same_weights({k: v.numpy() for k, v in back.items()},
                        {kuangliu_key(k): v for k, v in cifar18.items()})
    twin = torch_ref.create_model("resnet18", stem="cifar", num_classes=10)
    twin.load_state_dict(tensors(cifar18), strict=True)
    batch = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32))
    with torch.no_grad():
        assert torch.equal(users.module.eval()(batch), twin.eval()(batch))


def test_any_wrapper_is_read_with_key(tmp_path, capsys, cifar18):
    torch.save({"ema": tensors(cifar18), "step": 3}, tmp_path / "ema.pth")
    status, _, err = run([tmp_path / "ema.pth", tmp_path / "out.pth"], capsys)
    assert_one_line_error(status, err, "ema.pth: no state_dict found: the top-level keys are ema, step",
                          "name the entry that holds it with --key NAME")
    status, _, err = run([tmp_path / "ema.pth", tmp_path / "out.pth", "--key", "weights"], capsys)
    assert_one_line_error(status, err, "ema.pth: has no entry 'weights'; its top-level keys are ema, step")
    assert not (tmp_path / "out.pth").exists()
    status, _, err = run([tmp_path / "ema.pth", tmp_path / "out.pth", "--key", "ema"], capsys)
    assert (status, err) == (0, "")
    assert_same_weights(tensors_numpy(tmp_path / "out.pth"), cifar18)


def tensors_numpy(path):
    return {k: v.numpy() for k, v in torch.load(path, weights_only=True).items()}


@pytest.mark.parametrize("container", ["zip", "legacy"])
def test_akamaster_checkpoint_th_is_recognised_by_content(tmp_path, capsys, resnet20, container):
    saved = {"epoch": 200, "best_prec1": 91.7,
             "state_dict": tensors(resnet20, lambda k: "module." + ("linear." + k[3:] if k.startswith("fc.") else k))}
    torch.save(saved, tmp_path / "checkpoint.th", _use_new_zipfile_serialization=container == "zip")
    status, _, err = run([tmp_path / "checkpoint.th", tmp_path / "flax"], capsys)
    # Option A has no parameters: the weights are also exactly plain20's. The message names the flags.
    assert_one_line_error(status, err, "checkpoint.th: the weights fit more than one variant: "
                                       "resnet20 (shortcut='A'), plain20; add --model resnet20 or --model plain20")
    status, out, err = run([tmp_path / "checkpoint.th", tmp_path / "flax", "--model", "resnet20"], capsys)
    assert (status, err) == (0, "")
    status, _, err = run([tmp_path / "flax", tmp_path / "back.pth", "--layout", "source"], capsys)
    assert (status, err) == (0, "")
    assert_same_weights(tensors_numpy(tmp_path / "back.pth"),
                        {k: v.numpy() for k, v in saved["state_dict"].items()})


@pytest.mark.parametrize("options, verdict", [
    ({}, "(the same as torchvision's)"),
    ({"stem": "cifar"}, "(torchvision.models.resnet18(num_classes=10) would reject it: conv1.weight is "
                        "(64, 3, 3, 3), torchvision's (64, 3, 7, 7))"),
    ({"maxpool": False}, "(torchvision.models.resnet18(num_classes=10) loads it, but has the max-pool after "
                         "the stem that this model lacks)"),
], ids=["imagenet", "cifar_stem", "no_maxpool"])
def test_torchvision_is_named_only_when_it_is_the_same_network(tmp_path, capsys, options, verdict):
    state = torch_state("resnet18", num_classes=10, **{k: v for k, v in options.items() if k != "maxpool"})
    torch.save(tensors(state), tmp_path / "w.pth")
    flags = ["--no-maxpool"] if options.get("maxpool") is False else []
    status, out, err = run([tmp_path / "w.pth", tmp_path / "tv.pth", *flags], capsys)
    assert (status, err) == (0, "")
    assert out.splitlines()[-1].endswith(verdict), out
    net = torchvision.models.resnet18(num_classes=10)
    if "reject" in verdict:
        with pytest.raises(RuntimeError, match="size mismatch for conv1.weight"):
            net.load_state_dict(torch.load(tmp_path / "tv.pth", weights_only=True), strict=True)
    else:
        net.load_state_dict(torch.load(tmp_path / "tv.pth", weights_only=True), strict=True)


# ---------------------------------------------------------------- one line for every failure


def transformers_dir(path: Path, state, weights="model.safetensors", **config):
    """A save_pretrained-style directory: the twin's weights in transformers' names, and config.json."""
    path.mkdir()
    respelled = tensors(from_twin(state, ("transformers",)))
    if weights.endswith(".safetensors"):
        safetensors.torch.save_file(respelled, path / weights)
    else:
        torch.save(respelled, path / weights)
    base = {"architectures": ["ResNetForImageClassification"], "model_type": "resnet", "layer_type": "basic",
            "depths": [2, 2, 2, 2], "hidden_sizes": [64, 128, 256, 512],
            "id2label": {str(i): f"c{i}" for i in range(10)}}
    (path / "config.json").write_text(json.dumps({**base, **config}))


def timm_dir(path: Path, state, **config):
    path.mkdir()
    safetensors.torch.save_file(tensors(state), path / "model.safetensors")
    (path / "config.json").write_text(json.dumps({"architecture": "resnet18", "num_classes": 10, **config}))


def backbone_dir(path: Path, state):
    path.mkdir()
    backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
    safetensors.torch.save_file(tensors(from_twin(backbone, ("transformers_backbone",))), path / "model.safetensors")


HUB_FAILURES = {
    # case: (how to make SRC from resnet18's state, extra arguments, DST, fragments of the message)
    "v1_bottleneck_stride": (lambda p, s: transformers_dir(p, s, downsample_in_bottleneck=True), [], "out",
                             ["hf/config.json: downsample_in_bottleneck=true puts the stride on the first 1x1 conv "
                              "(ResNet v1); the registry's bottleneck nets are v1.5"]),
    "v1_read_through_the_weight_file": (lambda p, s: transformers_dir(p, s, downsample_in_bottleneck=True),
                                        [], "out", ["config.json: downsample_in_bottleneck=true"]),
    "strided_first_stage": (lambda p, s: transformers_dir(p, s, downsample_in_first_stage=True), [], "out",
                            ["hf/config.json: downsample_in_first_stage=true"]),
    "other_activation": (lambda p, s: transformers_dir(p, s, hidden_act="gelu"), [], "out",
                         ["hf/config.json: hidden_act 'gelu'"]),
    "other_model_type": (lambda p, s: transformers_dir(p, s, model_type="regnet"), [], "out",
                         ["hf/config.json: a transformers 'regnet' model, not a ResNet"]),
    "config_contradicts_weights": (lambda p, s: transformers_dir(p, s, depths=[3, 4, 6, 3]), [], "out",
                                   ["hf: config.json does not describe these weights: depths [3, 4, 6, 3] but the "
                                    "weights are depths [2, 2, 2, 2]"]),
    "labels_contradict_classifier": (lambda p, s: transformers_dir(p, s, id2label={"0": "a", "1": "b"}), [], "out",
                                     ["hf: config.json does not describe these weights: 2 labels but the "
                                      "classifier has 10 outputs"]),
    "unregistered_timm_architecture": (lambda p, s: timm_dir(p, s, architecture="resnet18_gn"), [], "out",
                                       ["hf: timm's architecture 'resnet18_gn' is not a registered variant; name "
                                        "the variant to build with --model"]),
    "timm_arguments": (lambda p, s: timm_dir(p, s, model_args={"output_stride": 8}), [], "out",
                       ["hf/config.json: timm model_args output_stride have no registered equivalent"]),
    "headless_without_classes": (lambda p, s: backbone_dir(p, s), [], "out",
                                 ["hf has no classifier", "pass --num-classes N to add a newly initialized one"]),
    "layout_on_a_flax_checkpoint": (lambda p, s: timm_dir(p, s), ["--layout", "source"], "out",
                                    ["out: --layout source spells the keys of a PyTorch file"]),
    "transformers_cannot_express": (lambda p, s: timm_dir(p, s), ["--layout", "transformers", "--no-maxpool"], "out",
                                    ["out not written: transformers' ResNet cannot express resnet18: its stem is "
                                     "not the 7x7 conv with a max-pool"]),
    "truncated_config": (lambda p, s: timm_dir(p, s) or (p / "config.json").write_text('{"architecture": '), [],
                         "out", ["hf/config.json: unreadable JSON (Expecting value"]),
    "config_not_an_object": (lambda p, s: timm_dir(p, s) or (p / "config.json").write_text("[1, 2]"), [], "out",
                             ["hf/config.json: is not a JSON object"]),
    "sharded": (lambda p, s: (p.mkdir(), (p / "model.safetensors.index.json").write_text("{}")), [], "out",
                ["hf: holds a sharded checkpoint"]),
    "not_weights": (lambda p, s: (p.mkdir(), (p / "notes.txt").write_text("hi")), [], "out.pth",
                    ["hf: not a Flax checkpoint (no model.json), a run folder or a hub directory"]),
}


@pytest.fixture(scope="module")
def resnet18_classes10():
    return torch_state("resnet18", num_classes=10)


@pytest.mark.parametrize("case", list(HUB_FAILURES))
def test_hub_failures_are_one_line_and_write_nothing(tmp_path, capsys, resnet18_classes10, case):
    make, extra, target, fragments = HUB_FAILURES[case]
    make(tmp_path / "hf", resnet18_classes10)
    before = sorted(os.listdir(tmp_path))
    src = tmp_path / "hf" / "model.safetensors" if case == "v1_read_through_the_weight_file" else tmp_path / "hf"
    status, _, err = run([src, tmp_path / target, *extra], capsys)
    assert_one_line_error(status, err, *fragments)
    assert sorted(os.listdir(tmp_path)) == before  # DST not created, no temporary left


def test_a_transformers_pytorch_model_bin_reads_with_its_config(tmp_path, capsys, resnet18_classes10):
    transformers_dir(tmp_path / "hf", resnet18_classes10, weights="pytorch_model.bin")
    for src in (tmp_path / "hf", tmp_path / "hf" / "pytorch_model.bin"):
        status, out, err = run([src, tmp_path / "out.pth", "--force"], capsys)
        assert (status, err) == (0, ""), err
        assert "keyed as transformers' ResNetForImageClassification" in out
        assert "config.json agrees: layer_type basic, depths [2, 2, 2, 2], v1.5 (stride on the 3x3), 10 labels" in out
        assert_same_weights(tensors_numpy(tmp_path / "out.pth"), resnet18_classes10)


def test_a_file_of_any_name_that_holds_no_weights_is_one_line(tmp_path, capsys):
    (tmp_path / "checkpoint.th").write_bytes(np.random.default_rng(0).bytes(256))
    status, _, err = run([tmp_path / "checkpoint.th", tmp_path / "out"], capsys)
    assert_one_line_error(status, err, "checkpoint.th: not a PyTorch weights file, or corrupt")
