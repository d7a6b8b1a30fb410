"""Tests for augment.data.phantom: contracts, determinism, label draws and lesion geometry."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from augment.data.phantom import (
    DEFAULT_PRIORS,
    PHANTOM_CLASSES,
    phantom_labels,
    phantom_pair,
    phantom_pairs,
)


def _ellipse_fill(mask: np.ndarray) -> float:
    """Mask area over the area of the ellipse with the same second moments.

    1.0 for a filled ellipse (at any orientation and aspect); lobes and spikes spread the moments
    more than they add area, so irregular shapes score lower. Robust on pixel grids, unlike a
    perimeter count.
    """
    ys, xs = np.nonzero(mask)
    cov = np.cov(np.stack([ys, xs]).astype(np.float64))
    return mask.sum() / (4 * np.pi * np.sqrt(np.linalg.det(cov)))


def test_public_constants():
    assert PHANTOM_CLASSES == {0: "normal", 1: "round", 2: "irregular"}
    assert DEFAULT_PRIORS == (0.5, 0.35, 0.15)


@pytest.mark.parametrize("size", [8, 16, 64])
@pytest.mark.parametrize("rgb", [False, True])
def test_shapes_and_dtypes(size, rgb):
    for label in PHANTOM_CLASSES:
        image, mask = phantom_pair(index=3, label=label, image_size=size, seed=1, rgb=rgb)
        assert image.shape == ((size, size, 3) if rgb else (size, size))
        assert image.dtype == np.uint8
        assert mask.shape == (size, size)
        assert mask.dtype == np.uint8


def test_rgb_is_a_tinted_grey_scan():
    grey, _ = phantom_pair(5, 2, 64, seed=0)
    rgb, _ = phantom_pair(5, 2, 64, seed=0, rgb=True)
    channels = rgb.astype(np.int16)
    # One scan with a faint colour cast: channels nearly equal, and close to the grey version.
    assert np.abs(channels - channels.mean(axis=2, keepdims=True)).max() <= 16
    assert np.abs(channels.mean(axis=2) - grey).mean() < 8


def test_determinism():
    a_img, a_mask = phantom_pair(7, 2, 32, seed=4)
    b_img, b_mask = phantom_pair(7, 2, 32, seed=4)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_mask, b_mask)
    assert not np.array_equal(a_img, phantom_pair(7, 2, 32, seed=5)[0])
    assert not np.array_equal(a_img, phantom_pair(8, 2, 32, seed=4)[0])


def test_pair_regenerates_alone():
    items = list(phantom_pairs(6, image_size=16, seed=9))
    image, mask = phantom_pair(4, items[4][2], 16, seed=9)
    np.testing.assert_array_equal(image, items[4][0])
    np.testing.assert_array_equal(mask, items[4][1])


@pytest.mark.parametrize("size", [8, 16, 64])
def test_masks_by_class(size):
    for index in range(6):
        assert not phantom_pair(index, 0, size, seed=2)[1].any()
        for label in (1, 2):
            mask = phantom_pair(index, label, size, seed=2)[1]
            assert set(np.unique(mask).tolist()) <= {0, 1}
            assert mask.sum() >= 3


def test_uses_much_of_the_grey_range():
    image, _ = phantom_pair(0, 1, 64, seed=0)
    low, high = np.percentile(image, [2, 98])
    assert high - low > 100
    assert 30 < image.mean() < 200


@pytest.mark.parametrize("label", [1, 2])
def test_lesion_is_hypoechoic(label):
    for index in range(10):
        image, mask = phantom_pair(index, label, 64, seed=3)
        inside = mask.astype(bool)
        ring = ndimage.binary_dilation(inside, iterations=3) & ~inside
        assert image[inside].mean() < image[ring].mean() - 10


def test_irregular_less_round_and_larger_than_round():
    round_masks = [phantom_pair(i, 1, 64, seed=0)[1] for i in range(30)]
    irregular_masks = [phantom_pair(i, 2, 64, seed=0)[1] for i in range(30)]
    round_fill = np.mean([_ellipse_fill(m) for m in round_masks])
    irregular_fill = np.mean([_ellipse_fill(m) for m in irregular_masks])
    assert round_fill > 0.97
    assert irregular_fill < round_fill - 0.03
    assert np.mean([m.sum() for m in irregular_masks]) > np.mean([m.sum() for m in round_masks])


def test_labels_deterministic_and_typed():
    a = phantom_labels(50, seed=11)
    assert a.shape == (50,) and a.dtype == np.int64
    np.testing.assert_array_equal(a, phantom_labels(50, seed=11))
    assert not np.array_equal(a, phantom_labels(50, seed=12))


def test_labels_every_class_present():
    for seed in range(100):
        labels = phantom_labels(3, seed=seed, priors=(0.9, 0.09, 0.01))
        assert sorted(labels.tolist()) == [0, 1, 2]
        assert set(phantom_labels(5, seed=seed).tolist()) == {0, 1, 2}


def test_labels_follow_priors():
    labels = phantom_labels(3000, seed=0)
    freq = np.bincount(labels, minlength=3) / labels.size
    np.testing.assert_allclose(freq, DEFAULT_PRIORS, atol=0.03)
    # Unnormalised priors are normalised.
    freq = np.bincount(phantom_labels(3000, seed=1, priors=(2, 1, 1)), minlength=3) / 3000
    np.testing.assert_allclose(freq, (0.5, 0.25, 0.25), atol=0.03)


def test_labels_respect_zero_prior():
    labels = phantom_labels(500, seed=0, priors=(0.5, 0.0, 0.5))
    assert set(labels.tolist()) == {0, 2}
    assert set(phantom_labels(2, seed=0, priors=(0.0, 0.0, 1.0)).tolist()) == {2}


def test_pairs_match_labels():
    items = list(phantom_pairs(7, image_size=8, seed=5, priors=(0.2, 0.4, 0.4)))
    assert len(items) == 7
    expected = phantom_labels(7, seed=5, priors=(0.2, 0.4, 0.4)).tolist()
    assert [label for _, _, label in items] == expected
    for image, mask, label in items:
        assert image.shape == mask.shape == (8, 8)
        assert bool(mask.any()) == (label != 0)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: phantom_pair(0, 1, image_size=4), "image_size"),
        (lambda: phantom_pair(0, 3), "label"),
        (lambda: phantom_pair(0, -1), "label"),
        (lambda: phantom_pair(-1, 1), "index"),
        (lambda: phantom_pair(0, 1, seed=-2), "seed"),
        (lambda: phantom_labels(0), "count"),
        (lambda: phantom_labels(5, priors=(0.5, -0.1, 0.6)), "priors"),
        (lambda: phantom_labels(5, priors=(0.5, 0.5)), "priors"),
        (lambda: phantom_labels(5, priors=(0.0, 0.0, 0.0)), "priors"),
        (lambda: phantom_pairs(0), "count"),
        (lambda: phantom_pairs(3, image_size=7), "image_size"),
        (lambda: phantom_pairs(3, priors=(1, 1, 1, 1)), "priors"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(call, name):
    with pytest.raises(ValueError, match=name):
        call()
