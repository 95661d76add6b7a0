"""Comparisons: the per-model settings, gradient norms (by hand and across frameworks), and a tiny
end-to-end `scripts/compare.py` run with its summary format."""

from __future__ import annotations

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.torch import load_file
from torch import nn

import flax_resnet
import torch_ref
from flax_resnet.core.config import ConfigError, TrainConfig
from flax_resnet.core.data import load_dataset
from flax_resnet.core.plan import prepare_run
from flax_resnet.porting.state_dict import load_torch_state_dict, to_torch_state_dict
from flax_resnet.studies.experiments import SUMMARY_KEYS, comparison_configs, gradient_batch, summary_record
from flax_resnet.studies.gradient_flow import count_parameters, layer_gradient_norms, weight_forward_order
from flax_resnet.training.loop import build_model
from parity_tests.helpers.scripts import load_script
from parity_tests.helpers.twins import relative_error
from torch_ref.studies import gradient_flow as torch_experiments

# ---------------------------------------------------------------------------------------------
# Gradient norms
# ---------------------------------------------------------------------------------------------

class TinyFlaxNet(nnx.Module):
    """x -> 1x1 conv (weight a) -> linear to 2 classes (weights b). `fc` sorts before `up`, so an
    alphabetical listing would put the classifier first; the forward pass reads `up` first."""

    def __init__(self, a: float, b: tuple[float, float]):
        rngs = nnx.Rngs(0)
        self.up = nnx.Conv(1, 1, (1, 1), use_bias=False, rngs=rngs)
        self.fc = nnx.Linear(1, 2, use_bias=False, rngs=rngs)
        self.up.kernel[...] = jnp.full((1, 1, 1, 1), a)
        self.fc.kernel[...] = jnp.array([b])

    def __call__(self, x):
        return self.fc(self.up(x).reshape(x.shape[0], 1))


class TinyTorchNet(nn.Module):
    """The same net in torch, `fc` registered first (registration order is not forward order)."""

    def __init__(self, a: float, b: tuple[float, float]):
        super().__init__()
        self.fc = nn.Linear(1, 2, bias=False)
        self.up = nn.Conv2d(1, 1, 1, bias=False)
        with torch.no_grad():
            self.up.weight.fill_(a)
            self.fc.weight.copy_(torch.tensor([[b[0]], [b[1]]]))

    def forward(self, x):
        return self.fc(self.up(x).reshape(x.shape[0], 1))


def test_gradient_norms_of_a_tiny_net_match_the_hand_computation():
    """Inputs x = (1, 2), labels (0, 1), a = 0.5, b = (1, -1).

    Hidden h_i = a x_i = (0.5, 1); logits z_i = h_i b = (h_i, -h_i); softmax p_i = (s(2 h_i), 1 - s(2 h_i))
    with s the logistic function. With mean cross-entropy, dL/dz_i = (p_i - onehot_i) / 2:
      example 1 (label 0): p - y = (s(1) - 1, 1 - s(1)) = (-u, u),  u = 1 - s(1)
      example 2 (label 1): p - y = (s(2), -s(2)) = (v, -v),          v = s(2)
    dL/db = sum_i h_i (p_i - y_i) / 2 = (0.5 (-u) + v, 0.5 u - v) / 2  ->  norm sqrt(2) |v - u/2| / 2
    dL/da = sum_i x_i (b . (p_i - y_i)) / 2 = (1 (-2u) + 2 (2v)) / 2 = 2v - u
    """
    sigmoid = lambda t: 1 / (1 + math.exp(-t))  # noqa: E731
    u, v = 1 - sigmoid(1), sigmoid(2)
    expected = {"up.weight": abs(2 * v - u), "fc.weight": math.sqrt(2) * abs(v - u / 2) / 2}

    images = np.array([1.0, 2.0], np.float32).reshape(2, 1, 1, 1)  # NHWC and NCHW alike
    labels = np.array([0, 1])
    flax_norms = layer_gradient_norms(TinyFlaxNet(0.5, (1.0, -1.0)), jnp.asarray(images), jnp.asarray(labels))
    torch_norms = torch_experiments.layer_gradient_norms(TinyTorchNet(0.5, (1.0, -1.0)), torch.from_numpy(images),
                                                         torch.from_numpy(labels))
    for norms in (flax_norms, torch_norms):
        assert list(norms) == ["up.weight", "fc.weight"]  # input to output
        for name, value in expected.items():
            assert norms[name] == pytest.approx(value, rel=1e-6), name


@pytest.mark.parametrize("name, shape", [("mnist_resnet", (4, 28, 28, 1)), ("resnet20", (4, 12, 12, 3))])
def test_gradient_norms_agree_between_frameworks_and_leave_the_model_alone(name, shape):
    """Same layers in the same (forward) order, same norms; BatchNorm statistics and mode untouched."""
    model = flax_resnet.create_model(name, rngs=nnx.Rngs(1))
    twin = torch_ref.create_model(name)
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in to_torch_state_dict(model).items()}, strict=True)
    twin.eval()
    rng = np.random.default_rng(0)
    images = rng.standard_normal(shape).astype(np.float32)
    labels = rng.integers(0, 10, shape[0])
    model.eval()
    before = to_torch_state_dict(model)
    torch_before = {key: value.clone() for key, value in twin.state_dict().items()}

    norms = layer_gradient_norms(model, jnp.asarray(images), jnp.asarray(labels))
    torch_norms = torch_experiments.layer_gradient_norms(
        twin, torch.from_numpy(images.transpose(0, 3, 1, 2).copy()), torch.from_numpy(labels))

    order = weight_forward_order(model, jnp.asarray(images))
    assert list(norms) == list(torch_norms) == order
    assert order == torch_experiments.weight_forward_order(twin, torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
    assert order[0] == "conv1.weight" and order[-1] == "fc.weight"
    if name == "mnist_resnet":  # the forward pass, not the attribute order: conv2 comes after rblock1
        assert order.index("rblock1.conv2.weight") < order.index("conv2.weight")
    for key, value in norms.items():
        assert value > 0 and torch_norms[key] == pytest.approx(value, rel=1e-4), key
    for key, value in to_torch_state_dict(model).items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)
        assert torch.equal(twin.state_dict()[key], torch_before[key]), key
    assert not twin.training and all(not m.training for m in twin.modules())
    assert all(m.use_running_average for _, m in nnx.iter_modules(model) if hasattr(m, "use_running_average"))
    assert count_parameters(model) == torch_experiments.count_parameters(twin)


# ---------------------------------------------------------------------------------------------
# Settings and summary
# ---------------------------------------------------------------------------------------------

def test_comparison_settings_are_identical_but_for_the_model(tmp_path):
    root, configs = comparison_configs(None, {"workdir": str(tmp_path)}, experiment="degradation")
    assert list(configs) == ["plain20", "plain56", "resnet20", "resnet56"] and root == tmp_path
    shared = {key: value for key, value in configs["plain20"].to_json().items() if key not in ("model", "workdir")}
    for name, config in configs.items():
        assert config.workdir == str(tmp_path / name)
        assert {k: v for k, v in config.to_json().items() if k not in ("model", "workdir")} == shared
    # The embedded digits get the CPU-sized run; a real dataset gets He et al.'s recipe.
    cpu = configs["resnet56"]
    assert (cpu.dataset, cpu.image_size, cpu.schedule, cpu.flip, cpu.crop_padding) == \
        ("embedded_mnist", 16, "cosine", None, None)
    _, full = comparison_configs(None, {"dataset": "cifar10"}, experiment="degradation")
    he = full["plain56"]
    assert (he.epochs, he.lr, he.batch_size, he.weight_decay, he.schedule, he.image_size, he.flip) == \
        (164, 0.1, 128, 1e-4, "multistep", None, True)
    _, short = comparison_configs(None, {"dataset": "cifar10", "epochs": 20}, experiment="degradation")
    assert short["resnet20"].epochs == 20 and short["resnet20"].milestones is None  # 50% and 75% of them
    # --recipe: a training preset of scripts/train.py for every model, its dataset included.
    _, recipe = comparison_configs(["plain20", "resnet56"], {"seed": 3}, recipe="he2015_cifar")
    assert [(c.model, c.dataset, c.epochs, c.milestones, c.seed) for c in recipe.values()] == \
        [("plain20", "cifar10", 164, (82.0, 123.0), 3), ("resnet56", "cifar10", 164, (82.0, 123.0), 3)]
    # Model options go to the models that take them; each seed model keeps its own recipe.
    _, mixed = comparison_configs(["resnet20", "plain20"], {"shortcut": "B"})
    assert mixed["resnet20"].model_options == {"shortcut": "B"} and mixed["plain20"].model_options == {}
    _, seeds = comparison_configs(None, {}, experiment="seeds")
    assert (seeds["mnist_resnet"].lr, seeds["mnist_resnet"].momentum, seeds["d2l_resnet18"].image_size) == \
        (0.01, 0.5, 96)
    assert seeds["d2l_resnet18"].dataset == seeds["mnist_resnet"].dataset == "embedded_mnist"
    _, blocks = comparison_configs(None, {"lr": 0.2}, experiment="blocks")
    assert all(c.model_options["stem"] == "cifar" and c.lr == 0.2 for c in blocks.values())


@pytest.mark.parametrize("models, explicit, message", [
    (["resnet20", "nope"], {}, "unknown model"),
    (["resnet20", "resnet20"], {}, "listed twice"),
    (["resnet20"], {"model": "plain20"}, "--models"),
    (["plain20", "mnist_resnet"], {"shortcut": "B"}, "takes the model option shortcut"),
    (None, {}, "nothing to compare"),
    (["resnet20"], {"gamma": 0.5}, "--gamma acts only with --schedule multistep"),
])
def test_comparison_refusals(models, explicit, message):
    with pytest.raises(ConfigError, match=message):
        comparison_configs(models, explicit)


def test_summary_record_is_the_last_epoch_and_the_total_time():
    history = [{"epoch": 1, "train_loss": 2.0, "train_accuracy": 0.1, "test_loss": 2.1, "test_accuracy": 0.2,
                "seconds": 3.0},
               {"epoch": 2, "train_loss": 1.0, "train_accuracy": 0.6, "test_loss": 1.1, "test_accuracy": 0.5,
                "seconds": 4.5}]
    assert summary_record(history, 123) == {"train_loss": 1.0, "train_accuracy": 0.6, "test_loss": 1.1,
                                            "test_accuracy": 0.5, "params": 123, "seconds": 7.5}


# ---------------------------------------------------------------------------------------------
# scripts/compare.py, end to end on 64 images
# ---------------------------------------------------------------------------------------------

def run_compare(*argv) -> int:
    """scripts/compare.py's main() in this process, so JAX and torch are not loaded again."""
    script = load_script("compare")
    return script.main(list(argv))


def tiny_flags(mnist_dir, workdir):
    """One epoch of two steps (batch 32 of 64 images), one evaluation batch."""
    return ["--dataset", "mnist", "--data-dir", str(mnist_dir), "--epochs", "1", "--batch-size", "32",
            "--eval-batch-size", "24", "--no-progress", "--workdir", str(workdir)]


def test_compare_writes_the_summary_curves_and_gradient_flow(mnist_dir, tmp_path):
    root = tmp_path / "cmp"
    assert run_compare("--models", "plain20,resnet20", "--image-size", "16", *tiny_flags(mnist_dir, root)) == 0

    summary = json.loads((root / "summary.json").read_text())
    assert list(summary) == ["models"] and list(summary["models"]) == ["plain20", "resnet20"]
    configs = {name: json.loads((root / name / "config.json").read_text()) for name in summary["models"]}
    flow = json.loads((root / "grad_norms.json").read_text())
    data = load_dataset("mnist", mnist_dir)
    for name, record in summary["models"].items():
        assert tuple(record) == SUMMARY_KEYS
        history = [json.loads(line) for line in (root / name / "metrics.jsonl").read_text().splitlines()]
        assert record == summary_record(history, record["params"]) and len(history) == 1
        twin = torch_ref.create_model(name, **configs[name]["model_kwargs"])
        assert record["params"] == torch_experiments.count_parameters(twin)

        # "initial" is the model the trainer started from; "final" is the trained one.
        config = TrainConfig.from_json(configs[name])
        setup = prepare_run(config, data)
        images, labels = gradient_batch(data, setup.augment, config.batch_size)
        initial = layer_gradient_norms(build_model(config, setup, data), jnp.asarray(images), jnp.asarray(labels))
        trained = build_model(config, setup, data)
        load_torch_state_dict(trained, load_file(root / name / "model.safetensors"))
        final = layer_gradient_norms(trained, jnp.asarray(images), jnp.asarray(labels))
        entry = flow["models"][name]
        assert entry["batch_images"] == 32
        assert entry["layers"] == list(initial) and len(entry["layers"]) == 20  # 19 convs and the classifier
        assert relative_error(np.array(entry["initial"]), np.array(list(initial.values()))) < 1e-5
        assert relative_error(np.array(entry["final"]), np.array(list(final.values()))) < 1e-5
        assert relative_error(np.array(entry["final"]), np.array(entry["initial"])) > 1e-3

    # Identical settings (data, order, optimizer, schedule, seed): only the model and its folder differ.
    same = [{k: v for k, v in c.items() if k not in ("model", "workdir", "model_kwargs")} for c in configs.values()]
    assert same[0] == same[1]
    table = (root / "summary.md").read_text()
    for name, record in summary["models"].items():
        assert f"| {name} | {record['params']:,} |" in table
    for picture in ("comparison.png", "grad_norms.png"):
        assert (root / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The same command again resumes the finished runs: nothing retrains, the files come out the same.
    files = {name: (root / name).read_text() for name in ("summary.json", "grad_norms.json", "summary.md")}
    assert run_compare("--models", "plain20,resnet20", "--image-size", "16", *tiny_flags(mnist_dir, root)) == 0
    assert {name: (root / name).read_text() for name in files} == files


def test_compare_in_torch_starts_from_the_flax_initial_weights(mnist_dir, tmp_path):
    root = tmp_path / "cmp"
    assert run_compare("--models", "mnist_resnet", "--framework", "torch", *tiny_flags(mnist_dir, root)) == 0
    entry = json.loads((root / "grad_norms.json").read_text())["models"]["mnist_resnet"]
    config = TrainConfig.from_json(json.loads((root / "mnist_resnet" / "config.json").read_text()))
    assert config.framework == "torch"
    data = load_dataset("mnist", mnist_dir)
    setup = prepare_run(config, data)
    images, labels = gradient_batch(data, setup.augment, config.batch_size)
    flax_initial = layer_gradient_norms(build_model(config, setup, data), jnp.asarray(images), jnp.asarray(labels))
    assert entry["layers"] == list(flax_initial)
    assert relative_error(np.array(entry["initial"]), np.array(list(flax_initial.values()))) < 1e-4
    summary = json.loads((root / "summary.json").read_text())
    twin = torch_ref.create_model("mnist_resnet")
    assert summary["models"]["mnist_resnet"]["params"] == torch_experiments.count_parameters(twin)


def test_compare_refuses_bad_input_in_one_line(capsys, tmp_path):
    for argv, message in ((["--models", "resnet20,nope"], "unknown model(s) nope"),
                          (["--preset", "nope"], "invalid choice"),
                          (["--preset", "degradation", "--model", "resnet20"], "--models")):
        with pytest.raises(SystemExit) as exit_info:
            run_compare(*argv, "--workdir", str(tmp_path / "never"))
        assert exit_info.value.code == 2
        error = capsys.readouterr().err
        assert message in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "never").exists()


def test_a_model_that_cannot_run_stops_the_comparison_before_any_training(mnist_dir, capsys, tmp_path):
    root = tmp_path / "cmp"
    with pytest.raises(SystemExit) as exit_info:
        run_compare("--models", "resnet20,mnist_resnet", "--image-size", "16", *tiny_flags(mnist_dir, root))
    assert exit_info.value.code == 2
    assert "mnist_resnet cannot take 16x16x1 images" in capsys.readouterr().err
    assert not root.exists()
