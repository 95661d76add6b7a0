"""torchvision's policies in PIL and numpy give torchvision.transforms.v2's pixels: every op at
every bin of every table, both signs, and whole policies whose torch random numbers are patched
to be our Generator's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import AutoAugmentPolicy, InterpolationMode

from flax_resnet.core.data import auto_augment
from flax_resnet.core.data.auto_augment import (
    AutoAugment,
    RandAugment,
    TrivialAugmentWide,
    apply_op,
    magnitude_bins,
    sub_policies,
)
from parity_tests.recipes.augment_images import FILLS, max_diff, random_images

INTERPOLATIONS = {"nearest": InterpolationMode.NEAREST, "bilinear": InterpolationMode.BILINEAR}


def reference_tables(op):
    """(num_bins, wide, torchvision's table function) for each table the op has in torchvision."""
    spaces = [(10, False, v2.AutoAugment._AUGMENTATION_SPACE), (31, False, v2.RandAugment._AUGMENTATION_SPACE),
              (31, True, v2.TrivialAugmentWide._AUGMENTATION_SPACE)]
    return [(bins, wide, space[op][0]) for bins, wide, space in spaces if op in space]


def test_op_lists_and_sub_policies_are_torchvisions():
    assert auto_augment.RANDOM_OPS == tuple(v2.RandAugment._AUGMENTATION_SPACE)
    assert auto_augment.RANDOM_OPS == tuple(v2.TrivialAugmentWide._AUGMENTATION_SPACE)
    assert set(auto_augment.OPS) == set(v2.RandAugment._AUGMENTATION_SPACE) | set(v2.AutoAugment._AUGMENTATION_SPACE)
    for name in auto_augment.AUTO_AUGMENT_POLICIES:
        expected = v2.AutoAugment(AutoAugmentPolicy(name))._policies
        assert sub_policies(name) == tuple(tuple(sub) for sub in expected), name


@pytest.mark.parametrize("num_bins", [31, 10, 9])
def test_magnitude_tables_are_torchvisions_to_the_bit(num_bins):
    """torch.linspace's float32 values, bit for bit, at odd and even image sizes."""
    spaces = {False: v2.RandAugment._AUGMENTATION_SPACE | v2.AutoAugment._AUGMENTATION_SPACE,
              True: v2.TrivialAugmentWide._AUGMENTATION_SPACE}
    for wide, space in spaces.items():
        for op, (table, signed) in space.items():
            for width, height in [(37, 53), (64, 48), (224, 224), (331, 500)]:
                expected = table(num_bins, height, width)
                got = magnitude_bins(op, num_bins, width, height, wide=wide)
                assert (got is None) == (expected is None), op
                if got is not None:
                    assert got == tuple(float(value) for value in expected), (op, wide, width, height)
            assert (op in auto_augment._SIGNED) == signed, op


@pytest.mark.parametrize("op", auto_augment.OPS)
def test_every_op_at_every_magnitude_gives_torchvisions_pixels(op):
    """Each op through torchvision's own op step (`_apply_image_or_video_transform`, what its
    policies call) at every bin of each of its tables, negated too, with the default fill and a
    coloured one, and for the geometric ops nearest and bilinear sampling."""
    worst = 0
    for image in random_images():
        width, height = image.size
        magnitudes = {0.0} if op in auto_augment._NO_MAGNITUDE else set()
        for num_bins, wide, _ in reference_tables(op):
            bins = magnitude_bins(op, num_bins, width, height, wide=wide) or ()
            magnitudes |= set(bins) | ({-m for m in bins} if op in auto_augment._SIGNED else set())
        geometric = op in auto_augment.GEOMETRIC_OPS
        for interpolation in INTERPOLATIONS if geometric else ["nearest"]:
            for fill in [None, FILLS[image.mode]] if geometric else [None]:
                reference = v2.TrivialAugmentWide(interpolation=INTERPOLATIONS[interpolation], fill=fill)
                for magnitude in sorted(magnitudes):
                    expected = reference._apply_image_or_video_transform(
                        image, op, magnitude, interpolation=reference.interpolation, fill=reference._fill)
                    got = apply_op(image, op, magnitude, interpolation=interpolation, fill=fill)
                    worst = max(worst, max_diff(got, expected))
                    assert worst <= 1, (op, magnitude, image.mode, image.size, interpolation, fill)


def twin_torch_random(monkeypatch, seed: int):
    """torch.randint(n, ()) and torch.rand(()) patched to draw from a Generator seeded as ours is."""
    twin = np.random.default_rng(seed)

    def randint(high, size):
        assert size == (), size
        return torch.tensor(int(twin.integers(high)))

    def rand(size):
        assert size == (), size
        return torch.tensor(twin.random(), dtype=torch.float32)

    monkeypatch.setattr(torch, "randint", randint)
    monkeypatch.setattr(torch, "rand", rand)


def recorded_ops(monkeypatch, reference) -> list[tuple[str, float]]:
    """The (op, magnitude) list the reference policy applies, filled in as it runs."""
    applied = []
    original = reference._apply_image_or_video_transform

    def record(image, op, magnitude, **kwargs):
        applied.append((op, magnitude))
        return original(image, op, magnitude, **kwargs)

    monkeypatch.setattr(reference, "_apply_image_or_video_transform", record)
    return applied


POLICIES = {
    "ta_wide": (TrivialAugmentWide(), v2.TrivialAugmentWide()),
    "ra": (RandAugment(), v2.RandAugment()),
    "ra_n3_m15_bilinear_fill": (RandAugment(num_ops=3, magnitude=15, interpolation="bilinear", fill=(10, 200, 77)),
                                v2.RandAugment(num_ops=3, magnitude=15, interpolation=InterpolationMode.BILINEAR,
                                               fill=[10, 200, 77])),
    **{name: (AutoAugment(policy=name), v2.AutoAugment(AutoAugmentPolicy(name)))
       for name in auto_augment.AUTO_AUGMENT_POLICIES},
}


@pytest.mark.parametrize("name", POLICIES)
def test_whole_policy_given_the_same_random_numbers_is_torchvisions(monkeypatch, name):
    """torchvision's policy, its torch random numbers drawn from a twin of our Generator, applies
    exactly the (op, magnitude) list our draw returns, and our pixels are its pixels."""
    ours, reference = POLICIES[name]
    applied = recorded_ops(monkeypatch, reference)
    ops_seen = set()
    for k, image in enumerate(random_images(seed=1)):
        if name == "ra_n3_m15_bilinear_fill" and image.mode == "L":
            continue  # a three-value fill is for RGB images
        for seed in range(40):
            twin_torch_random(monkeypatch, seed + 1000 * k)
            applied.clear()
            expected = reference(image)
            rng = np.random.default_rng(seed + 1000 * k)
            draws = ours.draw(rng, image.width, image.height)
            assert draws == applied, (name, seed, image.mode, image.size)
            assert max_diff(ours.apply(image, draws), expected) <= 1, (name, seed, draws)
            ops_seen |= {op for op, _ in draws}
    assert len(ops_seen) >= 8, ops_seen  # the comparison covered many ops, not one lucky path


def test_draws_are_uniform_over_ops_and_signs():
    """TrivialAugmentWide picks each op with probability 1/14 and negates a signed op half the time;
    AutoAugment applies each op as often as its probabilities in the table say (5-sigma bounds)."""
    rng = np.random.default_rng(0)
    n = 14000
    draws = [TrivialAugmentWide().draw(rng, 32, 32)[0] for _ in range(n)]
    counts = {op: sum(d[0] == op for d in draws) for op in auto_augment.RANDOM_OPS}
    p = 1 / len(auto_augment.RANDOM_OPS)
    assert all(abs(c - n * p) < 5 * np.sqrt(n * p * (1 - p)) for c in counts.values()), counts
    signed = [m for op, m in draws if op in auto_augment._SIGNED and m != 0]
    assert abs(np.mean(np.array(signed) < 0) - 0.5) < 5 * 0.5 / np.sqrt(len(signed))

    policy = AutoAugment()
    expected = {}
    for sub in sub_policies("imagenet"):
        for op, probability, _ in sub:
            expected[op] = expected.get(op, 0.0) + probability / len(sub_policies("imagenet"))
    applied = [op for _ in range(n) for op, _ in policy.draw(rng, 32, 32)]
    for op, rate in expected.items():
        count = applied.count(op)
        assert abs(count - n * rate) < 5 * np.sqrt(2 * n * rate) + 1, (op, count, n * rate)
