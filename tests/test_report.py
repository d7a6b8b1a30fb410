"""Summaries: means, t-intervals and paired deltas, and the report files."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from augment.report import mean_ci, summarize, summary_table, write_report


def test_mean_ci_known_values():
    m, lo, hi = mean_ci([1.0, 2.0, 3.0])
    # t(0.975, 2) = 4.302653; sd = 1; half = 4.302653 / sqrt(3)
    assert m == 2.0 and hi - m == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6) and m - lo == pytest.approx(hi - m)
    m, lo, hi = mean_ci([0.5])
    assert m == 0.5 and math.isnan(lo) and math.isnan(hi)
    assert math.isnan(mean_ci([float("nan")])[0])


def _rows():
    rows = []
    for seed, (r, c, s) in enumerate([(0.30, 0.40, 0.45), (0.35, 0.42, 0.44), (0.40, 0.47, 0.52)]):
        for arm, v in (("real", r), ("real+classic", c), ("real+synthetic", s)):
            rows.append({"task": "segmentation", "budget": 16, "arm": arm, "seed": seed, "metric": "dice", "value": v})
    return pd.DataFrame(rows)


def test_paired_deltas_use_the_same_seed():
    s = summarize(_rows()).set_index("arm")
    assert s.loc["real", "mean"] == pytest.approx(0.35)
    assert s.loc["real+synthetic", "delta_vs_real"] == pytest.approx((0.15 + 0.09 + 0.12) / 3)
    assert s.loc["real+synthetic", "delta_vs_classic"] == pytest.approx((0.05 + 0.02 + 0.05) / 3)
    # the paired interval is narrower than the unpaired spread would suggest
    d, lo, hi = mean_ci([0.05, 0.02, 0.05])
    assert s.loc["real+synthetic", "delta_vs_classic_ci_low"] == pytest.approx(lo)
    assert math.isnan(s.loc["real"].get("delta_vs_real", float("nan")))


def test_summary_table_and_files(tmp_path):
    table = summary_table(summarize(_rows()), "dice")
    assert list(table.index) == ["real", "real+classic", "synthetic: real+synthetic"] and list(table.columns) == [16]
    assert table.loc["real", 16].startswith("0.350 [")
    out = write_report(tmp_path, [{"metric": "kid", "extractor": "domain", "value": 0.1, "baseline": 0.05, "n_real": 5, "n_synthetic": 5}],
                       _rows(), {"fig": b"\x89PNG fake"}, {"name": "t", "protocol": "p"})
    rep = json.loads((out / "report.json").read_text())
    assert set(rep) >= {"quality", "downstream", "summary"} and len(rep["downstream"]) == 9
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "0.350 [" in html and "kid" in html
    assert (out / "figures" / "fig.png").read_bytes() == b"\x89PNG fake"
    assert "dice" in (out / "report.md").read_text()


def test_intervals_are_clipped_to_the_metric_range():
    rows = pd.DataFrame([{"task": "segmentation", "budget": 8, "arm": "real", "seed": s, "metric": "fpr", "value": v}
                         for s, v in enumerate([0.0, 1.0])])
    r = summarize(rows).iloc[0]
    assert r["mean"] == 0.5 and r["ci_low"] == 0.0 and r["ci_high"] == 1.0


def _two_generators():
    rows = []
    for seed, (r, c, a, b) in enumerate([(0.30, 0.40, 0.45, 0.38), (0.35, 0.42, 0.44, 0.40), (0.40, 0.47, 0.52, 0.45)]):
        rows += [{"task": "segmentation", "budget": 16, "generator": "none", "arm": "real", "seed": seed, "metric": "dice", "value": r},
                 {"task": "segmentation", "budget": 16, "generator": "none", "arm": "real+classic", "seed": seed, "metric": "dice", "value": c},
                 {"task": "segmentation", "budget": 16, "generator": "ldm", "arm": "real+synthetic+classic", "seed": seed, "metric": "dice", "value": a},
                 {"task": "segmentation", "budget": 16, "generator": "cvae", "arm": "real+synthetic+classic", "seed": seed, "metric": "dice", "value": b}]
    return pd.DataFrame(rows)


def test_generators_are_compared_against_the_shared_real_arms():
    from augment.report import delta_table

    s = summarize(_two_generators()).set_index(["generator", "arm"])
    assert s.loc[("ldm", "real+synthetic+classic"), "delta_vs_classic"] == pytest.approx((0.05 + 0.02 + 0.05) / 3)
    assert s.loc[("cvae", "real+synthetic+classic"), "delta_vs_classic"] == pytest.approx((-0.02 - 0.02 - 0.02) / 3)
    table = summary_table(summarize(_two_generators()), "dice")
    assert list(table.index) == ["real", "real+classic", "cvae: real+synthetic+classic", "ldm: real+synthetic+classic"]
    deltas = delta_table(summarize(_two_generators()), "dice")
    assert deltas.loc["ldm: real+synthetic+classic", 16].startswith("+0.040 [")
    assert deltas.loc["cvae: real+synthetic+classic", 16].startswith("-0.020")


def test_shared_arms_repeated_by_several_evaluations_count_once():
    rows = _two_generators()
    dup = rows[rows["arm"] == "real"].assign(generator="cvae")  # a standalone evaluate labels them with its family
    s = summarize(pd.concat([rows, dup]))
    real = s[(s["arm"] == "real")]
    assert len(real) == 1 and real["n"].item() == 3 and real["generator"].item() == "none"


def test_unbounded_metrics_are_not_clipped():
    rows = pd.DataFrame([{"task": "segmentation", "budget": 8, "arm": "real", "seed": s, "metric": "hausdorff", "value": v}
                         for s, v in enumerate([0.5, 9.0])])
    r = summarize(rows).iloc[0]
    assert r["ci_low"] < 0 and r["ci_high"] > 9  # a t-interval over 2 seeds, untouched


def _recipe_rows():
    """Two budgets x three seeds: recipe `good` beats real+classic by 0.05-0.07 Dice, `flat` ties it."""
    rows = []
    for budget in (16, 32):
        for seed in range(3):
            base = 0.40 + 0.1 * (budget == 32) + 0.01 * seed
            cells = [("none", "real+classic", base, 0.8), ("g", "good", base + 0.05 + 0.01 * seed, 0.6),
                     ("g", "flat", base + (0.01 if seed % 2 else -0.01), 0.8 + 0.05 * (seed - 1))]
            for generator, arm, dice, fpr in cells:
                for metric, value in (("dice", dice), ("fpr", fpr)):
                    rows.append({"task": "segmentation", "budget": budget, "generator": generator, "arm": arm,
                                 "seed": seed, "metric": metric, "value": value})
    return pd.DataFrame(rows)


def test_recipes_are_ranked_by_pooled_paired_delta_with_verdicts():
    from augment.report import ranking, ranking_text

    table = ranking(_recipe_rows()).set_index("recipe")
    assert table.loc["good", "rank"] == 1 and table.loc["flat", "rank"] == 2
    assert table.loc["good", "n_pairs"] == 6 and table.loc["good", "dice_delta"] == pytest.approx(0.06)
    m, lo, hi = mean_ci([0.05, 0.06, 0.07] * 2)
    assert table.loc["good", "dice_ci_low"] == pytest.approx(lo) and table.loc["good", "dice_delta_b32"] == pytest.approx(0.06)
    assert table.loc["good", "verdict_dice"] == "better" and table.loc["flat", "verdict_dice"] == "no evidence"
    # fewer false positives is better
    assert table.loc["good", "fpr_delta"] == pytest.approx(-0.2) and table.loc["good", "verdict_fpr"] == "better"
    text = ranking_text(ranking(_recipe_rows()))
    assert text.index("g: good") < text.index("g: flat") and "better" in text and "b16" in text


def test_the_report_leads_with_the_ranking(tmp_path):
    write_report(tmp_path, [], _recipe_rows(), {}, {"name": "t", "protocol": "p"})
    md = (tmp_path / "report.md").read_text()
    assert md.index("ranked by paired delta vs real+classic") < md.index("## dice")
    assert json.loads((tmp_path / "report.json").read_text())["ranking"]["segmentation"][0]["recipe"] == "good"
    assert pd.read_csv(tmp_path / "tables" / "ranking_segmentation.csv")["arm"].tolist() == ["g: good", "g: flat"]
    assert "ranked by" in (tmp_path / "report.html").read_text()
