"""Mask jitter for mask-conditioned sampling, and the per-item categorical sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from augment.generators.base import categorical
from augment.masks import JitterConfig, jitter_mask


def _lesion(size=32):
    m = np.zeros((size, size), np.uint8)
    m[10:20, 8:16] = 1
    m[12:14, 9:11] = 2
    return m


def test_jitter_is_a_pure_function_of_the_seed():
    m = _lesion()
    a, b, c = jitter_mask(m, JitterConfig(), 5), jitter_mask(m, JitterConfig(), 5), jitter_mask(m, JitterConfig(), 6)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.shape == m.shape and a.dtype == m.dtype
    assert set(np.unique(a)) <= {0, 1, 2}  # nearest neighbour: class indices stay class indices


def test_no_jitter_is_the_identity_and_flip_is_exact():
    m = _lesion()
    off = JitterConfig(horizontal_flip=0, affine=0, elastic=0)
    assert np.array_equal(jitter_mask(m, off, 1), m)
    flip = JitterConfig(horizontal_flip=1, affine=0, elastic=0)
    assert np.array_equal(jitter_mask(m, flip, 1), m[:, ::-1])
    vflip = JitterConfig(horizontal_flip=0, vertical_flip=1, affine=0, elastic=0)
    assert np.array_equal(jitter_mask(m, vflip, 1), m[::-1])


def test_jitter_moves_the_lesion_a_little():
    m = _lesion()
    area = (m > 0).sum()
    for seed in range(20):
        j = jitter_mask(m, JitterConfig(), seed)
        got = (j > 0).sum()
        assert 0.6 * area <= got <= 1.5 * area  # scale <= 15%: area within (0.85^2, 1.15^2) plus resampling
        inter = ((j > 0) & (m > 0)).sum() + ((j > 0) & (m[:, ::-1] > 0)).sum()
        assert inter > 0  # it overlaps the original or its mirror image: moved, not teleported


def test_empty_mask_stays_empty():
    assert not jitter_mask(np.zeros((16, 16), np.uint8), JitterConfig(), 3).any()


def test_categorical_per_item_is_independent_of_the_batch():
    logits = torch.randn(3, 5, 7)
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    full = categorical(logits, gens)
    assert full.shape == (3, 5) and full.dtype == torch.int64
    alone = categorical(logits[1:2], [torch.Generator().manual_seed(1)])
    assert torch.equal(full[1], alone[0])


def test_categorical_follows_the_softmax():
    probs = torch.tensor([0.1, 0.6, 0.3])
    logits = probs.log().expand(20000, 3)
    draws = categorical(logits, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=3).float() / len(draws)
    assert torch.allclose(freq, probs, atol=0.015)
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        categorical(torch.zeros(3, 4), [torch.Generator(), torch.Generator()])
