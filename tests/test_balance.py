"""Balancing plans: a pure function of (real class counts, manifest), table-driven."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from augment.balance import BalanceConfig, plan
from augment.config import validate
from augment.errors import ConfigError

NAMES = {0: "normal", 1: "benign", 2: "malignant"}
REAL = {0: 11, 1: 36, 2: 17}  # BUSI budget 64


def _plan(real=REAL, **cfg):
    table = plan(real, validate(BalanceConfig, cfg, "balance"), NAMES)
    return dict(zip(table["class"], table["synthetic"])), table


@pytest.mark.parametrize(
    "cfg,expected",
    [
        ({"strategy": "match_max"}, {0: 25, 1: 0, 2: 19}),
        ({"strategy": "match_max", "classes": [2]}, {0: 0, 1: 0, 2: 19}),
        ({"strategy": "match_max", "max_synthetic_per_class": 20}, {0: 20, 1: 0, 2: 19}),
        ({"strategy": "target", "target": {0: 40, 2: 17}}, {0: 29, 1: 0, 2: 0}),
        ({"strategy": "ratio", "ratio": 1.0}, {0: 11, 1: 36, 2: 17}),
        ({"strategy": "ratio", "ratio": 0.5}, {0: 6, 1: 18, 2: 9}),  # 5.5 and 8.5 round half up
        ({"strategy": "ratio", "ratio": {2: 2.0}}, {0: 0, 1: 0, 2: 34}),
        ({"strategy": "ratio", "ratio": 1, "classes": [0, 2]}, {0: 11, 1: 0, 2: 17}),
        ({"strategy": "total", "total": 100, "weights": {0: 1, 1: 1, 2: 2}}, {0: 25, 1: 25, 2: 50}),
        ({"strategy": "total", "total": 10, "weights": {0: 1, 1: 1, 2: 1}}, {0: 4, 1: 3, 2: 3}),  # remainder by class order
        ({"strategy": "total", "total": 7, "weights": {1: 1}}, {0: 0, 1: 7, 2: 0}),
        ({"strategy": "total", "total": 0}, {0: 0, 1: 0, 2: 0}),
        # total with capped class: the excess moves to the others and the sum stays exact
        ({"strategy": "total", "total": 90, "weights": {0: 1, 1: 1, 2: 1}, "max_synthetic_per_class": 40}, {0: 30, 1: 30, 2: 30}),
        ({"strategy": "total", "total": 90, "weights": {0: 4, 1: 1, 2: 1}, "max_synthetic_per_class": 40}, {0: 40, 1: 25, 2: 25}),
    ],
)
def test_plans(cfg, expected):
    syn, table = _plan(**cfg)
    assert syn == expected
    assert (table["total"] == table["real"] + table["synthetic"]).all()
    assert list(table.columns) == ["class", "name", "real", "synthetic", "total"]


def test_total_default_weights_are_inverse_frequency():
    syn, _ = _plan(strategy="total", total=301)
    assert sum(syn.values()) == 301
    assert syn[0] > syn[2] > syn[1]  # rarest class gets the most
    # proportional to 1/11 : 1/36 : 1/17 within rounding
    w = {0: 1 / 11, 1: 1 / 36, 2: 1 / 17}
    for c in syn:
        assert abs(syn[c] - 301 * w[c] / sum(w.values())) < 1


def test_match_max_equalises_classes():
    _, table = _plan(strategy="match_max")
    assert table["total"].nunique() == 1


@pytest.mark.parametrize(
    "cfg,match",
    [
        ({"strategy": "target", "target": {5: 10}}, r"`target` names class 5, which is not a class \(allowed: 0, 1, 2\)"),
        ({"strategy": "match_max", "classes": [3]}, r"`classes` names class 3"),
        ({"strategy": "ratio", "ratio": {9: 1.0}}, r"`ratio` names class 9"),
        ({"strategy": "target", "target": {1: 10}}, r"target 10 for class 1 is below its 36 real images"),
        ({"strategy": "target", "target": {1: 50}, "classes": [2]}, r"`target` names class 1 but `classes` excludes it"),
        ({"strategy": "total", "total": 200, "max_synthetic_per_class": 50}, r"total 200 is impossible: .* at most 150"),
        ({"strategy": "total", "total": 10, "weights": {0: 1}, "classes": [1, 2]}, r"give every touched class weight 0"),
    ],
)
def test_impossible_or_contradictory_plans(cfg, match):
    with pytest.raises(ConfigError, match=match):
        _plan(**cfg)


def test_class_without_real_images_cannot_get_synthetic_pairs():
    with pytest.raises(ConfigError, match=r"class 2 has no real images"):
        _plan(real={0: 5, 1: 5, 2: 0}, strategy="total", total=10)
    with pytest.raises(ConfigError, match=r"class 2 gets synthetic pairs but has no real image"):
        _plan(real={0: 5, 1: 5, 2: 0}, strategy="match_max")


@pytest.mark.parametrize(
    "cfg,match",
    [
        ({"strategy": "target", "target": {1: -3}}, r"`target` must not be negative"),
        ({"strategy": "target", "target": {1: 2.5}}, r"`target.1`: Input should be a valid integer"),
        ({"strategy": "total", "total": 12.0}, r"`total`: Input should be a valid integer"),
        ({"strategy": "total", "total": -1}, r"`total` must not be negative"),
        ({"strategy": "ratio", "ratio": -0.5}, r"`ratio` must not be negative"),
        ({"strategy": "match_max", "target": {1: 3}}, r"`target` applies only to strategy target"),
        ({"strategy": "ratio"}, r"strategy ratio needs `ratio`"),
        ({"strategy": "oversample"}, r"`strategy`: Input should be 'match_max', 'target', 'ratio' or 'total'"),
        ({"strategy": "match_max", "classs": [1]}, r"unknown key `classs`"),
        ({"strategy": "total", "total": 5, "weights": {0: 0, 1: 0}}, r"`weights` must not all be zero"),
    ],
)
def test_invalid_manifests(cfg, match):
    with pytest.raises(ConfigError, match=match):
        validate(BalanceConfig, cfg, "balance")


def test_shipped_manifests_validate():
    from pathlib import Path

    from augment.sampling import load_balance

    shipped = sorted((Path(__file__).resolve().parents[1] / "manifests").glob("*.yaml"))
    assert {p.name for p in shipped} >= {"match_max.yaml", "ratio_1.yaml", "rare_only.yaml"}
    for p in shipped:
        cfg = load_balance(p)
        assert sum(plan(REAL, cfg, NAMES)["synthetic"]) > 0


def test_validation_error_type_is_not_leaked():
    with pytest.raises(ConfigError):
        validate(BalanceConfig, {"strategy": "total"}, "balance")
    with pytest.raises(ValidationError):
        BalanceConfig(strategy="total")  # the raw model still raises pydantic's own error


@pytest.mark.parametrize("cfg, reason", [
    ({"strategy": "ratio", "ratio": 0}, "`ratio` is 0"),
    ({"strategy": "ratio", "ratio": {0: 0, 2: 0.0}}, "`ratio` is 0"),
    ({"strategy": "total", "total": 0}, "`total` is 0"),
    ({"strategy": "match_max", "classes": []}, "`classes` is empty"),
    ({"strategy": "match_max", "max_synthetic_per_class": 0}, "`max_synthetic_per_class` is 0"),
    ({"strategy": "ratio", "ratio": {0: 0, 2: 1}}, None),
    ({"strategy": "match_max"}, None),
])
def test_a_plan_that_is_empty_whatever_the_counts_is_known_before_any_data(cfg, reason):
    from augment.balance import asks_for_nothing

    assert asks_for_nothing(BalanceConfig(**cfg)) == reason
    if reason is None:
        return
    for counts in ({0: 5, 1: 3, 2: 1}, {0: 1, 1: 9, 2: 30}):
        assert int(plan(counts, BalanceConfig(**cfg), {0: "a", 1: "b", 2: "c"})["synthetic"].sum()) == 0
