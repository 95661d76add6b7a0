"""Porting weight files: variant inference, Flax checkpoints, the command line, --verify.

Most command-line cases run `main(argv)` in this process (fast); a few run the script the way a
user does, in a fresh interpreter, to see exactly what reaches the terminal.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
import torchvision
from flax import nnx

import flax_resnet
import torch_ref
from flax_resnet.core.registry import MODELS, full_kwargs
from flax_resnet.models import model_skeleton
from flax_resnet.models.seeds import MnistResNet
from flax_resnet.porting import port as port_sequence
from flax_resnet.porting import sources
from flax_resnet.porting.checkpoint import CheckpointError
from flax_resnet.porting.inference import AmbiguousVariantError, VariantError, infer_variant
from flax_resnet.porting.state_dict import load_torch_state_dict, to_torch_state_dict
from flax_resnet.porting.torch_files import read_torch_file, write_torch_file
from flax_resnet.porting.verify import DEFAULT_TOLERANCE, verify_port
from parity_tests.helpers.scripts import REPO, load_script
from parity_tests.helpers.twins import randomize_batchnorm

SCRIPT = REPO / "scripts" / "port_weights.py"



port_weights = load_script("port_weights")


def torch_state(name: str, seed: int = 0, **kwargs) -> dict[str, np.ndarray]:
    """A torch_ref model's state_dict with random BatchNorm statistics, as numpy."""
    torch.manual_seed(seed)
    model = torch_ref.create_model(name, **kwargs)
    randomize_batchnorm(model, seed)
    return {key: value.numpy().copy() for key, value in model.state_dict().items()}


def flax_model_from(state: dict, name: str, **kwargs):
    model = model_skeleton(name, **kwargs)
    load_torch_state_dict(model, state)
    return model


def assert_same_weights(got: dict, want: dict) -> None:
    """Same keys, dtypes and bits (torch's int64 num_batches_tracked included)."""
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key].dtype == want[key].dtype, key
        assert got[key].tobytes() == want[key].tobytes(), key


@pytest.fixture(scope="module")
def resnet20_b():
    """resnet20 with projection shortcuts: every kind of key, random statistics."""
    return torch_state("resnet20", shortcut="B")


def run(argv, capsys):
    """`port_weights.main(argv)` -> (exit status, stdout, stderr)."""
    status = port_weights.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_line_error(status, err, *fragments):
    assert status == 1
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


# ---------------------------------------------------------------- inference


@pytest.mark.parametrize("name", list(MODELS))
def test_inference_names_every_registry_variant(name):
    state = torch_ref.create_model(name).state_dict()
    spec = MODELS[name]
    if spec.stem == "cifar":
        # Option A (the CIFAR default) has no parameters: the weights are exactly the plain twin's.
        depth = name.removeprefix("resnet").removeprefix("plain")
        with pytest.raises(AmbiguousVariantError) as caught:
            infer_variant(state)
        assert sorted(c.name for c in caught.value.candidates) == [f"plain{depth}", f"resnet{depth}"]
        variant = infer_variant(state, name=name)
    else:
        variant = infer_variant(state)
    assert variant.name == name
    assert variant.kwargs == full_kwargs(name, {})


@pytest.mark.parametrize("name, kwargs", [
    ("resnet20", {"shortcut": "B", "num_classes": 7, "in_channels": 1}),
    ("resnet18", {"stem": "cifar", "num_classes": 100}),
    ("resnet50", {"in_channels": 4}),
    ("preact_resnet18", {"stem": "cifar", "num_classes": 10}),
    ("d2l_resnet18", {"num_classes": 5, "in_channels": 3}),
    ("mnist_resnet", {"num_classes": 3, "in_channels": 2}),
])
def test_inference_reads_classes_channels_and_options_from_shapes(name, kwargs):
    variant = infer_variant(torch_ref.create_model(name, **kwargs).state_dict())
    assert (variant.name, variant.kwargs) == (name, full_kwargs(name, kwargs))


def test_inference_reports_what_it_assumed_and_takes_hints():
    state = torch_ref.create_model("resnet18").state_dict()
    assert infer_variant(state).assumed == ("maxpool",)
    assert "assumed maxpool=True" in infer_variant(state).describe()
    seed_004_style = infer_variant(state, maxpool=False)
    assert seed_004_style.kwargs["maxpool"] is False and seed_004_style.assumed == ()
    plain_or_a = torch_ref.create_model("resnet20").state_dict()
    assert infer_variant(plain_or_a, shortcut="A").name == "resnet20"
    assert infer_variant(plain_or_a, name="plain20").name == "plain20"
    with pytest.raises(VariantError, match="look like resnet20 .* or plain20, not resnet32"):
        infer_variant(plain_or_a, name="resnet32")


def test_inference_refuses_foreign_layouts():
    vgg_like = {"features.0.weight": np.zeros((64, 3, 3, 3)), "classifier.weight": np.zeros((10, 64))}
    with pytest.raises(VariantError, match="no ResNet layout recognized in keys features.0.weight"):
        infer_variant(vgg_like)
    odd_depth = torch_ref.create_model("resnet18").state_dict()
    odd_depth = {k: v for k, v in odd_depth.items() if not k.startswith("layer4.1.")}
    with pytest.raises(VariantError, match=r"fit no registered variant .*layers \(2, 2, 2, 1\)"):
        infer_variant(odd_depth)


# ---------------------------------------------------------------- Flax checkpoints


def test_checkpoint_round_trip_rebuilds_the_variant_bit_exact(tmp_path):
    kwargs = {"shortcut": "B", "num_classes": 7, "in_channels": 1}
    state = torch_state("resnet20", **kwargs)
    model = flax_model_from(state, "resnet20", **kwargs)
    flax_resnet.save(model, tmp_path / "ckpt", model_name="resnet20", model_kwargs=kwargs)
    loaded = flax_resnet.load(tmp_path / "ckpt")
    assert flax_resnet.porting.checkpoint.model_recipe(loaded) == ("resnet20", full_kwargs("resnet20", kwargs))
    assert_same_weights(to_torch_state_dict(loaded), state)
    # A loaded model knows its variant, so saving it again needs no arguments.
    flax_resnet.save(loaded, tmp_path / "again")
    assert_same_weights(to_torch_state_dict(flax_resnet.load(tmp_path / "again")), state)


def test_save_without_a_known_variant_asks_for_it(tmp_path):
    # Built by hand, not by create_model or load: nothing records which variant it is.
    model = nnx.eval_shape(lambda: MnistResNet(rngs=nnx.Rngs(0)))
    load_torch_state_dict(model, torch_state("mnist_resnet"))
    with pytest.raises(ValueError, match="pass model_name= and model_kwargs="):
        flax_resnet.save(model, tmp_path / "ckpt")
    flax_resnet.save(model, tmp_path / "ckpt", model_name="mnist_resnet")
    assert isinstance(flax_resnet.load(tmp_path / "ckpt"), type(model))
    with pytest.raises(ValueError, match="the model is not a resnet20"):
        flax_resnet.save(model, tmp_path / "other", model_name="resnet20")
    assert not (tmp_path / "other").exists()


def test_save_never_replaces_silently_and_never_replaces_a_foreign_directory(tmp_path):
    model = model_skeleton("mnist_resnet")
    load_torch_state_dict(model, torch_state("mnist_resnet"))
    flax_resnet.save(model, tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="already exists"):
        flax_resnet.save(model, tmp_path / "ckpt")
    flax_resnet.save(model, tmp_path / "ckpt", overwrite=True)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(CheckpointError, match="is not a flax_resnet checkpoint; not replacing it"):
        flax_resnet.save(model, tmp_path / "photos", overwrite=True)
    assert (tmp_path / "photos" / "cat.jpg").read_bytes() == b"meow"
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "photos"]  # no temporaries left behind


def test_damaged_checkpoints_raise_one_error_naming_the_directory(tmp_path):
    model = model_skeleton("mnist_resnet")
    load_torch_state_dict(model, torch_state("mnist_resnet"))
    flax_resnet.save(model, tmp_path / "ckpt")
    (tmp_path / "ckpt" / "model.json").write_text('{"format": "flax_resnet.checkpoint", "version": 1, '
                                                  '"model": "resnet20", "model_kwargs": {}}')
    with pytest.raises(CheckpointError, match=r"ckpt: does not fit resnet20.*missing in the checkpoint"):
        flax_resnet.load(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "model.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable model.json"):
        flax_resnet.load(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "model.json").unlink()
    with pytest.raises(CheckpointError, match="not a flax_resnet checkpoint: no model.json"):
        flax_resnet.load(tmp_path / "ckpt")


@pytest.mark.parametrize("damage", ["truncate", "zero"])
def test_damaged_arrays_in_a_checkpoint_are_reported(tmp_path, damage, capfd):
    """Found by the checksums before orbax reads anything: one error naming the file, and none of
    the tracebacks a failed orbax read leaves behind ("Event loop is closed")."""
    model = model_skeleton("mnist_resnet")
    load_torch_state_dict(model, torch_state("mnist_resnet"))
    flax_resnet.save(model, tmp_path / "ckpt")
    data_files = [p for p in (tmp_path / "ckpt" / "state").rglob("*") if p.is_file()
                  and p.parent.name == "d" and p.parent.parent.name != "state"]
    assert data_files
    for path in data_files:
        size = path.stat().st_size
        path.write_bytes(path.read_bytes()[: size // 2] if damage == "truncate" else bytes(size))
    problem = r"has \d+ of its \d+ bytes" if damage == "truncate" else "is garbled"
    with pytest.raises(CheckpointError, match=r"ckpt: damaged checkpoint: state/\S+ " + problem):
        flax_resnet.load(tmp_path / "ckpt")
    assert "Event loop is closed" not in capfd.readouterr().err


# ---------------------------------------------------------------- command line: round trips

FORMATS = {"pth": "w.pth", "safetensors": "w.safetensors", "flax": "w_flax"}


def write_source(state, path: Path):
    if path.suffix:
        write_torch_file(state, path)
    else:
        flax_resnet.save(flax_model_from(state, "resnet20", shortcut="B"), path,
                         model_name="resnet20", model_kwargs={"shortcut": "B"})


def read_back(path: Path) -> dict:
    return read_torch_file(path) if path.suffix else to_torch_state_dict(flax_resnet.load(path))


@pytest.mark.parametrize("source", list(FORMATS))
@pytest.mark.parametrize("target", list(FORMATS))
def test_every_format_pair_round_trips_bit_exact(tmp_path, capsys, resnet20_b, source, target):
    src, dst = tmp_path / "in" / FORMATS[source], tmp_path / "out" / FORMATS[target]
    src.parent.mkdir()
    dst.parent.mkdir()
    write_source(resnet20_b, src)
    status, out, err = run([src, dst], capsys)
    assert (status, err) == (0, "")
    assert f"wrote {dst}" in out
    assert_same_weights(read_back(dst), resnet20_b)


def test_seed_004_checkpoint_rekeys_to_torchvision_and_loads_strictly(tmp_path, capsys):
    """DataParallel prefixes and `shortcut.*` keys in, torchvision keys out."""
    state = torch_state("resnet18")
    seed_style = {"module." + k.replace("downsample", "shortcut"): torch.from_numpy(v)
                  for k, v in state.items()}
    torch.save({"epoch": 30, "state_dict": seed_style}, tmp_path / "seed.pth")
    status, out, err = run([tmp_path / "seed.pth", tmp_path / "tv.pth", "--no-maxpool"], capsys)
    assert (status, err) == (0, "")
    assert "resnet18 (num_classes=1000, in_channels=3, stem='imagenet', maxpool=False)" in out
    ported = torch.load(tmp_path / "tv.pth", weights_only=True)
    assert any(".downsample." in k for k in ported) and not any("shortcut" in k for k in ported)
    torchvision.models.resnet18().load_state_dict(ported, strict=True)
    assert_same_weights({k: v.numpy() for k, v in ported.items()}, state)


def test_d2l_seed_checkpoint_to_flax_with_verify(tmp_path, capsys):
    state = torch_state("d2l_resnet18")
    torch.save({"model_state_dict": {k: torch.from_numpy(v) for k, v in state.items()}},
               tmp_path / "d2l.pth")
    status, out, err = run([tmp_path / "d2l.pth", tmp_path / "d2l_flax", "--verify"], capsys)
    assert (status, err) == (0, "")
    assert "d2l.pth: inferred from the keys and shapes: d2l_resnet18 (num_classes=10, in_channels=1)\n" in out
    assert "verify: passed" in out
    assert [line.split()[0] for line in out.splitlines() if line.startswith("  ")] == \
        ["b1", "b2", "b3", "b4", "b5", "logits"]
    assert_same_weights(to_torch_state_dict(flax_resnet.load(tmp_path / "d2l_flax")), state)


# ---------------------------------------------------------------- command line: bad input


def code_running_pickle(path: Path, marker: Path):
    """A .pth whose unpickling would create `marker`; checked to be live before it is saved."""

    class RunsCode:
        def __reduce__(self):
            return exec, (f"open({str(marker)!r}, 'w').close()",)

    pickle.loads(pickle.dumps(RunsCode()))
    assert marker.exists()
    marker.unlink()
    torch.save({"conv1.weight": RunsCode()}, path)


def truncated_pth(path: Path, state):
    write_torch_file(state, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def nan_weights(path: Path, state):
    state = {k: v.copy() for k, v in state.items()}
    state["layer2.0.conv1.weight"][0, 0, 1, 1] = np.nan
    write_torch_file(state, path)


BAD_INPUT = {
    # case: (source file name, how to make it, extra arguments, fragments of the message)
    "missing": ("gone.pth", None, [], ["gone.pth: no such file"]),
    "truncated": ("cut.pth", truncated_pth, [],
                  ["cut.pth: truncated or corrupt PyTorch file"]),
    "corrupt_safetensors": ("bad.safetensors", lambda p, s: p.write_bytes(b"\x10" * 64), [],
                            ["bad.safetensors: truncated or corrupt safetensors file"]),
    "code_running_pickle": ("evil.pth", None, [], ["evil.pth: refused: unpickling it needs exec"]),
    "wrong_variant": ("w.pth", lambda p, s: write_torch_file(s, p), ["--model", "resnet32"],
                      ["w.pth: does not fit resnet32: 60 missing key(s): layer1.3.",
                       "look like resnet20 (shortcut='B'), not resnet32"]),
    "shape_mismatch": ("w.pth", lambda p, s: write_torch_file(s, p), ["--num-classes", "7"],
                       ["w.pth: does not fit resnet20: fc.bias has shape (10,) in the file, (7,) "
                        "in the model; fc.weight has shape (10, 64) in the file, (7, 64)"]),
    "non_finite": ("nan.pth", nan_weights, [],
                   ["nan.pth: non-finite values (NaN or inf) in 1 tensor(s): layer2.0.conv1.weight"]),
    "not_a_checkpoint": ("folder", lambda p, s: p.mkdir(), [],
                         ["folder: not a Flax checkpoint (no model.json), a run folder or a hub directory"]),
    "ambiguous": ("a.pth", lambda p, s: write_torch_file(torch_state("resnet20"), p), [],
                  ["a.pth: the weights fit more than one variant: resnet20 (shortcut='A'), plain20"]),
    "bad_flag": ("w.pth", lambda p, s: write_torch_file(s, p), ["--num-classes", "0"],
                 ["num_classes must be a positive integer, got 0"]),
    "bad_option": ("w.pth", lambda p, s: write_torch_file(s, p), ["--model", "resnet50", "--shortcut", "A"],
                   ["resnet50 does not take option(s) shortcut"]),
}


@pytest.mark.parametrize("target", ["out.pth", "out_flax"])
@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_fails_with_one_line_and_writes_nothing(tmp_path, capsys, resnet20_b, case, target):
    name, make, extra, fragments = BAD_INPUT[case]
    src, marker = tmp_path / name, tmp_path / "code_ran"
    if case == "code_running_pickle":
        code_running_pickle(src, marker)
    elif make is not None:
        make(src, resnet20_b)
    before = sorted(os.listdir(tmp_path))
    status, out, err = run([src, tmp_path / target, *extra], capsys)
    assert_one_line_error(status, err, *fragments)
    assert sorted(os.listdir(tmp_path)) == before  # DST not created, no temporary left
    assert not marker.exists()


def test_existing_destination_needs_force(tmp_path, capsys, resnet20_b):
    write_torch_file(resnet20_b, tmp_path / "w.pth")
    (tmp_path / "out.safetensors").write_bytes(b"precious")
    status, _, err = run([tmp_path / "w.pth", tmp_path / "out.safetensors"], capsys)
    assert_one_line_error(status, err, "out.safetensors already exists; pass --force to replace it")
    assert (tmp_path / "out.safetensors").read_bytes() == b"precious"
    status, _, err = run([tmp_path / "w.pth", tmp_path / "out.safetensors", "--force"], capsys)
    assert (status, err) == (0, "")
    assert_same_weights(read_torch_file(tmp_path / "out.safetensors"), resnet20_b)

    (tmp_path / "photos").mkdir()
    status, _, err = run([tmp_path / "w.pth", tmp_path / "photos", "--force"], capsys)
    assert_one_line_error(status, err, "photos exists and is not a flax_resnet checkpoint")
    assert os.listdir(tmp_path / "photos") == []


def test_flags_may_not_contradict_a_flax_checkpoint(tmp_path, capsys, resnet20_b):
    write_source(resnet20_b, tmp_path / "ckpt")
    status, _, err = run([tmp_path / "ckpt", tmp_path / "w.pth", "--num-classes", "5"], capsys)
    assert_one_line_error(status, err, "ckpt: is a Flax checkpoint of resnet20",
                          "num_classes=5 (saved: 10)")
    status, _, err = run([tmp_path / "ckpt", tmp_path / "w.pth", "--model", "resnet20"], capsys)
    assert (status, err) == (0, "")


# ---------------------------------------------------------------- --verify


def swap_two_channels_statistics(batch_norm) -> None:
    """A planted porting bug: channels 0 and 1 trade running statistics in one BatchNorm."""
    for statistic in (batch_norm.mean, batch_norm.var):
        values = np.array(statistic.get_value())
        values[[0, 1]] = values[[1, 0]]
        statistic.set_value(values)


PLANT_SITES = {  # stage -> the first BatchNorm inside it
    "stem": lambda model: model.bn1,
    "layer1": lambda model: model.layer1.layers[0].bn1,
    "layer2": lambda model: model.layer2.layers[1].bn2,
    "layer3": lambda model: model.layer3.layers[2].bn1,
}


@pytest.mark.parametrize("stage", list(PLANT_SITES))
def test_verify_names_the_stage_of_a_planted_divergence(resnet20_b, stage):
    model = flax_model_from(resnet20_b, "resnet20", shortcut="B")
    kwargs = full_kwargs("resnet20", {"shortcut": "B"})
    honest = verify_port(model, resnet20_b, "resnet20", kwargs)
    assert honest.passed and max(s.relative for s in honest.stages) < DEFAULT_TOLERANCE / 10

    swap_two_channels_statistics(PLANT_SITES[stage](model))
    report = verify_port(model, resnet20_b, "resnet20", kwargs)
    assert not report.passed
    assert report.first_divergence.stage == stage
    names = [s.stage for s in report.stages]
    for earlier in report.stages[: names.index(stage)]:
        assert earlier.relative < DEFAULT_TOLERANCE
    assert report.first_divergence.relative > 10 * DEFAULT_TOLERANCE
    assert report.lines()[-1].startswith(f"verify: FAILED, first diverging stage: {stage} ")


def test_verify_on_the_command_line_catches_a_porting_bug(tmp_path, capsys, resnet20_b, monkeypatch):
    write_torch_file(resnet20_b, tmp_path / "w.pth")
    real_load = sources.load_torch_state_dict

    def buggy_load(model, state_dict):
        real_load(model, state_dict)
        swap_two_channels_statistics(model.layer2.layers[0].bn1)

    monkeypatch.setattr(sources, "load_torch_state_dict", buggy_load)
    status, out, err = run([tmp_path / "w.pth", tmp_path / "out_flax", "--verify"], capsys)
    assert status == port_sequence.VERIFY_FAILED
    assert "verify: FAILED, first diverging stage: layer2" in out
    assert err.count("\n") == 1 and "out_flax not written" in err and "diverges first at layer2" in err
    assert not (tmp_path / "out_flax").exists()


# ---------------------------------------------------------------- as a user runs it


def run_script(*argv, cwd):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, argv)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_script_ports_and_verifies_in_a_fresh_interpreter(tmp_path, resnet20_b):
    torch.save({k: torch.from_numpy(v) for k, v in resnet20_b.items()}, tmp_path / "w.pth")
    done = run_script("w.pth", "w_flax", "--verify", cwd=tmp_path)
    assert (done.returncode, done.stderr) == (0, "")
    assert "w.pth: inferred from the keys and shapes: resnet20 (num_classes=10, in_channels=3, " \
        "shortcut='B')\n" in done.stdout
    assert "verify: passed, every stage within 1e-04" in done.stdout
    back = run_script("w_flax", "back.safetensors", cwd=tmp_path)
    assert (back.returncode, back.stderr) == (0, "")
    loaded = safetensors.torch.load_file(tmp_path / "back.safetensors")
    assert_same_weights({k: v.numpy() for k, v in loaded.items()}, resnet20_b)


def test_script_refuses_code_running_pickle_without_traceback(tmp_path):
    marker = tmp_path / "code_ran"
    code_running_pickle(tmp_path / "evil.pth", marker)
    done = run_script("evil.pth", "out_flax", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith("error: evil.pth: refused: unpickling it needs exec")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert not marker.exists() and not (tmp_path / "out_flax").exists()


def test_script_keeps_an_existing_destination(tmp_path, resnet20_b):
    write_torch_file(resnet20_b, tmp_path / "w.pth")
    (tmp_path / "out.pth").write_bytes(b"precious")
    done = run_script("w.pth", "out.pth", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr == "error: out.pth already exists; pass --force to replace it\n"
    assert (tmp_path / "out.pth").read_bytes() == b"precious"
