"""The host transforms give torchvision's pixels: eval Resize + CenterCrop, the train crop and flip,
and the mode conversions, on files of mixed modes and sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F
from scipy import stats
from torchvision.datasets.folder import pil_loader

from flax_resnet.core.data.transforms import HostTransforms, decode_image, random_resized_crop_box
from parity_tests.helpers.image_trees import MODES, random_image, save

SIZES = [(500, 375), (375, 500), (37, 61), (224, 224), (255, 257), (12, 9)]  # landscape, portrait, odd, tiny


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One file per (mode, size): JPEG where the mode allows it, PNG or TIFF otherwise."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    suffix = {"RGB": ".jpg", "CMYK": ".jpg", "L": ".jpg", "I;16": ".tif"}
    return [save(random_image(rng, mode, w, h), root / f"{mode.replace(';', '')}_{w}x{h}{suffix.get(mode, '.png')}")
            for mode in MODES for w, h in SIZES]


def torchvision_tensor(image) -> np.ndarray:
    return T.PILToTensor()(image).permute(1, 2, 0).numpy()


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("size, fraction", [(224, 0.875), (32, 0.875), (33, 1.0), (20, 0.6)])
def test_eval_transform_is_torchvisions_resize_and_center_crop(files, channels, size, fraction):
    ours = HostTransforms(size=size, channels=channels, crop_fraction=fraction)
    gray = [T.Grayscale(1)] if channels == 1 else []  # first, as a 1-channel pipeline converts on loading
    reference = T.Compose(gray + [T.Resize(round(size / fraction)), T.CenterCrop(size)])
    for path in files:
        expected = torchvision_tensor(reference(pil_loader(path)))
        got = ours.eval(decode_image(path))
        assert got.dtype == np.uint8 and got.shape == (size, size, channels) == expected.shape, path.name
        assert np.abs(got.astype(int) - expected).max() <= 1, path.name


@pytest.mark.parametrize("channels", [3, 1])
def test_train_transform_is_torchvisions_resized_crop_and_flip_at_the_same_draws(files, channels):
    """Given the same crop box and flip, the pixels are torchvision's resized_crop and hflip."""
    ours = HostTransforms(size=24, channels=channels, crop_scale=(0.08, 1.0))
    flips = 0
    for k, path in enumerate(files):
        image = pil_loader(path)
        if channels == 1:
            image = F.to_grayscale(image)
        got = ours.train(decode_image(path), np.random.default_rng(k))
        replay = np.random.default_rng(k)  # the same draws, in the same order
        top, left, h, w = random_resized_crop_box(replay, image.width, image.height)
        expected = F.resized_crop(image, top, left, h, w, [24, 24], antialias=True)
        if replay.random() < 0.5:
            expected, flips = F.hflip(expected), flips + 1
        assert np.array_equal(got, torchvision_tensor(expected)), path.name
    assert 0 < flips < len(files)


def test_crop_boxes_follow_torchvisions_distribution():
    """Area fraction and aspect ratio of the boxes against torchvision's own get_params (two-sample
    Kolmogorov-Smirnov, fixed seeds), and the central fallback for extreme shapes."""
    width, height, draws = 500, 375, 3000
    rng = np.random.default_rng(0)
    ours = np.array([random_resized_crop_box(rng, width, height) for _ in range(draws)])
    torch.manual_seed(0)
    canvas = torch.zeros(1, height, width)
    theirs = np.array([T.RandomResizedCrop.get_params(canvas, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(draws)])
    for boxes in (ours, theirs):
        top, left, h, w = boxes.T
        assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()
    for feature in (lambda b: b[:, 2] * b[:, 3] / (width * height), lambda b: b[:, 3] / b[:, 2],
                    lambda b: b[:, 0] / (height - b[:, 2] + 1), lambda b: b[:, 1] / (width - b[:, 3] + 1)):
        assert stats.ks_2samp(feature(ours), feature(theirs)).pvalue > 1e-3
    for shape in ((1000, 10), (10, 1000)):  # no crop of that area fits: both fall back to the same centred box
        torch_box = T.RandomResizedCrop.get_params(torch.zeros(1, shape[1], shape[0]), [0.99, 1.0], [3 / 4, 4 / 3])
        assert random_resized_crop_box(rng, *shape, scale=(0.99, 1.0)) == tuple(torch_box)


@pytest.mark.parametrize("mode", MODES)
def test_modes_convert_as_torchvisions_loader(tmp_path, mode):
    suffix = {"I;16": ".tif", "CMYK": ".jpg"}.get(mode, ".png")
    path = save(random_image(np.random.default_rng(3), mode, 21, 13), tmp_path / f"x{suffix}")
    rgb = HostTransforms(size=13, channels=3, crop_fraction=1.0).eval(decode_image(path))
    gray = HostTransforms(size=13, channels=1, crop_fraction=1.0).eval(decode_image(path))
    reference = pil_loader(path)  # convert("RGB"), as ImageFolder loads
    expected = torchvision_tensor(F.center_crop(reference, [13, 13]))
    assert np.array_equal(rgb, expected)
    assert np.array_equal(gray, torchvision_tensor(F.center_crop(F.to_grayscale(reference), [13, 13])))


def test_decoded_arrays_give_the_same_pixels_as_their_files(files):
    """tfds hands over decoded arrays (HWC, or HW1 for gray): the same result as the file."""
    transforms = HostTransforms(size=16, channels=3)
    for path in files[:6]:
        array = np.asarray(pil_loader(path))
        assert np.array_equal(transforms.eval(decode_image(array)), transforms.eval(decode_image(path)))
    gray = np.asarray(pil_loader(files[0]).convert("L"))[..., None]
    assert decode_image(gray).mode == "L"
