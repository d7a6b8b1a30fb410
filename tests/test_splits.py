"""Group-aware stratified splits and label budgets: pure functions, tested directly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from augment.data.splits import select_budget, stratified_group_split
from augment.errors import BudgetError

FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}


def _frame(counts: dict[int, int], group_size: int = 1, split: str | None = None) -> pd.DataFrame:
    rows = []
    for label, n in counts.items():
        for i in range(n):
            rid = f"c{label}_{i:04d}"
            rows.append({"id": rid, "label": label, "group": f"c{label}_g{i // group_size}", "split": split or ""})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("group_size", [1, 3])
def test_split_keeps_groups_together_and_is_stratified(group_size):
    df = _frame({0: 300, 1: 120, 2: 60}, group_size=group_size)
    split = stratified_group_split(df, FRACTIONS, seed=0)
    assert split.index.equals(df.index)
    per_group = pd.DataFrame({"group": df["group"], "split": split}).groupby("group")["split"].nunique()
    assert (per_group == 1).all()
    for label, n in {0: 300, 1: 120, 2: 60}.items():
        share = split[df["label"] == label].value_counts() / n
        for name, frac in FRACTIONS.items():
            assert abs(share[name] - frac) <= group_size / n + 1e-9, (label, name)


def test_split_mixed_label_group_follows_majority():
    df = pd.DataFrame({
        "id": ["a", "b", "c", "d"], "label": [1, 1, 2, 0], "group": ["p", "p", "p", "q"], "split": "",
    })
    split = stratified_group_split(df, FRACTIONS, seed=0)
    assert split[:3].nunique() == 1


def test_split_deterministic_and_seed_dependent():
    df = _frame({0: 50, 1: 30})
    a = stratified_group_split(df, FRACTIONS, seed=1)
    assert a.equals(stratified_group_split(df, FRACTIONS, seed=1))
    assert not a.equals(stratified_group_split(df, FRACTIONS, seed=2))


def test_split_with_zero_val_fraction():
    split = stratified_group_split(_frame({0: 20, 1: 10}), {"train": 0.8, "val": 0.0, "test": 0.2}, seed=0)
    assert set(split) == {"train", "test"}


def _train(counts):
    return _frame(counts, split="train")


@pytest.mark.parametrize(
    "counts,budget,expected",
    [
        ({0: 93, 1: 306, 2: 147}, 32, {0: 5, 1: 18, 2: 9}),
        ({0: 93, 1: 306, 2: 147}, 16, {0: 3, 1: 9, 2: 4}),
        ({0: 100, 1: 2}, 10, {0: 9, 1: 1}),  # proportional gives the rare class 0.2: it still keeps 1
        ({0: 100, 1: 1}, 50, {0: 49, 1: 1}),  # never more than a class has
        ({0: 5, 1: 5, 2: 5}, 3, {0: 1, 1: 1, 2: 1}),
        ({0: 5, 1: 5}, 10, {0: 5, 1: 5}),
    ],
)
def test_budget_counts(counts, budget, expected):
    sub = select_budget(_train(counts), budget, seed=0)
    assert len(sub) == budget
    assert sub["label"].value_counts().to_dict() == expected


def test_budget_only_from_train_split_and_deterministic():
    df = pd.concat([_train({0: 20, 1: 20}), _frame({0: 50, 1: 50}, split="test").assign(id=lambda d: "t" + d["id"])])
    a = select_budget(df, 8, seed=4)
    assert (a["split"] == "train").all()
    assert a["id"].tolist() == select_budget(df, 8, seed=4)["id"].tolist()
    assert a["id"].tolist() != select_budget(df, 8, seed=5)["id"].tolist()
    assert list(a.index) == sorted(a.index)  # manifest order kept


def test_budget_larger_budget_extends_smaller_when_allocation_grows():
    df = _train({0: 40, 1: 40})
    small, big = select_budget(df, 10, seed=0), select_budget(df, 20, seed=0)
    assert set(small["id"]) <= set(big["id"])


def test_budget_none_is_whole_train_split():
    df = _train({0: 7, 1: 3})
    assert len(select_budget(df, None)) == 10


@pytest.mark.parametrize(
    "budget,match",
    [
        (11, r"budget 11 is larger than the train split \(10 images\)"),
        (1, r"budget 1 cannot keep one image of each of the 2 classes .*at least 2"),
        (0, r"budget must be a positive integer, got 0"),
        (-3, r"budget must be a positive integer"),
        (2.5, r"budget must be a positive integer, got 2.5"),
    ],
)
def test_impossible_budget(budget, match):
    with pytest.raises(BudgetError, match=match):
        select_budget(_train({0: 7, 1: 3}), budget)


def test_budget_numpy_int_accepted():
    assert len(select_budget(_train({0: 7, 1: 3}), np.int64(4))) == 4
