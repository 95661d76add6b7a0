"""The registry: names, parameter counts against the published figures, option checking."""

import functools

import jax
import numpy as np
import pytest
import torch
from flax import nnx

import flax_resnet
import torch_ref
from flax_resnet.core.registry import MODELS, TIMM_MODELS, TORCHVISION_MODELS
from flax_resnet.models import model_skeleton

# torchvision's weight metadata (REFERENCE_FIGURES.md), exact.
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
    "resnet101": 44_549_160, "resnet152": 60_192_808, "wide_resnet50_2": 68_883_240,
    "wide_resnet101_2": 126_886_696, "resnext50_32x4d": 25_028_904,
    "resnext101_32x8d": 88_791_336, "resnext101_64x4d": 83_455_272,
}
# timm 1.0.31's counts (REFERENCE_FIGURES.md), exact; test_timm.py checks every timm variant
# against timm's own model as well.
TIMM_PARAMS = {
    "resnet18d": 11_708_744, "resnet26d": 16_014_408, "resnet34d": 21_816_904,
    "resnet50d": 25_576_264, "resnet101d": 44_568_392, "resnet152d": 60_212_040,
    "resnet200d": 64_693_064, "seresnet18": 11_779_624, "seresnet34": 21_960_416,
    "seresnet50": 28_088_024, "seresnet101": 49_326_872, "seresnet152": 66_821_848,
    "seresnext26d_32x4d": 16_809_512, "seresnext50_32x4d": 27_559_896,
    "seresnext101_32x4d": 48_955_416,
}
# He et al. 2015, Table 6, in millions as printed (option A shortcuts add no parameters, so the
# plain twins have the same count).
CIFAR_PARAMS_M = {20: "0.27", 32: "0.46", 44: "0.66", 56: "0.85", 110: "1.7"}

EXPECTED_NAMES = [
    *TORCHVISION_PARAMS, "plain18", "plain34", "plain50",
    "preact_resnet18", "preact_resnet34", "preact_resnet50", "preact_resnet101", "preact_resnet152",
    "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
    "plain20", "plain32", "plain44", "plain56", "plain110",
    "resnet18d", "resnet26d", "resnet34d", "resnet50d", "resnet101d", "resnet152d", "resnet200d",
    "resnet10t", "resnet14t", "resnet26t",
    "seresnet18", "seresnet34", "seresnet50", "seresnet101", "seresnet152",
    "seresnext26d_32x4d", "seresnext26t_32x4d", "seresnext50_32x4d", "seresnext101_32x4d",
    "d2l_resnet18", "mnist_resnet",
]


@functools.cache  # several tests count the same variant
def flax_param_count(name, **kwargs):
    abstract = model_skeleton(name, **kwargs)
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


@functools.cache
def torch_param_count(name, **kwargs):
    with torch.device("meta"):
        model = torch_ref.create_model(name, **kwargs)
    return sum(p.numel() for p in model.parameters())


def test_list_models_names_every_variant_once():
    assert flax_resnet.list_models() == EXPECTED_NAMES
    assert torch_ref.list_models() == EXPECTED_NAMES
    assert set(TORCHVISION_MODELS) == set(TORCHVISION_PARAMS)
    assert set(TIMM_PARAMS) < set(TIMM_MODELS) and set(TORCHVISION_MODELS) < set(TIMM_MODELS)


@pytest.mark.parametrize("name", list(MODELS))
def test_parameter_count_flax_equals_torch(name):
    assert flax_param_count(name) == torch_param_count(name)


@pytest.mark.parametrize("name", list(TORCHVISION_PARAMS))
def test_parameter_count_equals_torchvision_figure(name):
    assert flax_param_count(name) == TORCHVISION_PARAMS[name]


@pytest.mark.parametrize("name", list(TIMM_PARAMS))
def test_parameter_count_equals_timm_figure(name):
    # torch's meta device is the cheaper count; test_parameter_count_flax_equals_torch links Flax.
    assert torch_param_count(name) == TIMM_PARAMS[name]


@pytest.mark.parametrize("depth", list(CIFAR_PARAMS_M))
@pytest.mark.parametrize("kind", ["resnet", "plain"])
def test_cifar_parameter_count_equals_paper(kind, depth):
    printed = CIFAR_PARAMS_M[depth]
    decimals = len(printed.split(".")[1])
    assert f"{flax_param_count(f'{kind}{depth}') / 1e6:.{decimals}f}" == printed


def test_plain_twins_only_lack_the_projections():
    # resnet18's three projections: 1x1 conv + BatchNorm (weight, bias) each.
    projections = sum(c_in * c_out + 2 * c_out for c_in, c_out in [(64, 128), (128, 256), (256, 512)])
    assert flax_param_count("resnet18") - flax_param_count("plain18") == projections


def test_option_b_adds_projection_parameters():
    # resnet20 with 1x1 projections at its two downsampling blocks (16->32, 32->64).
    extra = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    assert flax_param_count("resnet20", shortcut="B") - flax_param_count("resnet20") == extra
    assert torch_param_count("resnet20", shortcut="B") == flax_param_count("resnet20", shortcut="B")


@pytest.mark.parametrize("create", [
    lambda name, **kw: flax_resnet.create_model(name, rngs=nnx.Rngs(0), **kw),
    lambda name, **kw: torch_ref.create_model(name, **kw),
], ids=["flax", "torch"])
def test_bad_names_and_options_are_refused_with_the_valid_choices(create):
    with pytest.raises(ValueError, match="valid models: resnet18, resnet34"):
        create("resnet19")
    with pytest.raises(ValueError, match="valid options: stem, maxpool, zero_init_residual"):
        create("resnet18", shortcut="A")
    with pytest.raises(ValueError, match="choose from 'imagenet', 'cifar'"):
        create("resnet18", stem="tiny")
    with pytest.raises(ValueError, match="valid options: shortcut, zero_init_residual"):
        create("resnet20", stem="imagenet")
    with pytest.raises(ValueError, match="valid options: none"):
        create("mnist_resnet", maxpool=False)
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        create("resnet20", num_classes=0)


def test_stem_option_sets_maxpool_default():
    model = torch_ref.create_model("resnet18", stem="cifar")
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and not model.maxpool
    model = torch_ref.create_model("resnet18", maxpool=False)
    assert model.conv1.kernel_size == (7, 7) and not model.maxpool
    flax_model = flax_resnet.create_model("resnet18", stem="cifar", rngs=nnx.Rngs(0))
    assert flax_model.conv1.kernel.shape == (3, 3, 3, 64) and not flax_model.maxpool
