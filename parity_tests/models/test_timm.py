"""timm's own ResNets: the same keys, shapes and parameter counts, the same outputs, its weights
inferred by name, and its initialization.

timm's model gets random weights and random BatchNorm parameters; its state_dict loads strictly
into torch_ref (identical logits, bit for bit) and, with the statistics a trained net has (see
`trained_like_batchnorm`), into the Flax model (every stage within 1e-5 of max |torch|, or of
torch's own float32 error where that is larger), and the Flax model's export loads strictly back
into timm's model, bit for bit.
"""

import copy

import numpy as np
import pytest
import timm
import torch
from flax import nnx

import flax_resnet
import torch_ref
from flax_resnet.core.registry import TIMM_MODELS, TORCHVISION_MODELS, full_kwargs
from flax_resnet.models import model_skeleton
from flax_resnet.porting.inference import VariantError, infer_variant
from flax_resnet.porting.state_dict import load_torch_state_dict, to_torch_state_dict
from parity_tests.helpers.twins import randomize_batchnorm, relative_error, to_nhwc

# The variants only timm has.
TIMM_ONLY = [name for name in TIMM_MODELS if name not in TORCHVISION_MODELS]
TOLERANCE = 1e-5
# Where float32 itself does not resolve a stage to 1e-5 (torch's own float32 error against its
# float64 result is larger), Flax is held to 10x that error, as in test_eval_parity.py.
NOISE_FACTOR = 10
# Odd at every stage of a deep stem: 33 -> 17 -> 9 -> 5 -> 3 -> 2 (ceil-mode average-pools).
HEIGHT, WIDTH = 33, 47


def trained_like_batchnorm(model: torch.nn.Module, seed: int) -> None:
    """Random BatchNorm weights and biases, with running statistics and scales as trained nets have.

    Fully random running statistics (`randomize_batchnorm`) let a deep net's activations grow
    block by block to 1e6, and a deep SE net is then chaotic: timm's own float32 seresnet152
    differs from its float64 self by 0.45 of max |logit|, so no float32 port could be checked.
    Here each block's last BatchNorm weight is scaled to U(0.1, 0.3) (small, as in nets trained
    from timm's zero-initialized last BatchNorm), and every running mean and variance is set to its
    input's by one train-mode pass over random images. timm's seresnet152 then agrees with its
    float64 self to 1e-6.
    """
    randomize_batchnorm(model, seed)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    tracked = [m.num_batches_tracked.clone() for m in norms]
    with torch.no_grad():
        for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
            for block in stage:
                (block.bn3 if hasattr(block, "bn3") else block.bn2).weight.mul_(0.2)
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a cumulative average: after one pass, that batch's statistics
        batch = np.random.default_rng(seed + 1).standard_normal((4, 3, HEIGHT, WIDTH))
        model.train()
        model(torch.from_numpy(batch.astype(np.float32)))
        for norm, count in zip(norms, tracked):
            norm.momentum = 0.1
            norm.num_batches_tracked.copy_(count)
    model.eval()


def timm_model(name: str, seed: int = 0, trained_like: bool = False) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False)
    if trained_like:
        trained_like_batchnorm(model, seed)
    else:
        randomize_batchnorm(model, seed)
    return model.eval()


def meta_state_dict(name: str, **kwargs) -> dict:
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, **kwargs).state_dict()


def images(batch: int = 2) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((batch, 3, HEIGHT, WIDTH)).astype(np.float32)


@pytest.mark.parametrize("name", ["resnet18", *TIMM_ONLY])
def test_timm_weights_load_strictly_into_torch_ref_with_identical_logits(name):
    reference = timm_model(name)
    state_dict = reference.state_dict()
    assert infer_variant(state_dict).name == name
    with torch.device("meta"):
        twin = torch_ref.create_model(name)
    twin.load_state_dict(state_dict, strict=True, assign=True)
    assert [(k, v.shape) for k, v in twin.state_dict().items()] == [
        (k, v.shape) for k, v in state_dict.items()]
    twin.eval()
    with torch.no_grad():
        assert torch.equal(twin(torch.from_numpy(images())), reference(torch.from_numpy(images())))


# One net of each kind, and the deepest SE net, whose float32 eval check in test_eval_parity.py is
# weak (random statistics make it chaotic). The others' Flax outputs follow from that file's
# per-stage check against torch_ref, which the test above shows computes timm's logits bit for bit.
FLAX_CHECKED = ["resnet18d", "resnet26t", "seresnet18", "seresnext26d_32x4d", "seresnet152"]


@pytest.mark.parametrize("name", FLAX_CHECKED)
def test_timm_weights_give_timms_outputs_in_flax_and_export_back_bit_exact(name):
    reference = timm_model(name, trained_like=True)
    state_dict = reference.state_dict()
    with torch.device("meta"):
        twin = torch_ref.create_model(name)
    twin.load_state_dict(state_dict, strict=True, assign=True)
    twin.eval()
    with torch.no_grad():
        expected = twin.stages(torch.from_numpy(images()))
        assert torch.equal(expected["logits"], reference(torch.from_numpy(images())))

    flax_model = model_skeleton(name)
    load_torch_state_dict(flax_model, state_dict)
    flax_model.eval()
    actual = flax_model.stages(images().transpose(0, 2, 3, 1))
    exact = None
    for stage, value in expected.items():
        error = relative_error(actual[stage], to_nhwc(value.numpy()))
        torch_rounding, tolerance = 0.0, TOLERANCE
        if error > TOLERANCE:
            if exact is None:
                with torch.no_grad():
                    exact = copy.deepcopy(twin).double().stages(torch.from_numpy(images()).double())
            torch_rounding = relative_error(value.numpy(), exact[stage].numpy())
            tolerance = max(TOLERANCE, NOISE_FACTOR * torch_rounding)
        assert error <= tolerance, (
            f"{name} {stage}: {error:.2e} (torch's own float32 error {torch_rounding:.2e})")

    exported = to_torch_state_dict(flax_model)
    for key, value in state_dict.items():
        assert exported[key].tobytes() == value.numpy().tobytes(), key
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)


@pytest.mark.parametrize("name", TIMM_ONLY)
def test_parameter_counts_and_keys_equal_timms(name):
    with torch.device("meta"):
        reference = timm.create_model(name, pretrained=False)
        twin = torch_ref.create_model(name)
    assert sum(p.numel() for p in twin.parameters()) == sum(p.numel() for p in reference.parameters())
    assert [(k, v.shape) for k, v in twin.state_dict().items()] == [
        (k, v.shape) for k, v in reference.state_dict().items()]


@pytest.mark.parametrize("name, kwargs", [
    ("resnet50d", {"num_classes": 10}),
    ("seresnext26t_32x4d", {"num_classes": 7, "in_channels": 1}),
    ("resnet18d", {"in_channels": 4}),
])
def test_inference_reads_classes_and_channels_of_timm_weights(name, kwargs):
    timm_kwargs = {"num_classes": kwargs.get("num_classes", 1000), "in_chans": kwargs.get("in_channels", 3)}
    variant = infer_variant(meta_state_dict(name, **timm_kwargs))
    assert (variant.name, variant.kwargs) == (name, full_kwargs(name, kwargs))
    assert variant.assumed == ("maxpool",)


def test_inference_tells_the_fifty_layer_nets_apart():
    # The same stages and widths; the stem, the shortcut's key index, `se.` keys and groups differ.
    for name in ("resnet50", "resnet50d", "seresnet50", "resnext50_32x4d", "seresnext50_32x4d"):
        assert infer_variant(meta_state_dict(name)).name == name


@pytest.mark.parametrize("name, fragment", [
    ("resnet50c", "stem deep, deep_stem_widths (32, 32), projection B"),  # deep stem, plain shortcut
    ("resnet50s", "stem_width 128"),  # deep stem 64 -> 64 -> 128
    ("ecaresnet50d", "attention unrecognized"),  # ECA's `se.conv`, not squeeze-excitation
])
def test_inference_refuses_timm_layouts_not_registered(name, fragment):
    with pytest.raises(VariantError, match="fit no registered variant") as caught:
        infer_variant(meta_state_dict(name))
    assert fragment in str(caught.value)


def assert_initialized_alike(reference: dict, *others: dict) -> None:
    """Each tensor of `others` drawn as timm draws the same key of `reference`."""
    for other in others:
        assert sorted(other) == sorted(reference)
    for key, value in reference.items():
        samples = [value.numpy(), *(np.asarray(other[key]) for other in others)]
        if f"{key.rsplit('.', 1)[0]}.running_mean" in reference:
            # BatchNorm: constants, each block's last weight zeroed (timm's zero_init_last).
            for sample in samples[1:]:
                np.testing.assert_array_equal(sample, samples[0], err_msg=key)
        elif value.ndim == 4:  # every conv, the SE convs included: kaiming normal, fan_out
            fan_out = value.shape[0] * value.shape[2] * value.shape[3]
            for sample in samples:
                assert abs(sample.std() / np.sqrt(2 / fan_out) - 1) < 0.1, key
        else:  # the SE convs' biases and the classifier: torch's default U(+-1/sqrt(fan_in))
            bound = 1 / np.sqrt(np.prod(reference[key.replace(".bias", ".weight")].shape[1:]))
            for sample in samples:
                assert abs(sample).max() <= bound * (1 + 1e-6), key
                if sample.size >= 256:
                    assert abs(sample.std() / (bound / np.sqrt(3)) - 1) < 0.2, key


def test_initialization_matches_timms():
    torch.manual_seed(0)
    # Deep stem, average-pool shortcuts, squeeze-excitation and grouped convs in one net.
    reference = timm.create_model("seresnext26d_32x4d", pretrained=False).state_dict()
    assert_initialized_alike(reference, torch_ref.create_model("seresnext26d_32x4d").state_dict())
    assert len([k for k, v in reference.items() if k.endswith("bn3.weight") and not v.any()]) == 8
    # Flax builds the stem and shortcuts from the conv and BatchNorm that test_porting_traps.py
    # checks against torchvision's initialization; new here is squeeze-excitation.
    squeeze = {k.removeprefix("layer4.0.se."): v for k, v in timm.create_model(
        "seresnet18", pretrained=False).state_dict().items() if k.startswith("layer4.0.se.")}
    assert_initialized_alike(squeeze, to_torch_state_dict(
        flax_resnet.models.blocks.SqueezeExcite(512, rngs=nnx.Rngs(0))))
