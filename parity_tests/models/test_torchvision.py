"""torchvision's own models load strictly into torch_ref and give identical outputs."""

import numpy as np
import pytest
import torch
import torchvision

import torch_ref
from flax_resnet.core.registry import TORCHVISION_MODELS
from parity_tests.helpers.twins import randomize_batchnorm


@pytest.mark.parametrize("name", TORCHVISION_MODELS)
def test_torchvision_state_dict_loads_strictly_with_identical_outputs(name):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)()
    randomize_batchnorm(reference)
    model = torch_ref.create_model(name)
    model.load_state_dict(reference.state_dict(), strict=True)
    assert [(k, v.shape) for k, v in model.state_dict().items()] == [
        (k, v.shape) for k, v in reference.state_dict().items()]
    images = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 65, 79)).astype(np.float32))
    reference.eval()
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(images), reference(images))


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_torchvision_zero_init_residual_agrees(name):
    reference = getattr(torchvision.models, name)(zero_init_residual=True)
    model = torch_ref.create_model(name, zero_init_residual=True)
    for key, value in reference.state_dict().items():
        if key.endswith(("bn2.weight", "bn3.weight")):
            assert torch.equal(model.state_dict()[key], value), key
