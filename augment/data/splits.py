"""Splits and label budgets: pure functions over manifest frames.

``stratified_group_split`` keeps every ``group`` (patient, video) on one side, and stratifies by
each group's majority label. ``select_budget`` draws the deterministic, stratified subset of the
train split that a generator and the downstream models are allowed to see.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from augment.errors import BudgetError

SPLIT_ORDER = ("train", "val", "test")


def stratified_group_split(
    df: pd.DataFrame, fractions: dict[str, float], seed: int = 0
) -> pd.Series:
    """Assign ``train``/``val``/``test`` to every row so that no group straddles two splits.

    Groups are stratified by their majority label (ties: the smallest label), shuffled with
    ``seed`` inside each stratum, and dealt one by one to the split that is furthest below its
    target share of that stratum's images. Same frame and seed -> same split.

    Returns a Series aligned with ``df.index``.
    """
    groups = df.groupby("group", sort=True)["label"].agg(lambda s: int(s.value_counts().sort_index().idxmax()))
    sizes = df.groupby("group", sort=True).size()
    names = [s for s in SPLIT_ORDER if fractions.get(s, 0) > 0]
    assigned: dict[str, str] = {}
    for label in sorted(groups.unique()):
        members = list(groups.index[groups == label])
        rng = np.random.default_rng(np.random.SeedSequence([seed, int(label)]))
        order = [members[i] for i in rng.permutation(len(members))]
        total = int(sizes[members].sum())
        got = dict.fromkeys(names, 0)
        for g in order:
            # Largest deficit first; ties go to the earlier split (train before val before test).
            best = max(names, key=lambda s: (fractions[s] * total - got[s], -names.index(s)))
            assigned[g] = best
            got[best] += int(sizes[g])
    return df["group"].map(assigned).rename("split")


def _allocate(counts: dict[int, int], budget: int) -> dict[int, int]:
    """Per-class budget: one image per class, then proportional shares dealt one at a time to
    the class furthest below its quota (exact total, never above a class's count)."""
    total = sum(counts.values())
    alloc = dict.fromkeys(counts, 1)
    quota = {c: budget * n / total for c, n in counts.items()}
    for _ in range(budget - len(counts)):
        open_ = [c for c in counts if alloc[c] < counts[c]]
        c = max(open_, key=lambda k: (quota[k] - alloc[k], -k))
        alloc[c] += 1
    return alloc


def select_budget(manifest: pd.DataFrame, budget: int | None, seed: int = 0) -> pd.DataFrame:
    """The label-budget subset of the train split, in manifest order.

    Deterministic and stratified: every class present in the train split keeps at least one
    image; the rest is shared in proportion to class counts. Within a class, images are taken
    in a seeded order per (seed, class), so for the same seed a larger budget mostly extends a
    smaller one. ``budget=None`` returns the whole train split.
    """
    train = manifest[manifest["split"] == "train"]
    if budget is None:
        return train.copy()
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise BudgetError(f"budget must be a positive integer, got {budget!r}")
    counts = {int(k): int(v) for k, v in train["label"].value_counts().sort_index().items()}
    if budget > len(train):
        raise BudgetError(f"budget {budget} is larger than the train split ({len(train)} images)")
    if budget < len(counts):
        raise BudgetError(
            f"budget {budget} cannot keep one image of each of the {len(counts)} classes in the train "
            f"split; use a budget of at least {len(counts)}"
        )
    alloc = _allocate(counts, int(budget))
    keep: list[str] = []
    for label, k in alloc.items():
        ids = sorted(train.loc[train["label"] == label, "id"])
        rng = np.random.default_rng(np.random.SeedSequence([seed, label]))
        keep.extend(ids[i] for i in rng.permutation(len(ids))[:k])
    return train[train["id"].isin(set(keep))].copy()
