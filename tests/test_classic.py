"""Classic paired augmentation: masks follow the image, classes are never blended, seeds repeat."""

from __future__ import annotations

import numpy as np

from augment.classic import ClassicConfig, classic_transform


def _pair():
    image = np.zeros((32, 32), np.uint8)
    image[8:20, 4:14] = 200
    mask = (image > 0).astype(np.uint8)
    return image, mask


def test_geometry_moves_image_and_mask_together():
    cfg = ClassicConfig(elastic=0, brightness_contrast=0, noise=0, affine=1.0)
    t = classic_transform(cfg, seed=0)
    for _ in range(10):
        image, mask = t(*_pair())
        assert image.shape == (32, 32) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 1}  # nearest: no blended class values
        inside = image[mask == 1].astype(float).mean() if mask.any() else 200
        outside = image[mask == 0].astype(float).mean()
        assert inside > 150 and outside < 30


def test_same_seed_same_augmentations_and_no_vertical_flip_by_default():
    a, b = classic_transform(seed=3), classic_transform(seed=3)
    for _ in range(5):
        ia, ma = a(*_pair())
        ib, mb = b(*_pair())
        assert np.array_equal(ia, ib) and np.array_equal(ma, mb)
    only_flips = classic_transform(ClassicConfig(affine=0, elastic=0, brightness_contrast=0, noise=0, horizontal_flip=0), seed=0)
    image, mask = _pair()
    out, out_mask = only_flips(image, mask)
    assert np.array_equal(out, image) and np.array_equal(out_mask, mask)


def test_rgb_and_image_only():
    t = classic_transform(seed=1)
    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    out, none = t(rgb, None)
    assert out.shape == (16, 16, 3) and none is None
