"""The verdict's pick is made on validation: test scores, however they are poisoned, never move
it; the full test ranking carries Holm-adjusted intervals across every comparison in it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from scipy import stats

from augment.report import summary_text, write_report
from augment.verdicts import exploratory, select_on_validation, verdicts


def _rows(deltas: dict[tuple[str, str], list[float]], budgets=(16, 32)) -> pd.DataFrame:
    """real+classic at 0.5 + 0.01 * seed per budget, and each (generator, arm) that differs from
    it by the given delta at each (budget, seed), budgets outer."""
    rows = []
    n = len(next(iter(deltas.values()))) // len(budgets)
    for bi, budget in enumerate(budgets):
        for seed in range(n):
            base = 0.5 + 0.01 * seed
            rows.append({"task": "segmentation", "budget": budget, "generator": "none", "arm": "real+classic",
                         "seed": seed, "metric": "dice", "value": base})
            rows += [{"task": "segmentation", "budget": budget, "generator": g, "arm": a, "seed": seed, "metric": "dice",
                      "value": base + d[bi * n + seed]} for (g, a), d in deltas.items()]
    return pd.DataFrame(rows)


# on val: cvae's frac50 is best of all, ldm's real+synthetic+classic is ldm's best
VAL = _rows({("cvae", "frac50"): [0.05, 0.04, 0.06, 0.05, 0.05, 0.04],
             ("cvae", "real+synthetic+classic"): [0.01, 0.0, 0.02, 0.01, 0.0, 0.01],
             ("ldm", "real+synthetic+classic"): [0.02, 0.03, 0.02, 0.01, 0.02, 0.03],
             ("ldm", "frac50"): [-0.02, -0.01, -0.03, -0.02, -0.02, -0.01]})


def _poisoned(scale: float) -> pd.DataFrame:
    """Test scores that rank the arms the other way round from val, by ``scale``."""
    return _rows({("cvae", "frac50"): [-scale * 0.9, -scale * 1.1] * 3, ("cvae", "real+synthetic+classic"): [scale, scale * 0.9] * 3,
                  ("ldm", "real+synthetic+classic"): [-scale * 0.4, -scale * 0.6] * 3, ("ldm", "frac50"): [scale * 2, scale * 1.5] * 3})


def test_the_pick_is_made_on_validation_and_poisoned_test_scores_do_not_move_it(tmp_path):
    picks = select_on_validation(VAL)
    assert picks["segmentation"]["overall"] == ("cvae", "frac50")
    assert picks["segmentation"]["generators"] == {"cvae": "frac50", "ldm": "real+synthetic+classic"}
    for scale in (0.05, 0.3, 0.45):
        test = _poisoned(scale)
        # on test alone, the best arms are the other ones
        assert verdicts(test)[0]["arm"] == "frac50" and verdicts(test)[0]["generator"] == "ldm"
        lines = verdicts(test, select_on_validation(VAL), generator_seeds=1)
        head = [v for v in lines if v["headline"]]
        assert [(v["generator"], v["arm"], v["budget"]) for v in head] == [("cvae", "frac50", None)]
        assert abs(head[0]["delta"] + scale) < 1e-12 and head[0]["verdict"] == "hurt"  # the pick's own test result, good or bad
        assert head[0]["line"].startswith("Selected on validation, over every generator: cvae (frac50) all budgets, on test: "
                                          "synthetic data hurt vs real+classic")
        assert "(12 budget-seed pairs, 1 generator seed)" not in head[0]["line"]  # 6 pairs: 2 budgets x 3 seeds
        assert "(6 budget-seed pairs, 1 generator seed)" in head[0]["line"]
        assert {(v["generator"], v["arm"]) for v in lines if not v["headline"]} == {("cvae", "frac50"), ("ldm", "real+synthetic+classic")}
        assert all(v["selected_on"] == "validation" for v in lines)
        # and through the report files: the selection recorded is the val one, the exploratory ranking the test one
        out = tmp_path / f"r{scale}"
        write_report(out, [], test, {}, {"name": "t", "protocol": "p", "generator_seed_count": 1}, validation=VAL)
        rep = json.loads((out / "report.json").read_text())
        assert rep["selection"]["segmentation"]["overall"] == ["cvae", "frac50"]
        assert rep["ranking"]["segmentation"][0]["arm"] == "ldm: frac50"
        text = summary_text(out)
        assert text.index("Selected on validation, over every generator: cvae (frac50)") < text.index("Ranking on test")
        assert "which ranks 4 of 4 on test; the best on test (exploratory) is ldm: frac50" in text
        assert "Every interval here covers task-model seeds only" in text


def test_a_pick_that_did_not_beat_real_classic_on_validation_is_called_the_least_bad(tmp_path):
    val = VAL.assign(value=VAL["value"] - 0.1 * (VAL["arm"] != "real+classic"))  # every synthetic arm below on val
    write_report(tmp_path, [], _poisoned(0.05), {}, {"name": "t", "protocol": "p"}, validation=val)
    text = summary_text(tmp_path)
    assert "On validation no synthetic arm or recipe beat real+classic (the best, cvae: frac50, by -0.05" in text
    assert "so the pick is the least bad. Picked on validation: cvae: frac50" in text
    write_report(tmp_path, [], _poisoned(0.05), {}, {"name": "t", "protocol": "p"}, validation=VAL)
    assert "least bad" not in summary_text(tmp_path)


def test_selection_reads_only_the_rows_it_is_given():
    # a val frame that holds no row of an arm cannot pick it, whatever test says
    val = VAL[VAL["arm"] != "frac50"]
    picks = select_on_validation(val)
    assert picks["segmentation"]["overall"] == ("ldm", "real+synthetic+classic")
    assert select_on_validation(VAL.iloc[0:0]) == {}


def test_without_val_scores_the_verdict_says_it_picked_on_test(tmp_path):
    test = _poisoned(0.05)
    write_report(tmp_path, [], test, {}, {"name": "t", "protocol": "p"})
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["selection"] == {} and {v["selected_on"] for v in rep["verdicts"]} == {"test"}
    assert "No validation scores were recorded" in summary_text(tmp_path)


def test_the_exploratory_ranking_is_holm_adjusted_across_every_comparison():
    deltas = {("g", "a"): [0.05, 0.04, 0.06, 0.05, 0.07, 0.03], ("g", "b"): [0.01, -0.02, 0.03, 0.0, 0.02, -0.01],
              ("h", "a"): [-0.04, -0.05, -0.03, -0.06, -0.04, -0.05]}
    table = exploratory(_rows(deltas), "segmentation")
    assert list(table["arm"]) == ["g: a", "g: b", "h: a"]
    # by hand: one-sample t-tests, Holm over m = 3 in ascending p; simultaneous interval of step r at 1 - 0.05 / (3 - r)
    p = {k: stats.ttest_1samp(v, 0.0).pvalue for k, v in deltas.items()}
    order = sorted(p, key=p.get)
    holm, running = {}, 0.0
    for r, k in enumerate(order):
        running = max(running, min(1.0, (3 - r) * p[k]))
        holm[k] = running
    for (g, a), row in zip([("g", "a"), ("g", "b"), ("h", "a")], table.itertuples()):
        x = np.asarray(deltas[(g, a)])
        assert abs(row.p - p[(g, a)]) < 1e-9 and abs(row.p_holm - holm[(g, a)]) < 1e-9
        r = order.index((g, a))
        half = stats.t.ppf(1 - 0.05 / (3 - r) / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
        assert abs(row.holm_ci_low - (x.mean() - half)) < 1e-9 and abs(row.holm_ci_high - (x.mean() + half)) < 1e-9
        # wider than the unadjusted interval (the first step is at 1 - 0.05 / 3)
        assert row.holm_ci_low <= row.dice_ci_low + 1e-12
    assert table.loc[table["arm"] == "g: b", "p_holm"].iloc[0] > 0.05 and table.loc[table["arm"] == "g: a", "p_holm"].iloc[0] < 0.05


def test_classification_verdicts_give_balanced_accuracy_and_the_rarest_class_recall():
    rows = []
    for budget in (50, 100):
        for seed in range(3):
            for arm, gen, bacc, recall in (("real+classic", "none", 0.5, 0.2), ("frac50", "cvae", 0.51 + 0.002 * seed, 0.35 + 0.01 * seed)):
                rows += [{"task": "classification", "budget": budget, "generator": gen, "arm": arm, "seed": seed,
                          "metric": m, "value": v} for m, v in (("balanced_accuracy", bacc), ("minority_recall", recall))]
    rows = pd.DataFrame(rows)
    lines = verdicts(rows, select_on_validation(rows), generator_seeds=3)
    assert [(v["budget"], v["metric"]) for v in lines] == [
        (50, "balanced_accuracy"), (50, "minority_recall"), (100, "balanced_accuracy"), (100, "minority_recall"),
        (None, "balanced_accuracy"), (None, "minority_recall")]
    recall = lines[-1]
    assert recall["verdict"] == "helped" and abs(recall["delta"] - 0.16) < 1e-9 and recall["n_pairs"] == 6
    assert "synthetic data helped vs real+classic: +0.160 minority-class recall [" in recall["line"]
    assert recall["line"].endswith("(6 budget-seed pairs, 3 generator seeds)")


def test_copy_paste_is_ranked_and_every_arm_is_compared_against_it_paired():
    from augment.verdicts import COPYPASTE, ranking

    deltas = {("none", COPYPASTE): [0.02, 0.03, 0.01, 0.02, 0.04, 0.03],
              ("cvae_inpaint", "frac50"): [0.06, 0.05, 0.07, 0.06, 0.05, 0.08],
              ("cvae_mask", "frac50"): [0.0, 0.02, 0.01, 0.03, 0.02, 0.02]}
    rows = _rows(deltas)
    table = ranking(rows).set_index("arm")
    assert list(table.index) == ["cvae_inpaint: frac50", COPYPASTE, "cvae_mask: frac50"]  # copy-paste ranked with them
    diff = np.array(deltas[("cvae_inpaint", "frac50")]) - np.array(deltas[("none", COPYPASTE)])
    half = stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff))
    row = table.loc["cvae_inpaint: frac50"]
    assert abs(row["dice_delta_vs_copypaste"] - diff.mean()) < 1e-12
    assert abs(row["dice_ci_low_vs_copypaste"] - (diff.mean() - half)) < 1e-12
    assert row["verdict_vs_copypaste"] == "better"
    assert abs(row["dice_delta_vs_copypaste_b16"] - diff[:3].mean()) < 1e-12
    assert table.loc["cvae_mask: frac50", "verdict_vs_copypaste"] == "no evidence"
    assert pd.isna(table.loc[COPYPASTE, "dice_delta_vs_copypaste"])  # not against itself
    lines = {(v["generator"], v["budget"]): v["line"] for v in verdicts(rows, generator_seeds=3)}
    assert "it beat copy-paste: +0.037" in lines[("cvae_inpaint", None)]
    assert lines[("none", None)].startswith("copy-paste (real+copypaste+classic) all budgets: pasted real lesions helped")
    assert "generator seed" not in lines[("none", None)]  # copy-paste trains no generator
    assert "did not beat copy-paste" in lines[("cvae_mask", None)]


def test_the_ranking_table_shows_the_delta_against_copy_paste_only_when_it_was_trained():
    from augment.report import ranking_text
    from augment.verdicts import COPYPASTE, ranking

    with_cp = _rows({("none", COPYPASTE): [0.02] * 6, ("cvae", "frac50"): [0.05, 0.04, 0.06, 0.05, 0.05, 0.04]})
    text = ranking_text(ranking(with_cp))
    assert "vs copy-paste [95% CI]" in text.splitlines()[0]
    assert "+0.028 [+0.020, +0.036]" in text  # cvae's paired delta against copy-paste (t-interval by hand: 0.0204, 0.0362)
    assert "vs copy-paste" not in ranking_text(ranking(_rows({("cvae", "frac50"): [0.05] * 6})))
