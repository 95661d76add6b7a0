"""make_policy: the names it knows, one-line errors for the ones it does not, no torch or JAX on
import; and the streamed loader's train transform with a policy after its crop and flip."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from flax_resnet.core.data.auto_augment import AugmentPolicyError, AutoAugment, RandAugment, TrivialAugmentWide
from flax_resnet.core.data.policies import AUTO_AUGMENT_NAMES, make_policy
from flax_resnet.core.data.rand_augment import INCREASING_OPS, TimmRandAugment
from flax_resnet.core.data.transforms import HostTransforms
from parity_tests.recipes.augment_images import random_images


def test_names_give_their_policies():
    assert make_policy(None, None, image_size=32) is None
    assert make_policy("ta_wide", image_size=32) == TrivialAugmentWide()
    assert make_policy("ra", image_size=32, interpolation="bilinear") == RandAugment(interpolation="bilinear")
    for name in ("imagenet", "cifar10", "svhn"):
        assert make_policy(name, image_size=32) == AutoAugment(policy=name)
    timm = make_policy(None, "rand-m9-mstd0.5-inc1", image_size=224, mean=(0.485, 0.456, 0.406))
    assert isinstance(timm, TimmRandAugment) and timm.ops == INCREASING_OPS
    assert (timm.magnitude, timm.magnitude_std, timm.num_layers, timm.prob) == (9, 0.5, 2, 0.5)
    assert timm.hparams.translate_const == 100 and timm.hparams.fill == (124, 116, 104)
    assert make_policy(None, "rand-m9", image_size=32, fill=7).hparams.fill == 7
    assert "rand-m9-mstd0.5-inc1" in timm.describe() and "TrivialAugmentWide" in TrivialAugmentWide().describe()


@pytest.mark.parametrize("kwargs, closest", [
    ({"auto_augment": "ta-wide"}, "ta_wide"),
    ({"auto_augment": "imagenett"}, "imagenet"),
    ({"auto_augment": "ra", "interpolation": "bilnear"}, "bilinear"),
    ({"rand_augment": "rand-m9-x3"}, None),
    ({"rand_augment": "original-mstd0.5"}, None),
    ({"rand_augment": "rand-m9-tweights"}, None),
    ({"rand_augment": "rand-m9.5"}, None),
    ({"auto_augment": "ta_wide", "rand_augment": "rand-m9"}, None),
])
def test_bad_names_raise_one_line_listing_the_valid_ones(kwargs, closest):
    with pytest.raises(AugmentPolicyError) as error:
        make_policy(image_size=32, **kwargs)
    message = str(error.value)
    assert isinstance(error.value, ValueError) and "\n" not in message
    if closest is not None:
        valid = message.split("valid: ")[1].split(", ")
        assert valid[0] == closest, message
        if "auto_augment" in kwargs and "interpolation" not in kwargs:
            assert sorted(valid) == sorted(AUTO_AUGMENT_NAMES)
    elif "rand_augment" in kwargs and "auto_augment" not in kwargs:
        assert "m<magnitude>" in message, message  # the sections timm's strings have


def test_the_policy_modules_import_neither_torch_nor_jax():
    code = ("import sys; import flax_resnet.core.data.policies, flax_resnet.core.data.auto_augment, "
            "flax_resnet.core.data.rand_augment; "
            "print(sorted(m for m in ('torch', 'jax', 'flax', 'torchvision', 'timm') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


@pytest.mark.parametrize("channels", [3, 1])
def test_host_train_transform_applies_the_policy_after_crop_and_flip_from_its_own_stream(channels):
    """The crop and flip are those of the transform without a policy (same example seed); the
    policy then runs on that image with a Generator spawned from the example's."""
    plain = HostTransforms(size=24, channels=channels)
    mean = (0.485, 0.456, 0.406)[:channels] if channels == 3 else (0.449,)
    for policy in (make_policy("ta_wide", image_size=24), make_policy("imagenet", image_size=24),
                   make_policy(None, "rand-m9-mstd0.5-inc1", image_size=24, mean=mean)):
        augmented = HostTransforms(size=24, channels=channels, policy=policy)
        assert pickle.loads(pickle.dumps(augmented)) == augmented  # loader workers get a copy
        changed = 0
        for k, image in enumerate(random_images(seed=3)):
            got = augmented.train(image, np.random.default_rng([7, k]))
            cropped = plain.train(image, np.random.default_rng([7, k]))
            expected = policy(Image.fromarray(cropped.squeeze(-1) if channels == 1 else cropped),
                              np.random.default_rng([7, k]).spawn(1)[0])
            expected = np.asarray(expected, np.uint8).reshape(cropped.shape)
            assert got.shape == (24, 24, channels) and got.dtype == np.uint8
            np.testing.assert_array_equal(got, expected)
            changed += not np.array_equal(got, cropped)
        assert changed >= 1, policy  # the policy did something to some image
        assert policy.describe() in augmented.describe()["train"]
    assert plain.policy is None and "Augment" not in plain.describe()["train"]
