"""MixUp and CutMix on the device are torchvision's v2 MixUp/CutMix and timm's Mixup ('batch'
mode), given the same draws: the same Beta sample, box centre and which-one choice are handed to
the references by replacing the random calls they make. Plus the draws' own distributions."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision.transforms.v2 as T
from scipy import stats
from timm.data.mixup import Mixup, cutmix_bbox_and_lam

from flax_resnet.core.config import ConfigError
from flax_resnet.training.mixing import MixDraws, draw_mixing, mix_batch

FLOAT32_EPS = float(np.finfo(np.float32).eps)
NUM_CLASSES = 10
DRAWS = 512  # per setting: one batch size, so jax.random.beta's sampler is compiled for it once


@functools.lru_cache(maxsize=None)
def _draw_many(count: int, seed: int, image_size, **settings):
    keys = jax.random.split(jax.random.key(seed), count)
    # Not jitted as a whole: op by op, jax.random.beta's own compiled sampler (the slow part to
    # compile) serves every alpha, mode and size; test_jitted_draws_are_the_same checks jit agrees.
    draws = jax.vmap(functools.partial(draw_mixing, image_size=image_size, **settings))(keys)
    return MixDraws(*(np.asarray(field) for field in draws))


def draw_many(seed, image_size, **settings) -> MixDraws:
    """DRAWS independent draws as numpy arrays, one row per draw."""
    return _draw_many(DRAWS, seed, tuple(image_size), **settings)


def one_draw(draws: MixDraws, index: int) -> MixDraws:
    return MixDraws(*(field[index] for field in draws))


EDGE_ALPHA = 0.05  # Beta(0.05, 0.05) puts many lams within 1e-7 of 1: empty boxes


def drawn_cases(seed, image_size, *, mixup_alpha, cutmix_alpha, **settings) -> list[tuple[float, float, MixDraws]]:
    """(mixup_alpha, cutmix_alpha, draw) covering each case: a MixUp, one with lam < 0.5; CutMix
    boxes touching each border, inside the image, empty; an unmixed batch when mix_prob < 1.
    Empty boxes come from draws with EDGE_ALPHA in place of the alphas."""
    height, width = image_size
    found = {}
    for alphas in [(mixup_alpha, cutmix_alpha), (mixup_alpha and EDGE_ALPHA, cutmix_alpha and EDGE_ALPHA)]:
        draws = draw_many(seed, image_size, mixup_alpha=alphas[0], cutmix_alpha=alphas[1], **settings)
        top, bottom, left, right = draws.box.T
        cut, mixup = draws.use_cutmix, draws.mixes & ~draws.use_cutmix
        area = (bottom - top) * (right - left)
        cases = {"not mixed": ~draws.mixes} if settings.get("mix_prob", 1.0) < 1 else {}
        if mixup_alpha:
            cases |= {"mixup": mixup, "mixup, lam < 0.5": mixup & (draws.lam < 0.5)}
        if cutmix_alpha:
            cases |= {"top": cut & (top == 0), "bottom": cut & (bottom == height), "left": cut & (left == 0),
                      "right": cut & (right == width), "empty": cut & (area == 0),
                      "inside": cut & (top > 0) & (bottom < height) & (left > 0) & (right < width)}
        for name, rows in cases.items():
            if name not in found and rows.any():
                found[name] = (*alphas, int(np.flatnonzero(rows)[0]), draws)
    missing = set(cases) - set(found)
    assert not missing, f"no draw for {missing}"
    unique = {(a, b, index): draws for a, b, index, draws in found.values()}
    return [(a, b, one_draw(draws, index)) for (a, b, index), draws in unique.items()]


class Replay:
    """Stands in for a reference's random call: hands out the given values in order, checking
    that the call asks for what the value stands for."""

    def __init__(self, name, expected_calls):
        self.name, self.calls = name, list(expected_calls)  # (expected args, value to return)

    def __call__(self, *args, **kwargs):
        assert self.calls, f"{self.name} called more often than drawn"
        expected, value = self.calls.pop(0)
        if expected is not None:
            assert args[:len(expected)] == expected, f"{self.name}{args}: expected {expected}"
        return value

    def check_used_up(self):
        assert not self.calls, f"{self.name}: {len(self.calls)} draws left over"


def float64_mix(images_nchw, labels, draw: MixDraws, partner_index, smoothing=0.0):
    """The mix in float64 (NCHW), from the draw's box and lam: the reference point for float32."""
    x = images_nchw.astype(np.float64)
    lam = float(draw.lam)
    if draw.use_cutmix:
        top, bottom, left, right = (int(v) for v in draw.box)
        lam = 1.0 - (bottom - top) * (right - left) / (x.shape[2] * x.shape[3])
        mixed = x.copy()
        mixed[:, :, top:bottom, left:right] = x[partner_index][:, :, top:bottom, left:right]
    else:
        mixed = lam * x + (1.0 - lam) * x[partner_index]
    off = smoothing / NUM_CLASSES
    own = np.where(labels[:, None] == np.arange(NUM_CLASSES), 1.0 - smoothing + off, off)
    return mixed, lam * own + (1.0 - lam) * own[partner_index]


def assert_float32_bounded(ours, reference32, reference64, what):
    """Our float32 error against the float64 result is within 10x the reference's own, plus an ulp."""
    ours_error = np.abs(np.asarray(ours, np.float64) - reference64).max()
    reference_error = np.abs(np.asarray(reference32, np.float64) - reference64).max()
    assert ours_error <= 10 * reference_error + FLOAT32_EPS * np.abs(reference64).max(), \
        f"{what}: ours {ours_error:.3g}, reference {reference_error:.3g}"


@functools.lru_cache(maxsize=None)
def jitted_mix(mode, label_smoothing):
    return jax.jit(functools.partial(mix_batch, mode=mode, num_classes=NUM_CLASSES, label_smoothing=label_smoothing))


def ours_nchw(images_nchw, labels, draw, mode, label_smoothing=0.0):
    images = jnp.asarray(images_nchw.transpose(0, 2, 3, 1))
    mixed, targets = jitted_mix(mode, label_smoothing)(images, jnp.asarray(labels), draw)
    return np.asarray(mixed).transpose(0, 3, 1, 2), np.asarray(targets)


def random_batch(shape, seed):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal(shape).astype(np.float32) * 2 + 0.3  # normalized pixels
    return images, rng.integers(0, NUM_CLASSES, shape[0])


# ---------------------------------------------------------------------------------------------
# The draws
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["torchvision", "timm"])
@pytest.mark.parametrize("mixup_alpha, cutmix_alpha, switch_prob, mix_prob",
                         [(0.2, 1.0, 0.5, 1.0), (1.0, 0.3, 0.3, 0.6)])
def test_draws_are_distributed_as_asked(mode, mixup_alpha, cutmix_alpha, switch_prob, mix_prob):
    count, image_size = DRAWS, (9, 14)
    draws = draw_many(1, image_size, mode=mode, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha,
                      switch_prob=switch_prob, mix_prob=mix_prob)
    cut = draws.use_cutmix
    assert np.all((draws.lam >= 0) & (draws.lam <= 1)) and np.all((draws.sample >= 0) & (draws.sample <= 1))
    top, bottom, left, right = draws.box.T.astype(np.int64)
    assert np.all((0 <= top) & (top <= bottom) & (bottom <= 9) & (0 <= left) & (left <= right) & (right <= 14))
    assert draws.centre[:, 0].min() == 0 and draws.centre[:, 0].max() == 8
    assert draws.centre[:, 1].min() == 0 and draws.centre[:, 1].max() == 13
    # CutMix's lam is the share of the image the box leaves uncovered
    uncovered = 1.0 - (bottom - top) * (right - left) / (9 * 14)
    np.testing.assert_allclose(draws.lam[cut], uncovered[cut], rtol=FLOAT32_EPS, atol=0)

    # Mixed with probability mix_prob; then CutMix with probability switch_prob (5 sigma bounds)
    mixed = draws.mixes
    np.testing.assert_array_equal(draws.lam[~mixed], 1.0)
    assert not cut[~mixed].any()
    for observed, p, n in [(mixed.sum(), mix_prob, count), (cut.sum(), switch_prob, mixed.sum())]:
        assert abs(observed - p * n) <= 5 * np.sqrt(n * p * (1 - p)) + 1
    # The Beta samples, per kind, against Beta(alpha, alpha)
    for rows, alpha in [(cut, cutmix_alpha), (mixed & ~cut, mixup_alpha)]:
        assert stats.kstest(draws.sample[rows], stats.beta(alpha, alpha).cdf).pvalue > 1e-4
    np.testing.assert_array_equal(draws.lam[mixed & ~cut], draws.sample[mixed & ~cut])


def test_jitted_draws_are_the_same():
    """The draws the tests check (vmapped, op by op) are those a jitted step makes."""
    settings = dict(image_size=(37, 53), mode="torchvision", mixup_alpha=0.2, cutmix_alpha=1.0)
    keys = jax.random.split(jax.random.key(1), DRAWS)
    jitted = jax.jit(functools.partial(draw_mixing, **settings))
    checked = draw_many(1, **settings)
    for index in range(0, DRAWS, DRAWS // 8):
        for field, expected in zip(jitted(keys[index]), one_draw(checked, index)):
            np.testing.assert_array_equal(np.asarray(field), expected)


def test_one_alpha_at_zero_turns_that_one_off():
    only_cutmix = draw_many(2, (8, 8), mode="torchvision", mixup_alpha=0.0, cutmix_alpha=1.0)
    only_mixup = draw_many(2, (8, 8), mode="timm", mixup_alpha=0.4, cutmix_alpha=0.0)
    assert only_cutmix.use_cutmix.all() and not only_mixup.use_cutmix.any()


@pytest.mark.parametrize("mode", ["torchvision", "timm"])
@pytest.mark.parametrize("image_size", [(37, 53), (32, 32), (1, 6)])
def test_cutmix_boxes_are_the_references_at_the_same_sample_and_centre(monkeypatch, mode, image_size):
    """The box side is the references' float64 step function of lam, even where float32 would round
    across a step: small alphas give samples within 1e-7 of 0 and 1 (checked to be among the draws)."""
    height, width = image_size
    draws = [draw_many(3, image_size, mode=mode, mixup_alpha=0.0, cutmix_alpha=alpha)
             for alpha in (0.05, 0.2, 1.0)]
    draws = MixDraws(*(np.concatenate(fields) for fields in zip(*draws)))
    assert (draws.sample < 1e-7).any() and (draws.sample > 1 - 1e-7).any() and (draws.sample == 1).any()
    for index in range(len(draws.sample)):
        draw = one_draw(draws, index)
        row, column = (int(v) for v in draw.centre)
        if mode == "torchvision":
            cutmix = T.CutMix(alpha=1.0, num_classes=NUM_CLASSES)
            monkeypatch.setattr(cutmix._dist, "sample", lambda shape=(): torch.tensor([draw.sample]))
            randint = Replay("torch.randint", [((width,), torch.tensor([column])), ((height,), torch.tensor([row]))])
            monkeypatch.setattr(torch, "randint", randint)
            params = cutmix.make_params([torch.zeros(2, 1, height, width)])
            left, top, right, bottom = params["box"]
            lam = params["lam_adjusted"]
        else:
            randint = Replay("np.random.randint", [((0, height), row), ((0, width), column)])
            monkeypatch.setattr(np.random, "randint", randint)
            (top, bottom, left, right), lam = cutmix_bbox_and_lam((2, 1, height, width), float(draw.sample))
        randint.check_used_up()
        assert tuple(draw.box) == (top, bottom, left, right), (index, float(draw.sample), draw.centre)
        assert draw.lam == np.float32(lam)


# ---------------------------------------------------------------------------------------------
# The mixed batch
# ---------------------------------------------------------------------------------------------

def assert_mix_is(ours, reference, draw, images, labels, partner_index, smoothing=0.0):
    (ours_images, ours_targets), (reference_images, reference_targets) = ours, reference
    images64, targets64 = float64_mix(images, labels, draw, partner_index, smoothing)
    assert ours_images.shape == reference_images.shape and ours_targets.shape == reference_targets.shape
    if draw.use_cutmix:  # pixels copied, not computed
        np.testing.assert_array_equal(ours_images, reference_images)
        np.testing.assert_array_equal(reference_images, images64.astype(np.float32))
    else:
        assert_float32_bounded(ours_images, reference_images, images64, "MixUp images")
    assert_float32_bounded(ours_targets, reference_targets, targets64, "targets")


@pytest.mark.parametrize("shape", [(2, 3, 37, 53), (5, 2, 16, 11)])
@pytest.mark.parametrize("mixup_alpha, cutmix_alpha", [(0.2, 1.0), (1.0, 0.0), (0.0, 0.5)])
def test_mixed_batch_is_torchvisions(monkeypatch, shape, mixup_alpha, cutmix_alpha):
    """torchvision's references/classification: RandomChoice over MixUp and CutMix (those with alpha > 0),
    on a normalized NCHW batch with int labels."""
    images, labels = random_batch(shape, seed=shape[0])
    image_size = shape[2:]
    cases = drawn_cases(4, image_size, mode="torchvision", mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha)
    mixup = T.MixUp(alpha=mixup_alpha or 1.0, num_classes=NUM_CLASSES)
    cutmix = T.CutMix(alpha=cutmix_alpha or 1.0, num_classes=NUM_CLASSES)
    choices = [t for t, alpha in [(mixup, mixup_alpha), (cutmix, cutmix_alpha)] if alpha > 0]
    reference = T.RandomChoice(choices)
    for _, _, draw in cases:  # the Beta sample is handed over, so the references' alphas do not matter
        chosen = cutmix if draw.use_cutmix else mixup
        monkeypatch.setattr(torch, "multinomial", Replay("torch.multinomial", [(None, torch.tensor([choices.index(chosen)]))]))
        monkeypatch.setattr(chosen._dist, "sample", lambda shape=(): torch.tensor([draw.sample]))
        row, column = (int(v) for v in draw.centre)
        randint = Replay("torch.randint", [((shape[3],), torch.tensor([column])), ((shape[2],), torch.tensor([row]))])
        monkeypatch.setattr(torch, "randint", randint)
        expected = reference(torch.from_numpy(images.copy()), torch.from_numpy(labels))
        if draw.use_cutmix:
            randint.check_used_up()
        ours = ours_nchw(images, labels, draw, "torchvision")
        assert_mix_is(ours, [t.numpy() for t in expected], draw, images, labels, np.roll(np.arange(shape[0]), 1))


@pytest.mark.parametrize("shape", [(2, 3, 37, 53), (6, 2, 16, 11)])
@pytest.mark.parametrize("mixup_alpha, cutmix_alpha, mix_prob, smoothing",
                         [(0.2, 1.0, 1.0, 0.1), (0.8, 1.0, 0.5, 0.0), (0.0, 0.5, 1.0, 0.1), (0.3, 0.0, 1.0, 0.1)])
def test_mixed_batch_is_timms(monkeypatch, shape, mixup_alpha, cutmix_alpha, mix_prob, smoothing):
    """timm's Mixup in 'batch' mode with label smoothing in the targets, on a normalized NCHW batch."""
    images, labels = random_batch(shape, seed=shape[0] + 1)
    image_size = shape[2:]
    switch_prob = 0.5
    cases = drawn_cases(5, image_size, mode="timm", mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha,
                        switch_prob=switch_prob, mix_prob=mix_prob)
    for case_mixup_alpha, case_cutmix_alpha, draw in cases:
        reference = Mixup(mixup_alpha=case_mixup_alpha, cutmix_alpha=case_cutmix_alpha, prob=mix_prob,
                          switch_prob=switch_prob, mode="batch", label_smoothing=smoothing, num_classes=NUM_CLASSES)
        mixes = bool(draw.mixes)
        uniforms = [(None, 0.0 if mixes else mix_prob)]  # np.random.rand() < prob: mix at all
        if mixes and mixup_alpha > 0 and cutmix_alpha > 0:  # np.random.rand() < switch_prob: CutMix
            uniforms.append((None, 0.0 if draw.use_cutmix else switch_prob))
        alpha = case_cutmix_alpha if draw.use_cutmix else case_mixup_alpha
        rand = Replay("np.random.rand", uniforms)
        beta = Replay("np.random.beta", [((alpha, alpha), np.float64(draw.sample))] if mixes else [])
        row, column = (int(v) for v in draw.centre)
        randint = Replay("np.random.randint", [((0, shape[2]), row), ((0, shape[3]), column)] if draw.use_cutmix else [])
        for name, replay in [("rand", rand), ("beta", beta), ("randint", randint)]:
            monkeypatch.setattr(np.random, name, replay)
        expected = reference(torch.from_numpy(images.copy()), torch.from_numpy(labels))
        for replay in (rand, beta, randint):
            replay.check_used_up()
        ours = ours_nchw(images, labels, draw, "timm", smoothing)
        assert_mix_is(ours, [t.numpy() for t in expected], draw, images, labels, np.arange(shape[0])[::-1], smoothing)


def test_mix_keeps_the_images_dtype_and_mixes_in_float32():
    images, labels = random_batch((4, 3, 8, 8), seed=7)
    draws = draw_many(6, (8, 8), mode="timm", mixup_alpha=1.0, cutmix_alpha=0.0)
    draw = one_draw(draws, 0)
    nhwc = jnp.asarray(images.transpose(0, 2, 3, 1))
    mixed16, targets = mix_batch(nhwc.astype(jnp.bfloat16), jnp.asarray(labels), draw, "timm", num_classes=NUM_CLASSES)
    mixed32, _ = mix_batch(nhwc.astype(jnp.bfloat16).astype(jnp.float32), jnp.asarray(labels), draw, "timm",
                           num_classes=NUM_CLASSES)
    assert mixed16.dtype == jnp.bfloat16 and targets.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(mixed16), np.asarray(mixed32.astype(jnp.bfloat16)))


def test_bad_settings_say_what_is_valid():
    key = jax.random.key(0)
    with pytest.raises(ConfigError, match="torchvision, timm"):
        draw_mixing(key, (8, 8), mode="fastai", mixup_alpha=1.0, cutmix_alpha=1.0)
    with pytest.raises(ConfigError, match="one > 0"):
        draw_mixing(key, (8, 8), mode="timm", mixup_alpha=0.0, cutmix_alpha=0.0)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        draw_mixing(key, (8, 8), mode="timm", mixup_alpha=1.0, cutmix_alpha=1.0, mix_prob=1.5)
    draw = one_draw(draw_many(6, (8, 8), mode="timm", mixup_alpha=1.0, cutmix_alpha=0.0), 0)
    with pytest.raises(ConfigError, match="even batch"):
        mix_batch(jnp.zeros((3, 8, 8, 1)), jnp.zeros(3, jnp.int32), draw, "timm", num_classes=NUM_CLASSES)
