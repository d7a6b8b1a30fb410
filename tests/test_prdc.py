"""Precision, recall, density and coverage (Naeem et al. 2020) on known cases."""

from __future__ import annotations

import math

import pytest
import torch

from augment.errors import DataError
from augment.metrics import prdc


def _col(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)[:, None]


def _brute(real: torch.Tensor, fake: torch.Tensor, k: int) -> dict[str, float]:
    """The definitions written out as loops over Python floats."""
    r, f = real.tolist(), fake.tolist()

    def kth_radius(points: list[list[float]], i: int) -> float:
        return sorted(math.dist(points[i], p) for j, p in enumerate(points) if j != i)[k - 1]

    r_rad = [kth_radius(r, i) for i in range(len(r))]
    f_rad = [kth_radius(f, j) for j in range(len(f))]
    counts = [sum(math.dist(r[i], f[j]) < r_rad[i] for i in range(len(r))) for j in range(len(f))]
    return {
        "precision": sum(c > 0 for c in counts) / len(f),
        "recall": sum(any(math.dist(r[i], f[j]) < f_rad[j] for j in range(len(f))) for i in range(len(r))) / len(r),
        "density": sum(counts) / (k * len(f)),
        "coverage": sum(min(math.dist(r[i], q) for q in f) < r_rad[i] for i in range(len(r))) / len(r),
    }


def test_tiny_1d_case_by_hand():
    # real = [0, 1, 2, 3], fake = [0.5, 10], k = 1.
    # Real radii (nearest other real point): 1, 1, 1, 1.  Fake radii (the other fake point): 9.5, 9.5.
    # precision: 0.5 lies within 1 of real 0 and real 1 (d = 0.5); 10 is 7 from real 3 -> 1 of 2 = 0.5
    # recall: reals 0, 1, 2, 3 are 0.5, 0.5, 1.5, 2.5 from fake 0.5, all < 9.5 -> 4 of 4 = 1.0
    # density: fake 0.5 is inside the balls of real 0 and 1 (real 2 is 1.5 away), fake 10 in none
    #          -> (2 + 0) / (k * M) = 2 / 2 = 1.0
    # coverage: nearest fake to reals 0, 1, 2, 3 is 0.5 at 0.5, 0.5, 1.5, 2.5; < 1 for reals 0, 1 -> 2 of 4 = 0.5
    out = prdc(_col([0.0, 1.0, 2.0, 3.0]), _col([0.5, 10.0]), k=1)
    assert out == {"precision": 0.5, "recall": 1.0, "density": 1.0, "coverage": 0.5}


@pytest.mark.parametrize("k", [1, 3, 5])
def test_identical_sets(k):
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    out = prdc(x, x.clone(), k=k)
    assert (out["precision"], out["recall"], out["coverage"]) == (1.0, 1.0, 1.0)
    # Without ties (probability 0 for Gaussian data) each real ball holds exactly k of the fake
    # copies: the point itself (d = 0) and its k - 1 nearer neighbours, the k-th lying on the
    # boundary, outside the strict "d < r". So density is k N / (k M) = 1 exactly; 1e-12 only
    # allows for the float division.
    assert out["density"] == pytest.approx(1.0, abs=1e-12)


def test_far_shifted_fake_set_scores_zero():
    g = torch.Generator().manual_seed(1)
    real, fake = torch.randn(50, 4, generator=g), torch.randn(40, 4, generator=g) + 100.0
    assert prdc(real, fake, k=3) == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


@pytest.mark.parametrize("seed,n,m,d,k", [(2, 30, 25, 3, 1), (3, 40, 60, 5, 4), (4, 20, 12, 6, 7)])
def test_matches_brute_force_loops(seed, n, m, d, k):
    g = torch.Generator().manual_seed(seed)
    real = torch.randn(n, d, generator=g, dtype=torch.float64)
    fake = 0.7 * torch.randn(m, d, generator=g, dtype=torch.float64) + 0.3  # overlapping, not identical
    out, ref = prdc(real, fake, k=k), _brute(real, fake, k)
    assert out.keys() == ref.keys()
    for name in ref:
        assert out[name] == pytest.approx(ref[name], abs=1e-12), name
    assert any(0 < out[name] < 1 for name in ("precision", "recall", "coverage"))  # not a degenerate all-or-nothing case


@pytest.mark.parametrize("real,fake,k,match", [
    (torch.zeros(5, 2), torch.zeros(6, 2), 5, r"more than k=5 points per set.*real set has 5"),
    (torch.zeros(6, 2), torch.zeros(3, 2), 3, r"more than k=3 points per set.*fake set has 3"),
    (torch.zeros(6, 2), torch.zeros(6, 3), 1, r"one dimension; the real set has 2, the fake set 3"),
    (torch.zeros(6), torch.zeros(6, 1), 1, r"\(N, D\) feature matrices; the real set has shape \(6\)"),
    (torch.tensor([[0.0], [float("nan")], [1.0]]), torch.zeros(3, 1), 1, r"finite features; the real set contains"),
    (torch.zeros(3, 1), torch.tensor([[0.0], [float("inf")], [1.0]]), 1, r"finite features; the fake set contains"),
    (torch.zeros(6, 2), torch.zeros(6, 2), 0, r"k >= 1 nearest neighbours; k is 0"),
])
def test_refusals(real, fake, k, match):
    with pytest.raises(DataError, match=match):
        prdc(real, fake, k=k)
