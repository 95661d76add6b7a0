"""Output and stage shapes at several input sizes, odd ones included, in both frameworks.

Shapes come from abstract evaluation (jax.eval_shape, torch's meta device): no arithmetic. The
sizes are those the eval parity test does not run (it compares every stage's values, shapes
included, at an even and an odd size: 32 and 33, 96 and 65x33, 64x48 and 65x33, where 33 is odd
at every stride of an ImageNet net): the canonical size, a small odd one for the CIFAR nets and
the smallest.
"""

import functools

import jax
import jax.numpy as jnp
import pytest
import torch
from flax import nnx

import torch_ref
from flax_resnet.core.registry import MODELS
from flax_resnet.models import model_skeleton
from parity_tests.helpers.twins import family, input_channels

SIZES = {
    "mnist": [(28, 28)],
    "cifar": [(32, 32), (17, 9)],
    "d2l": [(224, 224), (28, 28)],
}
IMAGENET_SIZES = [(224, 224), (1, 1)]


@functools.lru_cache(maxsize=2)
def abstract_flax_model(name):
    """(graphdef, state of jax.ShapeDtypeStructs): the model built without computing anything."""
    return nnx.split(model_skeleton(name))


@functools.lru_cache(maxsize=2)
def meta_torch_model(name):
    with torch.device("meta"):
        return torch_ref.create_model(name)


def flax_stage_shapes(name, height, width):
    graphdef, state = abstract_flax_model(name)
    images = jax.ShapeDtypeStruct((2, height, width, input_channels(name)), jnp.float32)

    def stages(state, images):
        return nnx.merge(graphdef, state).stages(images)

    return {k: v.shape for k, v in jax.eval_shape(stages, state, images).items()}


def torch_stage_shapes(name, height, width):
    with torch.device("meta"):
        out = meta_torch_model(name).stages(torch.empty(2, input_channels(name), height, width))
    return {k: tuple(v.shape) for k, v in out.items()}


@pytest.mark.parametrize("name", list(MODELS))
def test_stage_shapes_agree_at_every_size(name):
    num_classes = MODELS[name].num_classes
    for height, width in SIZES.get(family(name), IMAGENET_SIZES):
        flax_shapes = flax_stage_shapes(name, height, width)
        torch_shapes = torch_stage_shapes(name, height, width)
        assert sorted(flax_shapes) == sorted(torch_shapes)  # eval_shape returns keys sorted
        for stage, (n, c, h, w) in ((k, v) for k, v in torch_shapes.items() if len(v) == 4):
            assert flax_shapes[stage] == (n, h, w, c), (stage, height, width)
        assert flax_shapes["logits"] == torch_shapes["logits"] == (2, num_classes)


def test_resnet50_at_224_has_torchvisions_stage_shapes():
    shapes = flax_stage_shapes("resnet50", 224, 224)
    assert shapes == {
        "stem": (2, 56, 56, 64), "layer1": (2, 56, 56, 256), "layer2": (2, 28, 28, 512),
        "layer3": (2, 14, 14, 1024), "layer4": (2, 7, 7, 2048), "logits": (2, 1000),
    }


def test_cifar_net_keeps_32_then_halves():
    shapes = flax_stage_shapes("resnet56", 32, 32)
    assert [shapes[k][1:] for k in ("stem", "layer1", "layer2", "layer3")] == [
        (32, 32, 16), (32, 32, 16), (16, 16, 32), (8, 8, 64)]
