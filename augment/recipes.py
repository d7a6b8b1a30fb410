"""Recipes: how a task model uses a synthetic set, beyond concatenating it to the real budget.

A recipe is an evaluation arm with a name (``evaluate.recipes: {frac25: {mix: fraction,
synthetic_fraction: 0.25}}``), trained and tested like the fixed arms, on the same real budget,
val and test splits. It says

* which synthetic pairs: ``balance`` (a plan over the real budget's class counts, the same
  manifests as ``augment sample``) takes that many pairs per class from the synthetic set, in
  manifest order; without it, all of the set. Sample a large pool once (``ratio: 5``) and let
  recipes take ``ratio`` 1 / 2 / 5 or ``match_max`` subsets of it;
* which pairs to drop first (``filters``, each recording how many it dropped and why):
  ``segmenter``: a segmenter trained on the real budget (with classic augmentation: the
  ``real+classic`` model of the same seed) predicts each synthetic image; among pairs whose mask
  has a lesion, the ``filter_drop`` share with the lowest Dice against their own mask is dropped
  (pairs with an empty mask are kept: a segmenter trained on 16-64 images paints lesions on most
  normal scans, so it cannot judge them). ``reconstruction``: a small VAE trained on the real
  budget images (:mod:`augment.plausibility`, cross-fitted: each real image is scored by a VAE
  that did not see it) scores every image; synthetic pairs above the ``filter_percentile`` of
  the real images' scores are dropped. Filters run before ``balance``
  takes its counts, so a filtered recipe trains on as many pairs as the unfiltered one while the
  survivors last;
* how batches mix real and synthetic pairs (``mix``): ``concat`` (one pool, shuffled, as the
  ``real+synthetic`` arms), ``fraction`` (``synthetic_fraction`` of every batch is synthetic),
  ``pretrain`` (the first ``pretrain_share`` of the steps on synthetic pairs alone, then the rest
  on the real budget alone: pre-train then fine-tune, same total steps, one optimiser);
* ``synthetic_weight``: the loss weight of a synthetic pair (real pairs weigh 1);
* ``classic``: classic augmentation of every pair (default on: synthetic data must beat
  ``real+classic``, so it is judged on top of it);
* ``selection``: this recipe's checkpoint rule, e.g. ``best_val_dice_fpr`` (default: the task's).
  A recipe that takes no synthetic pair (``balance: {strategy: ratio, ratio: 0}``) is
  ``real+classic`` under its own rule: the reference that separates a rule's effect from the data's.

Every number setting is finite and inside its stated range (``synthetic_weight`` in [0.001, 100],
fractions and shares in (0, 1), ``filter_drop`` in [0, 1), ``filter_percentile`` in (0, 100]).
Filters that keep none of the synthetic pairs are a finding, not an error: the recipe trains on
the real budget alone (as ``ratio: 0`` does) and its record says so (``note``), so a generator
whose every pair a filter rejects shows up as no better than ``real+classic``. Filter scores are
cached per seed under a key of the inputs and settings they were computed from
(:func:`cached`), so scores of other images are never reused.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, model_validator

from augment.balance import BalanceConfig, plan
from augment.config import Strict, in_range
from augment.downstream import Selection, dice_per_image, epoch_batches, predict_masks
from augment.errors import ConfigError, DataError
from augment.output import atomic_path, read_csv
from augment.seeding import mix_seed

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
Filter = Literal["segmenter", "reconstruction"]


class RecipeConfig(Strict):
    mix: Literal["concat", "fraction", "pretrain"] = "concat"
    synthetic_fraction: in_range(0, 1, lo_open=True, hi_open=True) | None = Field(
        None, description="mix fraction: share of each batch drawn from synthetic pairs, in (0, 1)")
    pretrain_share: in_range(0, 1, lo_open=True, hi_open=True) = Field(
        0.5, description="mix pretrain: share of the steps on synthetic pairs before fine-tuning on real, in (0, 1)")
    synthetic_weight: in_range(1e-3, 100) = Field(
        1.0, description="loss weight of a synthetic pair (real pairs weigh 1), in [0.001, 100]")
    balance: BalanceConfig | None = Field(None, description="how many synthetic pairs per class, planned over the real budget (default: all)")
    filters: list[Filter] = Field(default_factory=list)
    filter_drop: in_range(0, 1, hi_open=True) = Field(
        0.25, description="segmenter filter: share of lesion pairs dropped (lowest Dice first), in [0, 1)")
    filter_percentile: in_range(0, 100, lo_open=True) = Field(
        95.0, description="reconstruction filter: drop pairs above this percentile of the real scores, in (0, 100]")
    classic: bool = True
    selection: Selection | None = Field(
        None, description="this recipe's checkpoint rule (default: the task's)")

    @model_validator(mode="after")
    def _consistent(self) -> "RecipeConfig":
        if (self.mix == "fraction") != (self.synthetic_fraction is not None):
            raise ValueError("synthetic_fraction goes with mix: fraction (and mix: fraction needs it)")
        if len(set(self.filters)) != len(self.filters):
            raise ValueError(f"filters lists a filter twice: {self.filters}")
        if self.mix == "pretrain" and self.synthetic_weight != 1.0:
            raise ValueError("mix: pretrain trains on synthetic and real pairs in separate phases; synthetic_weight does not apply")
        return self


def describe(recipe: RecipeConfig) -> str:
    """One line saying what a recipe does (for the report's protocol)."""
    def plan_text(b: BalanceConfig | None) -> str:
        if b is None:
            return "all of the synthetic set"
        what = {"match_max": "every class up to the largest", "ratio": f"ratio {b.ratio}", "target": f"target {b.target}",
                "total": f"total {b.total}"}[b.strategy]
        return f"{what} (of the set)"

    parts = [plan_text(recipe.balance)]
    if "segmenter" in recipe.filters:
        parts.append(f"segmenter filter drops the worst {recipe.filter_drop:.0%} of lesion pairs first")
    if "reconstruction" in recipe.filters:
        parts.append(f"reconstruction filter drops pairs above the real p{recipe.filter_percentile:g} first")
    if recipe.mix == "fraction":
        parts.append(f"{recipe.synthetic_fraction:.0%} of each batch synthetic")
    elif recipe.mix == "pretrain":
        parts.append(f"pre-train on synthetic for {recipe.pretrain_share:.0%} of the steps, then real")
    else:
        parts.append("concatenated")
    if recipe.synthetic_weight != 1.0:
        parts.append(f"synthetic loss weight {recipe.synthetic_weight:g}")
    parts.append("classic augmentation" if recipe.classic else "no classic augmentation")
    if recipe.selection:
        parts.append(f"checkpoint rule {recipe.selection}")
    return ", ".join(parts)


def check_names(recipes: dict, reserved: tuple[str, ...]) -> None:
    for name in recipes:
        if not NAME.match(name) or name in reserved:
            raise ConfigError(f"recipe name {name!r} must be a plain name (letters, digits, _ . -) and not one of the "
                              f"fixed arms ({', '.join(reserved)})")


def segmenter_scores(model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor,
                     inside: torch.Tensor | None = None) -> pd.DataFrame:
    """Per synthetic pair: ``dice`` of the segmenter's prediction against the pair's own mask
    and whether the mask has a lesion (``lesion``); with ``inside`` (N, H, W) 0/1, both are
    judged there only (an inpainted pair's region, :func:`augment.placement.region_boxes`)."""
    pred = predict_masks(model, images)
    if inside is not None:
        pred, masks = pred * inside, masks * inside
    return pd.DataFrame({"dice": dice_per_image(pred, masks).numpy().astype(float),
                         "lesion": masks.flatten(1).gt(0).any(1).numpy()})


def segmenter_keep(scores: pd.DataFrame, drop: float) -> tuple[np.ndarray, dict]:
    """Keep all pairs with an empty mask and the lesion pairs outside the lowest-Dice ``drop`` share."""
    keep = np.ones(len(scores), bool)
    lesion = np.flatnonzero(scores["lesion"].to_numpy())
    n_drop = int(np.floor(drop * len(lesion) + 0.5))
    order = lesion[np.argsort(scores["dice"].to_numpy()[lesion], kind="stable")]
    keep[order[:n_drop]] = False
    threshold = float(scores["dice"].to_numpy()[order[n_drop - 1]]) if n_drop else None
    return keep, {"filter": "segmenter", "judged": int(len(lesion)), "dropped": n_drop, "kept_unjudged": int(len(scores) - len(lesion)),
                  "dice_at_or_below": threshold,
                  "why": f"the {drop:.0%} of lesion pairs whose mask a real-trained segmenter agrees with least (Dice)"}


def reconstruction_keep(real: np.ndarray, synthetic: np.ndarray, percentile: float) -> tuple[np.ndarray, dict]:
    """Keep synthetic pairs whose VAE reconstruction error is at most the real images' ``percentile``
    (scores that are not finite, from a VAE that diverged, are an error: NaN would drop every pair)."""
    bad = int((~np.isfinite(real)).sum() + (~np.isfinite(synthetic)).sum())
    if bad:
        raise DataError(f"the reconstruction filter's scores of {bad} of {len(real) + len(synthetic)} images are not finite "
                        "(its VAE diverged); lower scorer.lr")
    threshold = float(np.percentile(real, percentile))
    keep = synthetic <= threshold
    return keep, {"filter": "reconstruction", "judged": int(len(synthetic)), "dropped": int((~keep).sum()), "threshold": threshold,
                  "why": f"reconstruction error above the real budget's {percentile:g}th percentile ({threshold:.5f})"}


def take(labels: np.ndarray, keep: np.ndarray, real_counts: dict[int, int], balance: BalanceConfig | None,
         class_names: dict[int, str]) -> tuple[np.ndarray, dict]:
    """Indices of the synthetic pairs a recipe trains on: the kept ones, cut per class to the
    plan of ``balance`` (first in manifest order). A class with too few kept pairs gives all it
    has; the record says how many were wanted."""
    kept = np.flatnonzero(keep)
    if balance is None:
        return kept, {"wanted": None, "used": {str(c): int((labels[kept] == c).sum()) for c in sorted(class_names)}}
    table = plan(real_counts, balance, class_names)
    chosen, wanted, used = [], {}, {}
    for row in table.to_dict("records"):
        c, n = int(row["class"]), int(row["synthetic"])
        pool = kept[labels[kept] == c]
        chosen.append(pool[:n])
        wanted[str(c)], used[str(c)] = n, int(min(n, len(pool)))
    return np.sort(np.concatenate(chosen)) if chosen else kept[:0], {"wanted": wanted, "used": used}


def schedule(recipe: RecipeConfig, n_real: int, n_syn: int, batch_size: int, steps: int, seed: int) -> list[np.ndarray]:
    """One index array per step over ``range(n_real + n_syn)`` (real first, then synthetic)."""
    if n_syn == 0 or recipe.mix == "concat":
        return epoch_batches(n_real + n_syn, batch_size, steps, seed)
    if recipe.mix == "fraction":
        k = min(batch_size - 1, max(1, round(recipe.synthetic_fraction * batch_size)))
        real = epoch_batches(n_real, batch_size - k, steps, seed)
        syn = epoch_batches(n_syn, k, steps, mix_seed(seed, 0x5F))
        return [np.concatenate([r, s + n_real]) for r, s in zip(real, syn)]
    first = max(1, min(steps - 1, round(recipe.pretrain_share * steps)))
    return [b + n_real for b in epoch_batches(n_syn, batch_size, first, mix_seed(seed, 0x5F))] + \
        epoch_batches(n_real, batch_size, steps - first, seed)


def apply_filters(recipe: RecipeConfig, scores_of: Callable[[str], pd.DataFrame], n: int) -> tuple[np.ndarray, list[dict]]:
    """Which of the ``n`` synthetic pairs survive ``recipe.filters`` (in order), and each filter's
    record; ``scores_of(kind)`` gives a filter's scores (``segmenter``: one row per pair;
    ``reconstruction``: rows of ``kind`` real and synthetic)."""
    keep, records = np.ones(n, bool), []
    for kind in recipe.filters:
        scores = scores_of(kind)
        if kind == "segmenter":
            kept, record = segmenter_keep(scores, recipe.filter_drop)
        else:
            kept, record = reconstruction_keep(scores.loc[scores["kind"] == "real", "score"].to_numpy(),
                                               scores.loc[scores["kind"] == "synthetic", "score"].to_numpy(), recipe.filter_percentile)
        record["dropped_of_remaining"] = int((keep & ~kept).sum())
        keep &= kept
        records.append(record)
    return keep, records


def cached(path: Path, compute: Callable[[], pd.DataFrame]) -> pd.DataFrame:
    """A filter's scores: read from ``path`` when an earlier run wrote them, else computed and
    written atomically (a half-written cache never exists). ``path`` must name what the scores
    were computed from (the caller puts a key of the inputs and settings in it)."""
    if path.is_file():
        try:
            return read_csv(path, "filter scores")
        except DataError:
            raise DataError(f"filter scores `{path}` are corrupt; delete the file to compute them again") from None
    frame = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return frame
