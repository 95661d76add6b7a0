"""One test per trap in porting ResNets between PyTorch and Flax (see the project's porting notes).

Each test would fail under the usual mistake: 'SAME' padding, zero-padded max-pool, a floor-mode
or padding-counting average-pool, matching weights by order, NHWC flattening, Flax's default
BatchNorm momentum or biased running variance, v1 stride placement, squeeze-excitation widths
rounded another way, or Flax's default initializers.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm.layers
import torch
from flax import nnx

import flax_resnet
import torch_ref
from flax_resnet.models import layers, model_skeleton
from flax_resnet.porting.state_dict import from_torch_layout, load_torch_state_dict, to_torch_layout
from parity_tests.helpers.twins import make_twins, random_images, relative_error


def ported_conv(kernel_size, stride, groups=1, channels=(8, 16)):
    torch.manual_seed(0)
    torch_conv = torch_ref.models.layers.conv(*channels, kernel_size, stride=stride, groups=groups)
    flax_conv = layers.conv(*channels, kernel_size, stride=stride, groups=groups, rngs=nnx.Rngs(0))
    flax_conv.kernel[...] = jnp.asarray(from_torch_layout(torch_conv.weight.detach().numpy(), "kernel"))
    return torch_conv, flax_conv


@pytest.mark.parametrize("kernel_size,stride", [(7, 2), (3, 2), (3, 1), (1, 2)])
@pytest.mark.parametrize("size", [56, 57, 224, 97])
def test_strided_conv_padding_is_symmetric_like_torch(kernel_size, stride, size):
    torch_conv, flax_conv = ported_conv(kernel_size, stride)
    x = np.random.default_rng(size).standard_normal((2, 8, size, size)).astype(np.float32)
    with torch.no_grad():
        expected = torch_conv(torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)
    actual = flax_conv(x.transpose(0, 2, 3, 1))
    assert actual.shape == expected.shape
    assert relative_error(actual, expected) <= 1e-6


def test_same_padding_would_differ_at_even_sizes():
    # The trap the explicit padding avoids: XLA's 'SAME' pads (2, 3) for a 7x7/2 conv at 224.
    torch_conv, flax_conv = ported_conv(7, 2)
    x = np.random.default_rng(0).standard_normal((1, 224, 224, 8)).astype(np.float32)
    same = jax.lax.conv_general_dilated(
        x, flax_conv.kernel[...], (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert same.shape == flax_conv(x).shape
    assert relative_error(same, flax_conv(x)) > 1e-2


@pytest.mark.parametrize("size", [8, 9, 56, 57])
def test_max_pool_pads_with_minus_infinity(size):
    x = -np.abs(np.random.default_rng(size).standard_normal((2, 3, size, size))).astype(np.float32) - 1
    expected = torch.nn.functional.max_pool2d(torch.from_numpy(x), 3, 2, 1).numpy()
    actual = np.asarray(layers.max_pool(x.transpose(0, 2, 3, 1), 3, 2, padding=1))
    np.testing.assert_array_equal(actual, expected.transpose(0, 2, 3, 1))
    assert actual.max() < 0  # zero padding would have put zeros on the border


@pytest.mark.parametrize("size", [(8, 8), (9, 9), (7, 12), (1, 1)])
def test_average_pool_shortcut_is_ceil_mode_and_counts_only_real_pixels(size):
    # ResNet-D's AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False): values and gradient.
    x = np.random.default_rng(size[0]).standard_normal((2, 3, *size)).astype(np.float32)
    out_size = (-(-size[0] // 2), -(-size[1] // 2))
    weights = np.random.default_rng(1).standard_normal((2, 3, *out_size)).astype(np.float32)
    x_torch = torch.from_numpy(x).requires_grad_()
    expected = torch_ref.models.layers.AvgPool(2, 2)(x_torch)
    (expected * torch.from_numpy(weights)).sum().backward()
    nhwc, weights_nhwc = x.transpose(0, 2, 3, 1), weights.transpose(0, 2, 3, 1)
    pooled = np.asarray(layers.avg_pool(nhwc, 2, 2))
    grad = np.asarray(jax.grad(lambda v: (layers.avg_pool(v, 2, 2) * weights_nhwc).sum())(nhwc))
    assert pooled.shape == (2, *out_size, 3)
    assert relative_error(pooled, expected.detach().numpy().transpose(0, 2, 3, 1)) <= 1e-6
    assert relative_error(grad, x_torch.grad.numpy().transpose(0, 2, 3, 1)) <= 1e-6
    if size[0] % 2 and size[0] > 1:
        # Floor mode drops the last row; zero-padding and counting the pad halves it.
        assert torch.nn.functional.avg_pool2d(torch.from_numpy(x), 2, 2).shape[2] < out_size[0]
        padded = np.pad(x, ((0, 0), (0, 0), (0, 1), (0, size[1] % 2)))
        counted = torch.nn.functional.avg_pool2d(torch.from_numpy(padded), 2, 2).numpy()
        assert relative_error(counted.transpose(0, 2, 3, 1), pooled) > 1e-2


def test_resnet_d_pools_then_projects_with_stride_one():
    torch_model = torch_ref.create_model("resnet50d")
    flax_model = model_skeleton("resnet50d")
    for stage, pool in (("layer1", torch.nn.Identity), ("layer2", torch.nn.AvgPool2d)):
        torch_shortcut = getattr(torch_model, stage)[0].downsample
        flax_shortcut = getattr(flax_model, stage).layers[0].downsample.layers
        assert isinstance(torch_shortcut[0], pool) and torch_shortcut[1].stride == (1, 1)
        assert flax_shortcut[1].strides == 1
        assert (flax_shortcut[0] is layers.identity) == (pool is torch.nn.Identity)
    assert flax_model.layer2.layers[0].downsample.layers[0].stride == 2
    assert flax_model.layer2.layers[0].conv2.strides == 2  # the block itself still strides on its 3x3


@pytest.mark.parametrize("channels", [64, 128, 256, 512, 1024, 2048, 40, 200, 1000])
def test_squeeze_excitation_width_rounds_as_timm(channels):
    expected = timm.layers.SEModule(channels).fc1.out_channels
    assert flax_resnet.models.blocks.squeeze_channels(channels) == expected
    assert torch_ref.models.blocks.squeeze_channels(channels) == expected
    assert torch_ref.models.blocks.SqueezeExcite(channels).fc1.out_channels == expected


def test_grouped_conv_layout_ports():
    torch_conv, flax_conv = ported_conv(3, 2, groups=4, channels=(16, 32))
    assert flax_conv.kernel.shape == (3, 3, 4, 32)
    x = np.random.default_rng(1).standard_normal((2, 16, 15, 15)).astype(np.float32)
    with torch.no_grad():
        expected = torch_conv(torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)
    assert relative_error(flax_conv(x.transpose(0, 2, 3, 1)), expected) <= 1e-6


@pytest.mark.parametrize("shape", [(64, 3, 7, 7), (128, 4, 3, 3), (10, 512)])
def test_layout_transposes_invert_each_other(shape):
    value = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    flax_value = from_torch_layout(value, "kernel")
    assert flax_value.shape == (shape[2], shape[3], shape[1], shape[0]) if len(shape) == 4 else (
        shape[1], shape[0])
    np.testing.assert_array_equal(to_torch_layout(flax_value, "kernel"), value)


def test_weights_are_matched_by_name_not_by_order():
    torch_model, flax_model = make_twins("resnet20", shortcut="B")
    shuffled = list(torch_model.state_dict().items())
    np.random.default_rng(0).shuffle(shuffled)
    other = flax_resnet.create_model("resnet20", shortcut="B", rngs=nnx.Rngs(5))
    load_torch_state_dict(other, dict(shuffled))
    _, images = random_images("resnet20", 2, 32, 32)
    flax_model.eval()
    other.eval()
    np.testing.assert_array_equal(np.asarray(other(images)), np.asarray(flax_model(images)))


def test_flatten_is_channel_major_as_in_torch():
    torch_model, flax_model = make_twins("mnist_resnet")
    nchw, nhwc = random_images("mnist_resnet", 2, 28, 28)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(nchw)).numpy()
    assert relative_error(flax_model(nhwc), expected) <= 1e-5
    # Flattening the NHWC map directly feeds the fc the same numbers in another order.
    features = flax_model.stages(nhwc)["rblock2"]
    naive = flax_model.fc(features.reshape(2, -1))
    assert relative_error(naive, expected) > 1e-2


def batchnorm_pair(channels=6):
    torch_bn = torch_ref.models.layers.BatchNorm(channels)
    flax_bn = layers.BatchNorm(channels)
    return torch_bn, flax_bn


def test_batchnorm_constants_match_torch():
    torch_bn, flax_bn = batchnorm_pair()
    assert torch_bn.eps == flax_bn.epsilon == 1e-5
    assert torch_bn.momentum == flax_bn.momentum == 0.1
    assert not nnx.BatchNorm(6, rngs=nnx.Rngs(0)).momentum == 1 - torch_bn.momentum  # Flax's default 0.99


def test_running_statistics_follow_torch_over_several_steps():
    torch_bn, flax_bn = batchnorm_pair()
    torch_bn.train()
    flax_bn.use_running_average = False
    rng = np.random.default_rng(0)
    for step in range(3):
        # n = N*H*W = 8: the unbiased correction n/(n-1) is large enough to see.
        x = (rng.standard_normal((2, 6, 2, 2)) * (step + 1) + step).astype(np.float32)
        with torch.no_grad():
            expected = torch_bn(torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)
        actual = flax_bn(x.transpose(0, 2, 3, 1))
        assert relative_error(actual, expected) <= 1e-5
    assert relative_error(flax_bn.mean[...], torch_bn.running_mean.numpy()) <= 1e-6
    assert relative_error(flax_bn.var[...], torch_bn.running_var.numpy()) <= 1e-6
    assert int(flax_bn.num_batches_tracked[...]) == int(torch_bn.num_batches_tracked) == 3


def test_running_variance_uses_the_unbiased_batch_variance():
    _, flax_bn = batchnorm_pair(1)
    x = np.array([1.0, 2.0, 4.0, 8.0], np.float32).reshape(1, 2, 2, 1)
    flax_bn(x)
    biased, unbiased = np.var(x), np.var(x, ddof=1)
    np.testing.assert_allclose(flax_bn.var[...], 0.9 + 0.1 * unbiased, rtol=1e-6)
    assert not np.isclose(float(flax_bn.var[...][0]), 0.9 + 0.1 * biased, rtol=1e-3)


def test_eval_mode_uses_running_statistics_and_eps():
    torch_bn, flax_bn = batchnorm_pair(4)
    torch_bn.running_var.fill_(2e-5)  # eps matters at this size
    torch_bn.running_mean.fill_(0.5)
    load = {"bn." + k: v for k, v in torch_bn.state_dict().items()}

    class Holder(nnx.Module):
        def __init__(self):
            self.bn = flax_bn

    load_torch_state_dict(Holder(), load)
    torch_bn.eval()
    flax_bn.use_running_average = True
    x = np.random.default_rng(0).standard_normal((2, 4, 3, 3)).astype(np.float32)
    with torch.no_grad():
        expected = torch_bn(torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)
    assert relative_error(flax_bn(x.transpose(0, 2, 3, 1)), expected) <= 1e-6


def test_bottleneck_strides_on_the_3x3_conv():
    model = model_skeleton("resnet50")  # structure only
    block = model.layer2.layers[0]
    assert block.conv1.strides == 1 and block.conv2.strides == 2
    assert block.downsample.layers[0].strides == 2
    with torch.device("meta"):
        torch_block = torch_ref.create_model("resnet50").layer2[0]
    assert torch_block.conv1.stride == (1, 1) and torch_block.conv2.stride == (2, 2)


@pytest.mark.parametrize("name,projections", [
    ("resnet18", [0, 1, 1, 1]), ("resnet50", [1, 1, 1, 1]), ("resnet20", [0, 0, 0]),
    ("plain18", [0, 0, 0, 0]), ("preact_resnet50", [1, 1, 1, 1]), ("resnet18d", [0, 1, 1, 1]),
    ("seresnet50", [1, 1, 1, 1]),
])
def test_projection_exactly_where_shape_changes(name, projections):
    model = torch_ref.create_model(name, **({"shortcut": "B"} if name == "resnet20" else {}))
    counted = [sum(isinstance(b.downsample, torch.nn.Sequential) for b in stage)
               for stage in (getattr(model, s) for s in model.stage_names)]
    expected = [0, 1, 1] if name == "resnet20" else projections
    assert counted == expected


def test_option_a_shortcut_subsamples_and_zero_pads():
    shortcut = flax_resnet.models.blocks.ZeroPadShortcut(16, 32, 2)
    x = np.random.default_rng(0).standard_normal((2, 8, 8, 16)).astype(np.float32)
    out = np.asarray(shortcut(x))
    assert out.shape == (2, 4, 4, 32)
    np.testing.assert_array_equal(out[..., 8:24], x[:, ::2, ::2, :])
    assert not out[..., :8].any() and not out[..., 24:].any()
    torch_out = torch_ref.models.blocks.ZeroPadShortcut(16, 32, 2)(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    np.testing.assert_array_equal(torch_out.numpy().transpose(0, 2, 3, 1), out)


@pytest.mark.parametrize("name,kernel", [
    ("resnet50", (3, 3, 64, 64)), ("wide_resnet50_2", (3, 3, 128, 128)),
    ("resnext50_32x4d", (3, 3, 4, 128)), ("resnext101_64x4d", (3, 3, 4, 256)),
])
def test_group_width_formula(name, kernel):
    model = model_skeleton(name)
    assert model.layer1.layers[0].conv2.kernel.shape == kernel


def test_float32_at_highest_matmul_precision():
    assert jax.config.jax_default_matmul_precision == "highest"
    assert not torch.backends.cuda.matmul.allow_tf32


def init_statistics(name):
    torch.manual_seed(0)
    torch_model = torch_ref.create_model(name)
    flax_model = flax_resnet.create_model(name, rngs=nnx.Rngs(0))
    flax_weights = flax_resnet.porting.to_torch_state_dict(flax_model)
    return torch_model.state_dict(), flax_weights


def test_initialization_matches_torchvision():
    torch_weights, flax_weights = init_statistics("resnet50")
    for key, value in torch_weights.items():
        value, flax_value = value.numpy(), flax_weights[key]
        if key.endswith("weight") and value.ndim == 4:
            fan_out = value.shape[0] * value.shape[2] * value.shape[3]
            for sample in (value, flax_value):
                assert abs(sample.std() / np.sqrt(2 / fan_out) - 1) < 0.1, key
                assert abs(sample).max() > 2.5 * np.sqrt(2 / fan_out)  # untruncated normal
        elif key == "fc.weight":
            bound = 1 / np.sqrt(value.shape[1])
            for sample in (value, flax_value):
                assert abs(sample).max() <= bound and abs(sample.std() / (bound / np.sqrt(3)) - 1) < 0.05
        elif key.endswith(("bn1.weight", "bn2.weight", "bn3.weight")):
            np.testing.assert_array_equal(flax_value, value)


def test_seed_nets_keep_torchs_default_conv_initialization():
    torch_weights, flax_weights = init_statistics("d2l_resnet18")
    for key in ("1.0.conv1.weight", "1.0.conv1.bias", "4.1.conv2.weight"):
        value = torch_weights[key].numpy()
        weight = torch_weights[key.replace("bias", "weight")].numpy()
        bound = 1 / np.sqrt(np.prod(weight.shape[1:]))
        for sample in (value, flax_weights[key]):
            assert abs(sample).max() <= bound * (1 + 1e-6)
            assert abs(sample.std() / (bound / np.sqrt(3)) - 1) < 0.2


def test_zero_init_residual_zeroes_the_last_batchnorm_of_each_block():
    for name, last in (("resnet18", "bn2"), ("resnet50", "bn3"), ("resnet20", "bn2")):
        weights = flax_resnet.porting.to_torch_state_dict(
            flax_resnet.create_model(name, zero_init_residual=True, rngs=nnx.Rngs(0)))
        torch_weights = torch_ref.create_model(name, zero_init_residual=True).state_dict()
        keys = [k for k in torch_weights if k.endswith(f"{last}.weight") and k.startswith("layer")]
        assert keys
        for key in keys:
            assert not weights[key].any() and not torch_weights[key].any(), key
