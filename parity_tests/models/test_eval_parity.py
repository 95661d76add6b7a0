"""Eval mode: torch weights with random BatchNorm statistics, ported to Flax, give the same outputs.

Every variant, an even and an odd input size, every stage's activation as well as the logits,
each computed four times: torch and Flax, float64 and float32.

- float64: every stage agrees to FLOAT64_TOLERANCE, which shows the two frameworks compute the
  same function (a wrong padding, layout or statistic is orders above it). Where a deep plain net
  amplifies even float64 rounding past it (plain110's third stage at 32x32: 2.7e-8), Flax is held
  to NOISE_FACTOR times torch's own float64 rounding noise, the change from running torch's
  float64 forward in channels_last (other summation orders), measured in the same test.
- float32: every stage within 1e-5, or within NOISE_FACTOR times torch's own float32 error
  against float64 at that stage, whichever is larger: a net so deep that float32 rounding grows
  past 1e-5 (plain110's third stage) is held to what float32 can resolve, measured here, on the
  machine that runs the test.

And the way back, Flax -> torch, is bit-exact.
"""

import copy

import numpy as np
import pytest
import torch

from flax_resnet.core.registry import MODELS
from flax_resnet.porting import to_torch_state_dict
from parity_tests.helpers.compilation import optimized
from parity_tests.helpers.twins import as_float64, input_sizes, make_twins, random_images, relative_error, to_nhwc

TOLERANCE = 1e-5
FLOAT64_TOLERANCE = 1e-9
NOISE_FACTOR = 10


@pytest.fixture(scope="module", params=list(MODELS))
def twins(request):
    torch_model, flax_model = make_twins(request.param)
    torch_model.eval()
    flax_model.eval()
    return request.param, torch_model, flax_model


def torch_stages(model, images, memory_format=torch.contiguous_format):
    model = model.to(memory_format=memory_format)
    with torch.no_grad():
        stages = model.stages(torch.from_numpy(images).to(memory_format=memory_format))
    model.to(memory_format=torch.contiguous_format)
    return {stage: to_nhwc(value.contiguous().numpy()) for stage, value in stages.items()}


def flax_stages(model, images):
    # Op by op, not jitted: variants share layer shapes, so compiled ops are reused.
    return {stage: np.asarray(value) for stage, value in model.stages(images).items()}


def test_every_stage_and_the_logits_match(twins, float64_enabled):
    name, torch_model, flax_model = twins
    torch_model64, flax_model64 = copy.deepcopy(torch_model).double(), as_float64(flax_model)
    for height, width in input_sizes(name):
        nchw, nhwc = random_images(name, 2, height, width, seed=height)
        exact = torch_stages(torch_model64, nchw.astype(np.float64))
        torch32 = torch_stages(torch_model, nchw)
        with optimized():  # float64 convolutions run as XLA's own loops
            flax64 = flax_stages(flax_model64, nhwc.astype(np.float64))
        flax32 = flax_stages(flax_model, nhwc)
        assert list(flax32) == list(flax64) == list(exact)
        reordered = None  # torch's float64 forward in channels_last: other summation orders
        for stage, reference in exact.items():
            where = f"{name} {stage} at {height}x{width}"
            assert flax32[stage].shape == flax64[stage].shape == reference.shape, where
            assert flax32[stage].dtype == np.float32 and flax64[stage].dtype == np.float64, where
            error64 = relative_error(flax64[stage], reference)
            if error64 > FLOAT64_TOLERANCE:  # a deep plain net amplifies even float64 rounding
                if reordered is None:
                    reordered = torch_stages(torch_model64, nchw.astype(np.float64), torch.channels_last)
                torch_noise = relative_error(reordered[stage], reference)
                assert error64 <= NOISE_FACTOR * torch_noise, (
                    f"{where}, float64: {error64:.2e} (torch's own float64 rounding noise {torch_noise:.2e})")
            error = relative_error(flax32[stage], torch32[stage])
            torch_rounding = relative_error(torch32[stage], reference)
            allowed = max(TOLERANCE, NOISE_FACTOR * torch_rounding)
            assert error <= allowed, f"{where}, float32: {error:.2e} (torch's own float32 error {torch_rounding:.2e})"


def test_round_trip_torch_flax_torch_is_bit_exact(twins):
    _, torch_model, flax_model = twins
    original = torch_model.state_dict()
    exported = to_torch_state_dict(flax_model)
    assert sorted(exported) == sorted(original)
    for key, value in original.items():
        assert exported[key].dtype == value.numpy().dtype, key
        np.testing.assert_array_equal(exported[key], value.numpy(), err_msg=key)
    torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)
