"""Random erasing on the device is torchvision's v2 RandomErasing, given the same draws: the same
boxes (our uniform draws handed to torchvision by standing in for the random calls it makes), the
same pixels as its functional `erase`, the boxes' sizes distributed as torchvision's own sampler
draws them; inside `train_transform` it follows normalization and leaves the crop and flip alone;
and a short run with it trains the same in both frameworks."""

from __future__ import annotations

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as F
from scipy import stats
from torchvision.transforms.v2 import _augment, _transform

from flax_resnet.core.augment import AugmentSpec
from flax_resnet.core.config import ConfigError, TrainConfig
from flax_resnet.core.config.command_line import OneLineErrorParser, add_train_arguments, config_from_args
from flax_resnet.core.config.validation import validate
from flax_resnet.training import train
from flax_resnet.training.device_transforms import train_transform
from flax_resnet.training.random_erasing import (
    ATTEMPTS, ERASING_STREAM, RATIO, SCALE, EraseBox, EraseDraws, draw_erase_boxes, erase,
)
from parity_tests.helpers.training_fixtures import tiny

SIZES = [(13, 17), (32, 32)]
SETTINGS = {
    "defaults": dict(scale=SCALE, ratio=RATIO),
    # Boxes of 90-100 % of the image seldom fit: later attempts and the no-box fallback happen often.
    "crowded": dict(scale=(0.9, 1.0), ratio=RATIO),
}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FLOAT32_ROUNDOFF = 2.0 ** -24
SIGNIFICANCE = 1e-4  # of each test that two samples come from one distribution


def normalized_images(count, size, seed):
    """Random uint8 pixels, normalized: (p / 255 - mean) / std, NHWC float32."""
    pixels = np.random.default_rng(seed).integers(0, 256, (count, *size, 3), dtype=np.uint8)
    return ((pixels / 255.0 - np.array(MEAN)) / np.array(STD)).astype(np.float32)


jitted_erase = jax.jit(erase)
# count and image_size shape the arrays; the probability only meets the coins, so one compilation serves all
jitted_draw = jax.jit(draw_erase_boxes, static_argnames=("count", "image_size", "scale", "ratio"))
DRAWS = 2000  # per setting and size


@functools.lru_cache(maxsize=None)
def drawn(setting: str, size: tuple[int, int], seed: int, probability: float = 0.5) -> EraseDraws:
    """DRAWS images' draws as numpy arrays."""
    draws = jitted_draw(jax.random.key(seed), count=DRAWS, image_size=size, probability=probability,
                        **SETTINGS[setting])
    return jax.tree.map(np.asarray, draws)


def box_mask(box: EraseBox, shape) -> np.ndarray:
    """[n, H, W]: the pixels `erase` sets."""
    rows, columns = np.arange(shape[1])[None, :, None], np.arange(shape[2])[None, None, :]
    top, left, height, width, erases = (np.asarray(field)[:, None, None] for field in box)
    return (rows >= top) & (rows < top + height) & (columns >= left) & (columns < left + width) & erases


def torch_erase(image_hwc, top, left, height, width):
    """torchvision's functional erase with RandomErasing's default value (0), back to HWC."""
    value = torch.tensor([0.0])[:, None, None]
    erased = F.erase(torch.from_numpy(image_hwc.transpose(2, 0, 1).copy()), top, left, height, width, value)
    return erased.numpy().transpose(1, 2, 0)


# ---------------------------------------------------------------------------------------------
# The erase, given the box
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", SIZES)
def test_erase_is_torchvisions_erase_given_the_boxes(size):
    height, width = size
    rng = np.random.default_rng(1)
    # corners, single pixels, the largest box that fits, random boxes; the last two not erased
    boxes = [(0, 0, 3, 5, True), (height - 4, width - 2, 4, 2, True), (5, 7, 1, 1, True),
             (1, 1, height - 1, width - 1, True), (0, 0, height, width, False), (2, 3, 4, 4, False)]
    for _ in range(4):
        h, w = int(rng.integers(1, height)), int(rng.integers(1, width))
        boxes.append((int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w, True))
    images = normalized_images(len(boxes), size, seed=2)
    box = EraseBox(*(jnp.asarray(column) for column in zip(*boxes)))
    ours = np.asarray(jitted_erase(jnp.asarray(images), box))
    for image, theirs, (top, left, h, w, erases) in zip(images, ours, boxes):
        expected = torch_erase(image, top, left, h, w) if erases else image
        assert np.abs(theirs - expected).max() == 0, (top, left, h, w, erases)
        assert (theirs != image).sum() == (h * w * 3 if erases else 0)


# ---------------------------------------------------------------------------------------------
# The draws: replayed into torchvision, and distributed as its own
# ---------------------------------------------------------------------------------------------

LOG_RATIO = tuple(np.log(np.asarray(RATIO, np.float32)))  # float32, as torchvision's torch.log(torch.tensor(ratio))


class _ReplayedUniform:
    def __init__(self, queue):
        self.queue = queue

    def uniform_(self, low, high):
        value, bounds = self.queue.pop(0)
        # torch's uniform_ draws between float32 bounds
        assert (np.float32(low), np.float32(high)) == bounds, ((low, high), bounds)
        assert bounds[0] <= value < bounds[1], (value, bounds)
        return torch.tensor([value], dtype=torch.float32)


class ReplayedTorch:
    """Stands in for `torch` inside torchvision's RandomErasing: its random calls hand out one
    image's draws (the coin, then each attempt's area fraction and log aspect, then the box's row
    and column), each checked to be asked for with the range it was drawn in."""

    def __init__(self, draws: EraseDraws, index: int, scale):
        scale_bounds = tuple(np.float32(scale))
        self.coin = draws.coin[index]
        self.uniforms = []
        for fraction, log_aspect in zip(draws.area_fraction[index], draws.log_aspect[index]):
            self.uniforms += [(fraction, scale_bounds), (log_aspect, LOG_RATIO)]
        self.positions = [int(draws.box.top[index]), int(draws.box.left[index])]

    def __getattr__(self, name):
        return getattr(torch, name)

    def rand(self, *size):
        return torch.tensor([self.coin], dtype=torch.float32)

    def empty(self, *size, **kwargs):
        return _ReplayedUniform(self.uniforms)

    def randint(self, low, high, size):
        value = self.positions.pop(0)
        assert low <= value < high, (value, low, high)
        return torch.tensor([value])


def replayed(monkeypatch, draws: EraseDraws, index: int, scale, call):
    """`call()` while torchvision's random calls hand out image `index`'s draws: (its result, the
    replay, holding the draws it did not ask for)."""
    replay = ReplayedTorch(draws, index, scale)
    monkeypatch.setattr(_augment, "torch", replay)
    monkeypatch.setattr(_transform, "torch", replay)
    try:
        return call(), replay
    finally:
        monkeypatch.undo()


def float64_roots(draws: EraseDraws, size):
    """Every attempt's sqrt(area * aspect) and sqrt(area / aspect), computed as torchvision does, in
    float64: [2, n, ATTEMPTS]; and whether each attempt's rounded box fits, [n, ATTEMPTS]."""
    area = size[0] * size[1] * draws.area_fraction.astype(np.float64)
    aspect = np.exp(draws.log_aspect.astype(np.float64))
    roots = np.stack([np.sqrt(area * aspect), np.sqrt(area / aspect)])
    return roots, (np.round(roots[0]) < size[0]) & (np.round(roots[1]) < size[1])


def near_a_rounding_step(draws: EraseDraws, size) -> np.ndarray:
    """Per image: whether float32 could round one of the attempts torchvision looks at otherwise
    than its float64 does: a square root within a few float32 roundoffs of a half-integer."""
    roots, fits = float64_roots(draws, size)
    looked_at = np.where(fits.any(axis=1), np.argmax(fits, axis=1) + 1, ATTEMPTS)
    # Relative error of a root: the area and the product or quotient (1 roundoff each), two float32
    # exps (XLA's and torch's, within 2 ulps = 4 roundoffs each), halved by the root, plus the root's
    # own: 6 roundoffs. 16 leaves room.
    distance = np.abs(roots - (np.floor(roots) + 0.5))
    near = (distance <= 16 * FLOAT32_ROUNDOFF * roots) & (np.arange(ATTEMPTS) < looked_at[:, None])
    return near.any(axis=(0, 2))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_drawn_boxes_and_pixels_are_torchvisions_given_the_same_draws(monkeypatch, setting, size):
    count, probability = 300, 0.5  # the first 300 of the draws whose statistics are tested below
    draws = jax.tree.map(lambda field: field[:count], drawn(setting, size, seed=3, probability=probability))
    images = normalized_images(count, size, seed=4)
    ours = np.asarray(jitted_erase(jnp.asarray(images), draws.box))
    reference = T.RandomErasing(p=probability, **SETTINGS[setting])
    near = near_a_rounding_step(draws, size)
    _, fits = float64_roots(draws, size)
    scale = SETTINGS[setting]["scale"]
    for index in range(count):
        params, left_over = replayed(monkeypatch, draws, index, scale,
                                     lambda: reference.make_params([torch.zeros(3, *size)]))
        image = torch.from_numpy(images[index].transpose(2, 0, 1).copy())
        theirs, _ = replayed(monkeypatch, draws, index, scale, lambda: reference(image).numpy().transpose(1, 2, 0))

        box = draws.box
        top, left, height, width = (int(field[index]) for field in box[:4])
        # the rules, whatever the rounding
        assert 0 <= top and top + height <= size[0] and 0 <= left and left + width <= size[1]
        if draws.found[index]:
            assert height < size[0] and width < size[1]
        else:
            assert (top, left, height, width) == (0, 0, *size)
        assert box.erases[index] == (draws.found[index] and draws.coin[index] < probability)
        if near[index]:
            continue
        assert (params["i"], params["j"], params["h"], params["w"]) == (top, left, height, width), index
        assert (params["v"] is not None) == bool(draws.found[index]), index
        # torchvision stopped at the attempt that fitted, and placed the box only then
        attempts_looked_at = int(np.argmax(fits[index])) + 1 if draws.found[index] else ATTEMPTS
        assert len(left_over.uniforms) == 2 * (ATTEMPTS - attempts_looked_at), index
        assert len(left_over.positions) == (0 if draws.found[index] else 2), index
        assert np.abs(ours[index] - theirs).max() == 0, index
    # A root r falls that near a step with a chance of 32 r roundoffs, 2e-6 r: nearly every image is compared.
    assert near.sum() <= count // 100, f"{near.sum()} of {count} draws near a rounding step"
    # every case came up: not picked, picked and erased; crowded: a later attempt, no box at all
    assert (draws.coin >= probability).any() and draws.box.erases.any()
    if setting == "crowded":
        assert (~draws.found).any() and (draws.found & ~fits[:, 0]).any()


def torchvision_boxes(setting, size, count, seed):
    """(height, width, top, left, found) of `count` boxes drawn by torchvision's own sampler."""
    torch.manual_seed(seed)
    reference = T.RandomErasing(p=1.0, **SETTINGS[setting])
    image = torch.zeros(3, *size)
    rows = []
    for _ in range(count):
        params = reference.make_params([image])
        rows.append((params["h"], params["w"], params["i"], params["j"], params["v"] is not None))
    return np.array(rows, np.float64).T


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_uniform_draws_are_uniform_between_torchvisions_bounds(setting):
    """The coin, area fractions and log aspects: what torch's uniform_ draws between the same bounds."""
    draws = drawn(setting, (13, 17), seed=3)
    scale = SETTINGS[setting]["scale"]
    for name, ours, (low, high) in [("coin", draws.coin, (0.0, 1.0)), ("area_fraction", draws.area_fraction, scale),
                                    ("log_aspect", draws.log_aspect, LOG_RATIO)]:
        uniform = stats.uniform(float(low), float(high) - float(low))
        assert stats.kstest(ours.ravel().astype(np.float64), uniform.cdf).pvalue > SIGNIFICANCE, name


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_box_statistics_are_torchvisions_samplers(setting, size):
    draws = drawn(setting, size, seed=3)
    ours = np.stack([draws.box.height, draws.box.width, draws.box.top, draws.box.left, draws.found]).astype(float)
    theirs = torchvision_boxes(setting, size, DRAWS, seed=6)
    for name, a, b in zip(("height", "width", "top", "left", "found"), ours, theirs):
        if setting == "crowded" and name != "found":
            a, b = a[ours[4] == 1], b[theirs[4] == 1]  # the fitted boxes only
        # two independent samples of one distribution: the means differ by a few standard errors
        standard_error = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
        allowed = stats.norm.isf(SIGNIFICANCE / 2) * standard_error
        assert abs(a.mean() - b.mean()) <= allowed, (name, a.mean(), b.mean(), standard_error)
    # the corner's range is every position that keeps the box inside, both ends included
    height, width, top, left, _ = ours[:, ours[4] == 1]
    assert (top == 0).any() and (top + height == size[0]).any(), "no box at the top or bottom border"
    assert (left == 0).any() and (left + width == size[1]).any(), "no box at the left or right border"


# ---------------------------------------------------------------------------------------------
# The probability, and the place in the train transform
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("setting", list(SETTINGS))
def test_probability_zero_erases_nothing_and_one_every_image_with_a_box(setting):
    size, count = (13, 17), 300
    images = jnp.asarray(normalized_images(count, size, seed=7))
    for probability in (0.0, 1.0):
        draws = jax.tree.map(lambda field: field[:count], drawn(setting, size, seed=8, probability=probability))
        changed = np.asarray((jitted_erase(images, draws.box) != images).any(axis=(1, 2, 3)))
        expected = draws.found if probability else np.zeros(count, bool)
        np.testing.assert_array_equal(draws.box.erases, expected)
        np.testing.assert_array_equal(changed, expected)
    assert changed.any() and (setting == "defaults" or not changed.all())


def test_train_transform_erases_after_normalizing_and_keeps_the_crop_and_flip():
    pixels = jnp.asarray(np.random.default_rng(10).integers(0, 256, (16, 13, 17, 3), dtype=np.uint8))
    rng = jax.random.key(11)
    transform = jax.jit(train_transform, static_argnums=2)
    without = np.asarray(transform(rng, pixels, AugmentSpec(MEAN, STD, crop_padding=2, flip=True)))
    with_erasing = np.asarray(transform(rng, pixels, AugmentSpec(MEAN, STD, 2, True, random_erase=0.5)))
    box = jitted_draw(jax.random.fold_in(rng, ERASING_STREAM), count=16, image_size=(13, 17), probability=0.5).box
    inside = np.broadcast_to(box_mask(box, without.shape)[..., None], without.shape)
    assert inside.any() and not np.asarray(box.erases).all()
    # 0 after normalizing (erasing before it would leave -mean / std)
    assert np.all(with_erasing[inside] == 0)
    # Elsewhere the same crop and flip, normalized by another compiled program. A float32
    # (p / 255 - mean) / std is within 2u / std + 2u |value| of the exact one (u: the roundoff; p / 255
    # and the subtraction each off by u at most, the division, or a reciprocal and a product, by 2u
    # |value|), so two of them within twice that.
    bound = 4 * FLOAT32_ROUNDOFF * (1 / min(STD) + np.abs(without))
    assert np.all(np.abs(with_erasing - without)[~inside] <= bound[~inside])


# ---------------------------------------------------------------------------------------------
# The setting, and a short run in each trainer
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan"), True])
def test_a_probability_outside_zero_to_one_is_refused(value):
    with pytest.raises(ConfigError, match=r"random_erase must be a probability in \[0, 1\]"):
        validate(TrainConfig(random_erase=value))


def test_the_command_line_sets_it():
    parser = OneLineErrorParser()
    add_train_arguments(parser)
    assert config_from_args(parser.parse_args(["--random-erase", "0.25"])).random_erase == 0.25
    assert config_from_args(parser.parse_args([])).random_erase == 0.0


def test_erasing_runs_agree_between_the_frameworks(mnist_dir, tmp_path):
    flax_run = train(tiny(mnist_dir, tmp_path / "flax", epochs=2, random_erase=0.5))
    torch_run = train(tiny(mnist_dir, tmp_path / "torch", epochs=2, random_erase=0.5, framework="torch"))
    plain = train(tiny(mnist_dir, tmp_path / "plain", epochs=2))
    for ours, theirs, unerased in zip(torch_run.history, flax_run.history, plain.history):
        for key in ("train_loss", "test_loss"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-4), (ours["epoch"], key)
        # the erasing is no no-op: other pixels give another loss from the same start
        assert abs(theirs["train_loss"] - unerased["train_loss"]) > 1e-3 * unerased["train_loss"]
    recorded = json.loads((tmp_path / "flax" / "config.json").read_text())
    assert recorded["random_erase"] == 0.5 and recorded["augment"]["random_erase"] == 0.5
