"""PyTorch-layout weight files: bit-exact round trips, the wrappers people save, and refusals."""

from __future__ import annotations

import os
import pickle
import stat

import numpy as np
import pytest
import safetensors.torch
import torch

from flax_resnet.porting.torch_files import WeightFileError, read_torch_file, write_torch_file

SUFFIXES = (".pth", ".pt", ".safetensors")


def sample_state_dict() -> dict[str, np.ndarray]:
    """Values whose bits a careless round trip would change: -0.0, subnormals, extremes, int64."""
    rng = np.random.default_rng(0)
    awkward = np.array([-0.0, 1e-45, -1e-40, np.finfo(np.float32).max, np.finfo(np.float32).tiny],
                       np.float32)
    return {
        "conv1.weight": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
        "bn1.weight": awkward,
        "bn1.running_var": rng.uniform(0.5, 2.0, 8).astype(np.float32),
        "bn1.num_batches_tracked": np.array(2**40 + 3, np.int64),
        "half.weight": rng.standard_normal((2, 5)).astype(np.float16),
        "double.weight": rng.standard_normal(3),
        "fc.weight": rng.standard_normal((10, 8)).astype(np.float32),
    }


def assert_bit_exact(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)  # .safetensors stores keys sorted; .pth keeps their order
    for key in want:
        assert got[key].dtype == want[key].dtype, key
        assert got[key].shape == want[key].shape, key
        assert got[key].tobytes() == want[key].tobytes(), key


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_write_then_read_is_bit_exact(tmp_path, suffix):
    original = sample_state_dict()
    path = tmp_path / f"weights{suffix}"
    write_torch_file(original, path)
    read = read_torch_file(path)
    assert_bit_exact(read, original)
    if suffix != ".safetensors":
        assert list(read) == list(original)


@pytest.mark.parametrize("first", SUFFIXES)
@pytest.mark.parametrize("second", SUFFIXES)
def test_every_format_pair_round_trips_bit_exact(tmp_path, first, second):
    original = sample_state_dict()
    write_torch_file(original, tmp_path / f"a{first}")
    write_torch_file(read_torch_file(tmp_path / f"a{first}"), tmp_path / f"b{second}")
    assert_bit_exact(read_torch_file(tmp_path / f"b{second}"), original)


def test_written_files_load_in_plain_torch_and_safetensors(tmp_path):
    original = sample_state_dict()
    write_torch_file(original, tmp_path / "w.pth")
    write_torch_file(original, tmp_path / "w.safetensors")
    by_torch = torch.load(tmp_path / "w.pth", weights_only=True)
    by_safetensors = safetensors.torch.load_file(tmp_path / "w.safetensors")
    for loaded in (by_torch, by_safetensors):
        assert_bit_exact({k: v.numpy() for k, v in loaded.items()}, original)


def test_torch_tensors_and_bfloat16_are_accepted(tmp_path):
    values = torch.randn(4, 3).to(torch.bfloat16)
    write_torch_file({"w": values, "n": torch.tensor(5)}, tmp_path / "w.safetensors")
    read = read_torch_file(tmp_path / "w.safetensors")
    assert read["w"].dtype == np.float32  # numpy has no bfloat16; the widening is exact
    np.testing.assert_array_equal(read["w"], values.float().numpy())
    assert read["n"].dtype == np.int64 and read["n"] == 5


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"state_dict": sd, "epoch": 90, "best_acc1": 76.1},
    lambda sd: {"model_state_dict": sd, "optimizer_state_dict": {"state": {}}},
    lambda sd: {"model": sd, "args": {"lr": 0.1}},
], ids=["bare", "state_dict", "model_state_dict", "model"])
@pytest.mark.parametrize("prefix", ["", "module.", "module.module."])
def test_training_script_wrappers_and_data_parallel_prefixes(tmp_path, wrap, prefix):
    original = sample_state_dict()
    tensors = {prefix + k: torch.from_numpy(v) for k, v in original.items()}
    torch.save(wrap(tensors), tmp_path / "ckpt.pth")
    assert_bit_exact(read_torch_file(tmp_path / "ckpt.pth"), original)


class RunsCodeWhenUnpickled:
    """What a malicious checkpoint holds: unpickling it calls exec() on attacker code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


@pytest.mark.parametrize("container", ["zip", "legacy"])
def test_code_running_pickle_is_refused_and_never_runs(tmp_path, container):
    marker = tmp_path / "code_ran"
    payload = {"evil": RunsCodeWhenUnpickled(marker), "conv1.weight": torch.zeros(2)}
    # The payload is live: a plain unpickle runs it.
    pickle.loads(pickle.dumps(payload))
    assert marker.exists()
    marker.unlink()

    path = tmp_path / "evil.pth"
    if container == "zip":
        torch.save(payload, path)
    else:
        with open(path, "wb") as handle:
            pickle.dump(payload, handle, protocol=2)
    with pytest.raises(WeightFileError) as caught:
        read_torch_file(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: refused: unpickling it needs exec,")
    assert not marker.exists()


def test_pickled_module_is_refused_with_advice(tmp_path):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "model.pth")
    with pytest.raises(WeightFileError, match=r"torch\.nn\.modules\.linear\.Linear.*state_dict\(\)"):
        read_torch_file(tmp_path / "model.pth")


def _truncated(path, suffix):
    write_torch_file(sample_state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


BAD_FILES = {
    "missing": (lambda path, suffix: None, "no such file"),
    "empty": (lambda path, suffix: path.write_bytes(b""), "empty or truncated|corrupt"),
    "truncated": (_truncated, "truncated or corrupt"),
    "garbage": (lambda path, suffix: path.write_bytes(np.random.default_rng(1).bytes(4096)),
                "corrupt"),
    "text": (lambda path, suffix: path.write_text("not weights\n"), "corrupt"),
}


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("case", list(BAD_FILES))
def test_unreadable_files_raise_one_error_naming_the_file(tmp_path, suffix, case):
    make, problem = BAD_FILES[case]
    path = tmp_path / f"weights{suffix}"
    make(path, suffix)
    with pytest.raises(WeightFileError, match=problem) as caught:
        read_torch_file(path)
    assert str(caught.value).startswith(f"{path}: ")


def test_a_directory_is_not_a_weight_file(tmp_path):
    (tmp_path / "dir.pth").mkdir()
    with pytest.raises(WeightFileError, match="directory"):
        read_torch_file(tmp_path / "dir.pth")


@pytest.mark.parametrize("content, problem", [
    ([torch.zeros(2)], "holds a list, not a state_dict"),
    ({"epoch": 3, "optimizer": {}}, "no state_dict found: the top-level keys are epoch, optimizer"),
    ({"epoch": 3, "fc.weight": torch.zeros(2)}, "mixes tensors with other values under epoch"),
    ({}, "no state_dict found"),
])
def test_files_without_a_state_dict(tmp_path, content, problem):
    torch.save(content, tmp_path / "w.pth")
    with pytest.raises(WeightFileError, match=problem):
        read_torch_file(tmp_path / "w.pth")


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_non_finite_weights_are_refused_unless_asked(tmp_path, bad_value, suffix):
    state = sample_state_dict()
    state["fc.weight"][3, 4] = bad_value
    write_torch_file(state, tmp_path / f"w{suffix}")
    with pytest.raises(WeightFileError, match=r"non-finite values .* in 1 tensor\(s\): fc\.weight$"):
        read_torch_file(tmp_path / f"w{suffix}")
    unchecked = read_torch_file(tmp_path / f"w{suffix}", check_finite=False)
    assert unchecked["fc.weight"][3, 4] == bad_value or np.isnan(unchecked["fc.weight"][3, 4])


def test_failed_write_leaves_no_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "w.pth"
    write_torch_file({"a": np.ones(3, np.float32)}, path)
    before = path.read_bytes()

    def crash_half_way(obj, target):
        with open(target, "wb") as handle:
            handle.write(b"PK half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_half_way)
    with pytest.raises(OSError, match="disk full"):
        write_torch_file(sample_state_dict(), path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["w.pth"]  # no temporary left behind

    with pytest.raises(OSError):
        write_torch_file(sample_state_dict(), tmp_path / "new.pth")
    assert sorted(os.listdir(tmp_path)) == ["w.pth"]


def test_write_replaces_atomically_with_ordinary_permissions(tmp_path):
    path = tmp_path / "w.safetensors"
    write_torch_file({"a": np.zeros(2, np.float32)}, path)
    write_torch_file({"b": np.ones(3, np.float32)}, path)
    assert list(read_torch_file(path)) == ["b"]
    previous = os.umask(0o022)
    try:
        write_torch_file({"c": np.ones(1, np.float32)}, tmp_path / "c.pth")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / "c.pth").st_mode) == 0o644


def test_write_refuses_unknown_suffix_and_missing_folder(tmp_path):
    with pytest.raises(WeightFileError, match="not a PyTorch file name"):
        write_torch_file({"a": np.zeros(1)}, tmp_path / "w.npz")
    with pytest.raises(WeightFileError, match="does not exist"):
        write_torch_file({"a": np.zeros(1)}, tmp_path / "missing" / "w.pth")
