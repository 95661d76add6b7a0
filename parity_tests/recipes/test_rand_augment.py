"""timm's RandAugment strings in PIL and numpy give timm's pixels: every op (through timm's
AugmentOp, prob 1) at magnitudes from 0 to past 10, both signs, bilinear and bicubic; whole
policies whose `random` and `np.random` calls are patched to be our Generator's; and the hparams
timm's train transform builds."""

from __future__ import annotations

import numpy as np
import pytest
import timm.data
import timm.data.auto_augment as timm_aa
from PIL import Image
from torchvision.transforms.v2 import functional as tvf

from flax_resnet.core.data import rand_augment
from flax_resnet.core.data.auto_augment import RESAMPLE
from flax_resnet.core.data.rand_augment import apply_timm_op, op_arguments, parse_rand_augment, train_hparams
from parity_tests.recipes.augment_images import max_diff, random_images

IMAGENET_MEAN = (0.485, 0.456, 0.406)
GRAY_MEAN = (0.449,)


def mean_for(image):
    return IMAGENET_MEAN if image.mode == "RGB" else GRAY_MEAN


def timm_hparams(hparams: rand_augment.TimmHparams) -> dict:
    """Ours as the dict timm's ops read."""
    timm = {"translate_const": hparams.translate_const, "translate_pct": hparams.translate_pct,
            "img_mean": hparams.fill}
    if hparams.interpolation is not None:
        timm["interpolation"] = RESAMPLE[hparams.interpolation]
    return timm


class FixedRandom:
    """timm's `random` for one op at prob 1: random() answers a fixed value (above 0.5 negates);
    the rest must not be called."""

    def __init__(self, value: float):
        self.value = value

    def random(self):
        return self.value

    def __getattr__(self, name):
        raise AssertionError(f"unexpected random.{name}")


def test_op_lists_are_timms():
    assert rand_augment.RAND_OPS == tuple(timm_aa._RAND_TRANSFORMS)
    assert rand_augment.INCREASING_OPS == tuple(timm_aa._RAND_INCREASING_TRANSFORMS)
    assert set(rand_augment.OPS) <= set(timm_aa.NAME_TO_OP)


def black_by_torchvision(image: Image.Image) -> Image.Image:
    """Posterize to 0 bits by torchvision's tensor kernel, where timm's PIL call (Pillow 13) raises."""
    tensor = tvf.pil_to_tensor(image)
    return tvf.to_pil_image(tvf.posterize(tensor, 0), mode=image.mode)


@pytest.mark.parametrize("op", rand_augment.OPS)
def test_every_op_gives_timms_arguments_and_pixels(monkeypatch, op):
    """timm's AugmentOp(op, prob=1) at magnitudes 0..10 (and 13 with mmax 15), sign drawn both
    ways, with the train transform's hparams, against our op_arguments and apply_timm_op."""
    geometric = op in rand_augment.GEOMETRIC_OPS
    for image in random_images():
        for interpolation in ("bilinear", "bicubic") if geometric else ("bilinear",):
            hparams = train_hparams((image.height, image.width), mean_for(image), interpolation)
            for magnitude, magnitude_max in [(0, None), (1.5, None), (4.7, None), (7, None), (9, None), (10, None),
                                             (13, 15)]:
                for negate in (False, True):
                    monkeypatch.setattr(timm_aa, "random", FixedRandom(0.75 if negate else 0.25))
                    reference = timm_aa.AugmentOp(op, prob=1.0, magnitude=magnitude,
                                                  hparams=timm_hparams(hparams) | {"magnitude_max": magnitude_max})
                    arguments = op_arguments(op, magnitude, negate, hparams)
                    assert arguments == (reference.level_fn(magnitude, reference.hparams)
                                         if reference.level_fn else ()), (op, magnitude, negate)
                    got = apply_timm_op(image, op, arguments, interpolation if geometric else None, hparams.fill)
                    if op.startswith("Posterize") and arguments[0] <= 0:
                        with pytest.raises(ValueError, match="bits"):
                            reference(image)
                        expected = black_by_torchvision(image)
                    else:
                        expected = reference(image)
                    assert max_diff(got, expected) <= 1, (op, magnitude, negate, image.mode, image.size, interpolation)


class TwinRandom:
    """timm's `random` module, drawing from a Generator seeded as ours is."""

    def __init__(self, twin: np.random.Generator):
        self.twin = twin

    def random(self):
        return self.twin.random()

    def gauss(self, mu, sigma):
        return self.twin.normal(mu, sigma)

    def uniform(self, low, high):
        return self.twin.uniform(low, high)

    def choice(self, choices):
        return choices[int(self.twin.integers(len(choices)))]


def patch_timm_random(monkeypatch, seed: int):
    twin = np.random.default_rng(seed)

    def choice(ops, size, replace=True, p=None):
        assert replace and p is None, (replace, p)
        return [ops[int(i)] for i in twin.integers(len(ops), size=size)]

    monkeypatch.setattr(timm_aa, "random", TwinRandom(twin))
    monkeypatch.setattr(timm_aa.np.random, "choice", choice)


def record_timm_ops(monkeypatch, references) -> list[list]:
    """[op, arguments, resample] for each op the timm policies apply, filled in as they run."""
    applied = []

    def recording(op):
        original = op.aug_fn

        def aug_fn(image, *arguments, **kwargs):
            applied.append([op.name, arguments, None])
            return original(image, *arguments, **kwargs)
        return aug_fn

    for reference in references:
        for op in reference.ops:
            op.aug_fn = recording(op)
    choose_interpolation = timm_aa._interpolation

    def interpolation(kwargs):
        applied[-1][2] = choose_interpolation(kwargs)
        return applied[-1][2]

    monkeypatch.setattr(timm_aa, "_interpolation", interpolation)
    return applied


CONFIGS = ["rand-m9-mstd0.5-inc1", "rand-m7-mstd0.5-inc1", "rand-m6-mstd0.5-inc1", "rand-m9-mstd0.5",
           "rand-m10-n3-p1.0-mstd1", "rand-m12-mmax15-mstd101-n4", "rand-m9-n1-p0.3-inc1"]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("interpolation", [None, "bicubic"])
def test_whole_policy_given_the_same_random_numbers_is_timms(monkeypatch, config, interpolation):
    """timm's rand_augment_transform, its random numbers drawn from a twin of our Generator,
    applies exactly the (op, arguments, interpolation) list our draw returns, and the same pixels.
    A draw that posterizes to 0 bits (timm raises on this Pillow) is checked against black."""
    ops_seen = set()
    images = random_images(seed=2)
    hparams = [train_hparams((image.height, image.width), mean_for(image), interpolation) for image in images]
    references = [timm_aa.rand_augment_transform(config, timm_hparams(h)) for h in hparams]
    applied = record_timm_ops(monkeypatch, references)
    for k, (image, reference) in enumerate(zip(images, references)):
        ours = parse_rand_augment(config, hparams[k])
        for seed in range(12):
            patch_timm_random(monkeypatch, seed + 1000 * k)
            applied.clear()
            draws = ours.draw(np.random.default_rng(seed + 1000 * k), image.width, image.height)
            zero_bits = any(op.startswith("Posterize") and args[0] <= 0 for op, args, _ in draws)
            if zero_bits:
                with pytest.raises(ValueError, match="bits"):
                    reference(image)
            else:
                expected = reference(image)
                assert max_diff(ours.apply(image, draws), expected) <= 1, (config, seed, draws)
            expected_draws = [(op, args, resample) for op, args, resample in applied]
            assert [(op, args, RESAMPLE[i] if i else None) for op, args, i in draws][:len(applied)] == expected_draws
            assert len(draws) == len(applied) or zero_bits
            ops_seen |= {op for op, _, _ in draws}
    assert len(ops_seen) >= 8, ops_seen


def test_hparams_are_those_of_timms_train_transform():
    """translate_const, the fill colour and the (random) interpolation timm's create_transform
    hands RandAugment, for a 3-channel and a 1-channel mean."""
    for size, mean in [(224, IMAGENET_MEAN), (176, IMAGENET_MEAN), (33, GRAY_MEAN)]:
        for interpolation in ("random", "bicubic"):
            transform = timm.data.create_transform(size, is_training=True, auto_augment="rand-m9-mstd0.5-inc1",
                                                   interpolation=interpolation, mean=mean, std=(0.2,) * len(mean))
            (policy,) = [t for t in transform.transforms if isinstance(t, timm_aa.RandAugment)]
            ours = train_hparams(size, mean, None if interpolation == "random" else interpolation)
            for op in policy.ops:
                assert op.hparams["translate_const"] == ours.translate_const
                assert op.kwargs["fillcolor"] == ours.fill
                expected = tuple(RESAMPLE[name] for name in rand_augment.RANDOM_INTERPOLATIONS)
                assert op.kwargs["resample"] == (expected if ours.interpolation is None
                                                 else RESAMPLE[ours.interpolation])
                assert op.hparams.get("translate_pct", 0.45) == ours.translate_pct


def test_draws_follow_the_string():
    """n ops chosen uniformly, each kept with probability p; magnitude noise of std mstd around m,
    clipped to [0, 10] (5-sigma bounds; Rotate's |degrees| / 3 is the magnitude)."""
    policy = parse_rand_augment("rand-m9-n3-p0.6-mstd0.5-inc1")
    rng = np.random.default_rng(0)
    n = 6000
    draws = [policy.draw(rng, 32, 32) for _ in range(n)]
    kept = sum(len(d) for d in draws)
    assert abs(kept - 0.6 * 3 * n) < 5 * np.sqrt(3 * n * 0.6 * 0.4)
    counts = [sum(op == name for d in draws for op, _, _ in d) for name in policy.ops]
    p = 1 / len(policy.ops)
    assert all(abs(c - kept * p) < 5 * np.sqrt(kept * p * (1 - p)) for c in counts), counts
    magnitudes = np.array([abs(args[0]) / 3 for d in draws for op, args, _ in d if op == "Rotate"])
    assert magnitudes.max() <= 10 and abs(magnitudes.mean() - 9.0) < 5 * 0.5 / np.sqrt(len(magnitudes))
    assert abs(magnitudes.std() - 0.5) < 0.05  # N(9, 0.5), its thin tail above 10 clipped
