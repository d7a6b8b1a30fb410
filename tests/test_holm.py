"""Holm–Bonferroni adjusted p-values and the step-level intervals of :mod:`augment.verdicts`."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from augment.errors import AugmentError
from augment.verdicts import holm, holm_intervals, mean_ci


def test_holm_hand_computed():
    # m = 4; sorted ascending: 0.005 (#3), 0.01 (#0), 0.03 (#2), 0.04 (#1)
    # j=0: 4 * 0.005 = 0.02                    -> 0.02
    # j=1: 3 * 0.01  = 0.03, max(0.02, 0.03)   -> 0.03
    # j=2: 2 * 0.03  = 0.06, max(0.03, 0.06)   -> 0.06
    # j=3: 1 * 0.04  = 0.04, max(0.06, 0.04)   -> 0.06
    # back in input order: #0 0.03, #1 0.06, #2 0.06, #3 0.02
    assert holm([0.01, 0.04, 0.03, 0.005]) == [0.03, 0.06, 0.06, 0.02]


def test_holm_caps_at_one_and_handles_edges():
    assert holm([0.5, 0.6]) == [1.0, 1.0]
    assert holm([]) == []
    assert holm([0.2]) == [0.2]


@pytest.mark.parametrize("seed", range(5))
def test_holm_monotone_in_raw_order_and_not_below_raw(seed):
    p = np.random.default_rng(seed).uniform(0, 0.2, size=12).tolist()
    adj = holm(p)
    in_raw_order = [adj[i] for i in np.argsort(p, kind="stable")]
    assert all(a <= b for a, b in zip(in_raw_order, in_raw_order[1:]))
    assert all(a >= r for a, r in zip(adj, p))


def test_holm_leaves_none_and_nan_out_of_m():
    # m = 2 (None and NaN do not count): 2 * 0.01 = 0.02, then max(0.02, 1 * 0.04) = 0.04
    assert holm([0.04, None, 0.01, float("nan")]) == [0.04, None, 0.02, None]
    assert holm([None, None]) == [None, None]


def test_holm_rejects_p_outside_unit_interval():
    with pytest.raises(AugmentError, match=r"p-value #1 is 1.5"):
        holm([0.1, 1.5])


def test_holm_matches_statsmodels():
    multitest = pytest.importorskip("statsmodels.stats.multitest", reason="statsmodels not installed: the cross-check against its Holm is optional")
    p = np.random.default_rng(3).uniform(0, 0.1, size=9)
    expected = multitest.multipletests(p, method="holm")[1]
    assert holm(p.tolist()) == pytest.approx(expected.tolist(), rel=1e-12)


def test_holm_intervals_match_scipy_at_the_step_level():
    rng = np.random.default_rng(0)
    samples = [rng.normal(mu, 1.0, size=8) for mu in (0.2, 1.5, 0.8)]
    out = holm_intervals(samples, alpha=0.05)
    raw = [stats.ttest_1samp(s, 0.0).pvalue for s in samples]
    assert [o["p"] for o in out] == pytest.approx(raw)
    assert [o["p_holm"] for o in out] == holm(raw)
    for rank, i in enumerate(np.argsort(raw)):
        o, s = out[i], samples[i]
        assert o["n"] == 8 and o["mean"] == pytest.approx(s.mean())
        assert o["level"] == pytest.approx(1 - 0.05 / (3 - rank))
        lo, hi = stats.t.interval(o["level"], 7, loc=s.mean(), scale=stats.sem(s))
        assert (o["ci_low"], o["ci_high"]) == pytest.approx((lo, hi), rel=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_holm_intervals_agree_with_rejections_up_to_the_first_non_rejection(seed):
    rng = np.random.default_rng(seed)
    out = holm_intervals([rng.normal(mu, 1.0, size=6) for mu in (0.0, 0.5, 1.0, 2.0)])
    for i in sorted(range(len(out)), key=lambda k: out[k]["p"]):
        excludes_zero = out[i]["ci_low"] > 0 or out[i]["ci_high"] < 0
        assert excludes_zero == (out[i]["p_holm"] < 0.05)
        if out[i]["p_holm"] >= 0.05:
            break  # Holm stops here; later intervals carry no decision (see the docstring)


def test_holm_intervals_with_one_comparison_is_mean_ci():
    x = np.random.default_rng(1).normal(0.3, 0.5, size=5)
    (o,) = holm_intervals([x])
    assert o["level"] == 0.95 and o["p_holm"] == o["p"]
    assert (o["mean"], o["ci_low"], o["ci_high"]) == pytest.approx(mean_ci(x), rel=1e-12)


def test_holm_intervals_drop_nan_and_handle_degenerate_samples():
    x = np.array([0.1, np.nan, 0.4, 0.3])
    one, zeros, const, good = holm_intervals([np.array([0.2]), np.zeros(3), np.full(3, 0.5), x])
    assert one["p"] is None and one["p_holm"] is None and one["level"] is None and one["n"] == 1
    assert math.isnan(one["ci_low"]) and math.isnan(one["ci_high"])
    assert zeros["p"] is None and zeros["level"] is None and (zeros["ci_low"], zeros["ci_high"]) == (0.0, 0.0)
    assert const["p"] == 0.0 and const["p_holm"] == 0.0 and (const["ci_low"], const["ci_high"]) == (0.5, 0.5)
    # only const and good have a p: m = 2, const ranks first (level 0.975), good second (0.95)
    assert const["level"] == pytest.approx(0.975) and good["level"] == pytest.approx(0.95)
    assert good["n"] == 3 and good["mean"] == pytest.approx(0.8 / 3)
    assert good["p"] == pytest.approx(stats.ttest_1samp(x[~np.isnan(x)], 0.0).pvalue)


def test_holm_intervals_reject_bad_alpha_and_shape():
    with pytest.raises(AugmentError, match=r"alpha is 1.5; it must be in \(0, 1\)"):
        holm_intervals([np.ones(3)], alpha=1.5)
    with pytest.raises(AugmentError, match=r"sample #0 has shape \(2, 2\)"):
        holm_intervals([np.ones((2, 2))])
