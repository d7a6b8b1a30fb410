"""Recipes: subsets, filters, batch mixing, loss weights and checkpoint rules, alone and through
a tiny evaluation on phantom data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from augment.balance import BalanceConfig
from augment.config import validate
from augment.downstream import TASKS, Shapes, TaskConfig, epoch_batches, fit, selection_score
from augment.errors import ConfigError, DataError
from augment.evaluate import EvaluateConfig, evaluate
from augment.recipes import RecipeConfig, reconstruction_keep, schedule, segmenter_keep, take
from augment.sampling import SampleConfig, sample
from tests.conftest import TINY_TASK

QUIET = lambda *_: None  # noqa: E731


def test_concat_schedule_is_the_plain_shuffler():
    batches = schedule(RecipeConfig(), 10, 30, 8, 12, seed=3)
    assert [b.tolist() for b in batches] == [b.tolist() for b in epoch_batches(40, 8, 12, 3)]


def test_fraction_schedule_puts_that_share_of_each_batch_on_synthetic_pairs():
    batches = schedule(RecipeConfig(mix="fraction", synthetic_fraction=0.25), 10, 30, 8, 50, seed=0)
    assert len(batches) == 50
    for b in batches:
        assert len(b) == 8 and (b >= 10).sum() == 2 and len(set(b.tolist())) == 8
    # every real index is used, epoch after epoch
    assert set(np.concatenate(batches)[np.concatenate(batches) < 10].tolist()) == set(range(10))


def test_pretrain_schedule_is_synthetic_first_then_real_only():
    batches = schedule(RecipeConfig(mix="pretrain", pretrain_share=0.3), 10, 30, 8, 20, seed=0)
    assert len(batches) == 20
    assert all((b >= 10).all() for b in batches[:6]) and all((b < 10).all() for b in batches[6:])


def test_no_synthetic_pairs_means_the_real_schedule():
    for recipe in (RecipeConfig(mix="fraction", synthetic_fraction=0.5), RecipeConfig(mix="pretrain")):
        assert [b.tolist() for b in schedule(recipe, 10, 0, 8, 5, 1)] == [b.tolist() for b in epoch_batches(10, 8, 5, 1)]


def test_segmenter_filter_drops_the_worst_lesion_pairs_and_keeps_empty_masks():
    scores = pd.DataFrame({"dice": [0.9, 0.1, 0.0, 0.5, 0.3, 0.8], "lesion": [True, True, False, True, True, False]})
    keep, record = segmenter_keep(scores, 0.5)
    assert keep.tolist() == [True, False, True, True, False, True]
    assert record["judged"] == 4 and record["dropped"] == 2 and record["kept_unjudged"] == 2
    assert record["dice_at_or_below"] == pytest.approx(0.3)
    assert segmenter_keep(scores, 0.0)[0].all()


def test_reconstruction_filter_uses_the_real_percentile():
    real = np.arange(1, 101, dtype=float)  # p90 = 90.1
    keep, record = reconstruction_keep(real, np.array([5.0, 90.0, 91.0, 200.0]), 90)
    assert keep.tolist() == [True, True, False, False] and record["dropped"] == 2
    assert record["threshold"] == pytest.approx(np.percentile(real, 90))


def test_reconstruction_filter_refuses_scores_that_are_not_finite():
    with pytest.raises(DataError, match=r"scores of 2 of 5 images are not finite \(its VAE diverged\); lower scorer.lr"):
        reconstruction_keep(np.array([1.0, np.nan]), np.array([1.0, np.inf, 2.0]), 95)


def test_take_follows_the_plan_in_manifest_order_and_says_when_short():
    labels = np.array([0, 1, 1, 0, 1, 2, 1, 0])
    keep = np.array([True, True, False, True, True, True, True, True])
    names = {0: "a", 1: "b", 2: "c"}
    idx, used = take(labels, keep, {0: 2, 1: 1, 2: 1}, BalanceConfig(strategy="ratio", ratio=1), names)
    assert idx.tolist() == [0, 1, 3, 5]  # the first kept pairs of each class: 0 gets 2, 1 and 2 get 1
    idx, used = take(labels, keep, {0: 2, 1: 1, 2: 1}, BalanceConfig(strategy="ratio", ratio=2), names)
    assert used == {"wanted": {"0": 4, "1": 2, "2": 2}, "used": {"0": 3, "1": 2, "2": 1}}
    assert idx.tolist() == [0, 1, 3, 4, 5, 7]
    idx, used = take(labels, keep, {0: 2}, None, names)
    assert idx.tolist() == np.flatnonzero(keep).tolist() and used["wanted"] is None


def test_recipe_settings_are_checked():
    with pytest.raises(ValueError, match="synthetic_fraction goes with mix: fraction"):
        RecipeConfig(mix="fraction")
    with pytest.raises(ValueError, match="synthetic_fraction goes with mix: fraction"):
        RecipeConfig(synthetic_fraction=0.3)
    with pytest.raises(ValueError, match="lists a filter twice"):
        RecipeConfig(filters=["segmenter", "segmenter"])
    with pytest.raises(ValueError, match="synthetic_weight does not apply"):
        RecipeConfig(mix="pretrain", synthetic_weight=0.5)


def test_weighted_losses_match_the_unweighted_ones_and_ignore_zero_weights():
    torch.manual_seed(0)
    shapes = Shapes(1, 3, 2)
    x, m, y = torch.rand(4, 1, 16, 16), torch.randint(0, 2, (4, 16, 16)), torch.tensor([0, 1, 2, 1])
    for name in ("segmentation", "classification"):
        task = TASKS[name]
        model = task.build(shapes, 4).eval()
        loss = task.loss(shapes, y)
        with torch.no_grad():
            assert float(loss(model, x, m, y, torch.ones(4))) == pytest.approx(float(loss(model, x, m, y)), rel=1e-5)
            w = torch.tensor([1.0, 1.0, 0.0, 0.0])
            alone = task.loss(shapes, y)(model, x[:2], m[:2], y[:2], torch.ones(2))
            assert float(loss(model, x, m, y, w)) == pytest.approx(float(alone), rel=1e-5)


def test_selection_rule_that_counts_false_positives():
    seg = TASKS["segmentation"]
    assert selection_score(seg, "best_val", {"dice_all": 0.4, "dice": 0.6, "fpr": 0.5}) == 0.4
    assert selection_score(seg, "best_val_dice_fpr", {"dice_all": 0.4, "dice": 0.6, "fpr": 0.5}) == pytest.approx(0.55)
    assert selection_score(seg, "best_val_dice_fpr", {"dice_all": 0.4, "dice": 0.6, "fpr": float("nan")}) == pytest.approx(0.6)
    draw = lambda idx: (torch.rand(len(idx), 1, 16, 16), None, torch.zeros(len(idx), dtype=torch.int64))  # noqa: E731
    with pytest.raises(ConfigError, match="best_val_dice_fpr counts false positives"):
        fit(TASKS["classification"], Shapes(1, 2, 2), draw, 8, torch.zeros(8, dtype=torch.int64),
            TaskConfig(steps=2, batch_size=4, selection="best_val_dice_fpr"), 0)


@pytest.fixture(scope="module")
def pool(tiny_mask_run, tmp_path_factory):
    """Two synthetic pairs per real image from the tiny mask-conditioned cVAE (real jittered masks)."""
    out = tmp_path_factory.mktemp("pool") / "syn"
    sample(validate(SampleConfig, {"generator": tiny_mask_run, "out": out,
                                   "balance": {"strategy": "ratio", "ratio": 2, "mask_source": "real"}}, "s"), echo=QUIET)
    return out


RECIPES = {
    "none_fpr": {"balance": {"strategy": "ratio", "ratio": 0}, "selection": "best_val_dice_fpr"},
    "none": {"balance": {"strategy": "ratio", "ratio": 0}},
    "frac": {"mix": "fraction", "synthetic_fraction": 0.25, "synthetic_weight": 0.5},
    "pre": {"mix": "pretrain"},
    "filtered": {"filters": ["segmenter", "reconstruction"], "filter_drop": 0.5, "filter_percentile": 50,
                 "balance": {"strategy": "ratio", "ratio": 1}},
}


def test_recipes_train_as_arms_record_their_filters_and_resume(phantom_dir, pool, tmp_path):
    cfg = validate(EvaluateConfig, {"data": phantom_dir, "synthetic": pool, "out": tmp_path / "ev", "arms": ["real+classic"],
                                    "seeds": [0], "segmentation": TINY_TASK, "recipes": RECIPES, "scorer": {"steps": 5}}, "e")
    lines = []
    evaluate(cfg, echo=lines.append)
    rows = pd.read_csv(tmp_path / "ev" / "results.csv")
    assert set(rows["arm"]) == {"real+classic", *RECIPES}
    dice = rows[rows["metric"] == "dice"].set_index("arm")["value"]
    # no synthetic pair and the same rule: exactly the real+classic model
    assert dice["none"] == dice["real+classic"]
    run = lambda name: json.loads((tmp_path / "ev" / "runs" / f"segmentation__{name}__seed0.json").read_text())  # noqa: E731
    n_syn = len(pd.read_csv(pool / "manifest.csv"))
    assert run("none")["n_synthetic"] == 0 and run("frac")["n_synthetic"] == n_syn and run("pre")["n_train"] == 24 + n_syn
    assert run("none_fpr")["recipe"]["selection"] == "best_val_dice_fpr"
    filtered = run("filtered")
    seg, rec = filtered["filters"]
    assert seg["filter"] == "segmenter" and seg["dropped"] == round(0.5 * seg["judged"]) and seg["judged"] < n_syn
    (cache,) = (tmp_path / "ev" / "filters").glob("reconstruction__seed0__*.csv")  # keyed by the inputs and settings
    scores = pd.read_csv(cache)
    threshold = np.percentile(scores.loc[scores["kind"] == "real", "score"], 50)
    assert rec["filter"] == "reconstruction" and rec["judged"] == n_syn and rec["threshold"] == pytest.approx(threshold)
    assert rec["dropped"] == int((scores.loc[scores["kind"] == "synthetic", "score"] > threshold).sum())
    assert filtered["n_synthetic"] == sum(filtered["synthetic_per_class"]["used"].values()) <= 24
    assert any("filter segmenter dropped" in line for line in lines)
    assert len(list((tmp_path / "ev" / "filters").glob("segmenter__seed0__*.csv"))) == 1
    # resume: finished recipes are read back, a new one is added, a changed one is refused
    marker = tmp_path / "ev" / "runs" / "segmentation__pre__seed0.json"
    data = json.loads(marker.read_text())
    data["metrics"]["dice"] = 0.4242
    marker.write_text(json.dumps(data))
    grown = cfg.model_copy(update={"recipes": {**cfg.recipes, "more": RecipeConfig(mix="fraction", synthetic_fraction=0.5)}})
    evaluate(grown, echo=QUIET)
    rows = pd.read_csv(tmp_path / "ev" / "results.csv")
    assert rows.query("arm == 'pre' and metric == 'dice'")["value"].item() == 0.4242 and "more" in set(rows["arm"])
    changed = cfg.model_copy(update={"recipes": {**cfg.recipes, "pre": RecipeConfig(mix="pretrain", pretrain_share=0.2)}})
    with pytest.raises(DataError, match="holds recipe `pre` with other settings"):
        evaluate(changed, echo=QUIET)
    # a result file is checked against the recipe too (config.json holds the last run's recipes only)
    evaluate(cfg.model_copy(update={"recipes": {"none": cfg.recipes["none"]}}), echo=QUIET)
    with pytest.raises(DataError, match="trained with other settings of recipe `pre`"):
        evaluate(changed, echo=QUIET)


def test_recipe_names_and_needs_are_checked(phantom_dir, pool, tmp_path):
    with pytest.raises(ConfigError, match="must be a plain name"):
        validate(EvaluateConfig, {"data": phantom_dir, "out": tmp_path / "x", "recipes": {"real+classic": {}}}, "e")
    with pytest.raises(ConfigError, match="nothing to train"):
        validate(EvaluateConfig, {"data": phantom_dir, "out": tmp_path / "x", "arms": []}, "e")
    cfg = validate(EvaluateConfig, {"data": phantom_dir, "out": tmp_path / "x", "arms": ["real"], "budget": 12,
                                    "recipes": {"r": {}}}, "e")
    with pytest.raises(ConfigError, match="arm `r` needs --synthetic"):
        evaluate(cfg, echo=QUIET)
    cfg = validate(EvaluateConfig, {"data": phantom_dir, "synthetic": pool, "out": tmp_path / "y", "task": "both", "arms": [],
                                    "recipes": {"r": {"selection": "best_val_dice_fpr"}}}, "e")
    with pytest.raises(ConfigError, match="recipe `r` selects by best_val_dice_fpr"):
        evaluate(cfg, echo=QUIET)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_filter_scores_of_another_synthetic_set_are_refused(phantom_dir, pool, tmp_path):
    cfg = validate(EvaluateConfig, {"data": phantom_dir, "synthetic": pool, "out": tmp_path / "ev", "arms": [], "seeds": [0],
                                    "segmentation": TINY_TASK, "scorer": {"steps": 3},
                                    "recipes": {"r": {"filters": ["reconstruction"]}}}, "e")
    evaluate(cfg, echo=QUIET)
    (cache,) = (tmp_path / "ev" / "filters").glob("reconstruction__seed0__*.csv")
    scores = pd.read_csv(cache)
    assert (scores["kind"] == "real").sum() == 24 and (scores["kind"] == "synthetic").sum() == len(pd.read_csv(pool / "manifest.csv"))
    scores.iloc[:-1].to_csv(cache, index=False)  # one synthetic pair fewer: not this set's scores
    (tmp_path / "ev" / "runs" / "segmentation__r__seed0.json").unlink()
    with pytest.raises(DataError, match="are for another synthetic set; delete the file"):
        evaluate(cfg, echo=QUIET)
