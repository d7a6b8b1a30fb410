"""Summaries: means, t-intervals and paired deltas, and the report files."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from augment.report import summary_table, write_report
from augment.verdicts import mean_ci, summarize


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
    from augment.report import ranking_text
    from augment.verdicts import ranking

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


def test_the_report_leads_with_the_verdict_then_the_ranking(tmp_path):
    write_report(tmp_path, [], _recipe_rows(), {}, {"name": "t", "protocol": "p"})
    md = (tmp_path / "report.md").read_text()
    verdict = "g (good) all budgets: synthetic data helped vs real+classic: +0.060 Dice ["
    assert md.index(verdict) < md.index("ranked by paired delta vs real+classic") < md.index("## Dice")
    assert json.loads((tmp_path / "report.json").read_text())["ranking"]["segmentation"][0]["recipe"] == "good"
    assert pd.read_csv(tmp_path / "tables" / "ranking_segmentation.csv")["arm"].tolist() == ["g: good", "g: flat"]
    assert "ranked by" in (tmp_path / "report.html").read_text()


def _frame(deltas: dict[str, list[float]], budget: int = 16) -> pd.DataFrame:
    """real+classic at 0.5 + 0.01 * seed, and per generator a real+synthetic+classic arm that
    differs from it by the given delta at each seed."""
    rows = []
    for seed in range(len(next(iter(deltas.values())))):
        base = 0.5 + 0.01 * seed
        rows.append({"task": "segmentation", "budget": budget, "generator": "none", "arm": "real+classic", "seed": seed,
                     "metric": "dice", "value": base})
        rows += [{"task": "segmentation", "budget": budget, "generator": g, "arm": "real+synthetic+classic", "seed": seed,
                  "metric": "dice", "value": base + d[seed]} for g, d in deltas.items()]
    return pd.DataFrame(rows)


def test_verdict_wording_follows_the_interval():
    from augment.verdicts import verdicts

    lines = {v["generator"]: v for v in verdicts(_frame({"up": [0.04, 0.05, 0.06], "flat": [-0.02, 0.01, 0.03],
                                                          "down": [-0.05, -0.04, -0.06]}))}
    assert {g: v["verdict"] for g, v in lines.items()} == {"up": "helped", "flat": "did not help", "down": "hurt"}
    m, lo, hi = mean_ci([0.04, 0.05, 0.06])
    assert lines["up"]["line"] == (f"up (real+synthetic+classic) b16: synthetic data helped vs real+classic: "
                                   f"+0.050 Dice [{lo:+.3f}, {hi:+.3f}] (3 seeds)")
    assert "did not help vs real+classic: +0.007 Dice [" in lines["flat"]["line"]
    assert lines["down"]["line"].startswith("down (real+synthetic+classic) b16: synthetic data hurt vs real+classic: -0.050 Dice")
    assert all(v["budget"] == 16 and v["n_pairs"] == 3 for v in lines.values())  # one budget: no pooled line


def test_verdicts_pool_over_budgets_and_pick_each_generators_best_arm():
    from augment.verdicts import verdicts

    rows = pd.concat([_frame({"g": [0.04, 0.05, 0.06]}, 16), _frame({"g": [0.01, 0.02, 0.0]}, 32)])
    worse = rows[rows["generator"] == "g"].assign(arm="synthetic", value=lambda f: f["value"] - 0.2)
    found = verdicts(pd.concat([rows, worse]))
    assert [(v["arm"], v["budget"], v["verdict"]) for v in found] == [
        ("real+synthetic+classic", 16, "helped"), ("real+synthetic+classic", 32, "did not help"),
        ("real+synthetic+classic", None, "helped")]
    assert found[-1]["line"].startswith("g (real+synthetic+classic) all budgets:") and found[-1]["n_pairs"] == 6


def test_one_seed_says_so_and_leaves_no_nan(tmp_path):
    rows = _frame({"g": [0.03]})
    rows = pd.concat([rows, rows.assign(metric="fpr", value=0.5)])
    quality = [{"generator": "g", "budget": 16, "seed": 0, "metric": "copies", "extractor": "pixels+domain", "value": 0,
                "baseline": None, "n_real": None, "n_synthetic": None},
               {"generator": "g", "budget": 16, "seed": 0, "metric": "frechet_distance", "extractor": "domain", "value": 3.0,
                "baseline": 2.0, "n_real": 10, "n_synthetic": 10}]
    write_report(tmp_path, quality, rows, {}, {"name": "t", "protocol": "p"})
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["verdicts"][0]["verdict"] == "unknown" and rep["verdicts"][0]["ci_low"] is None
    for name in ("report.md", "report.html"):
        text = (tmp_path / name).read_text()
        assert "not enough seeds for an interval" in text and "+0.030 Dice" in text
        assert "nan" not in text.lower(), name


def _audit_rows(fd: float, memorised: float) -> list[dict]:
    rows = [("frechet_distance", "domain", fd, 10.0), ("kid", "domain", 0.02, 0.01), ("memorisation_fraction", "pixels+domain", memorised, 0.01),
            ("diversity_ssim_class_1", "pixels", 0.30, 0.10), ("diversity_ssim_class_2", "pixels", 0.15, 0.10),
            ("mask_dice_class_1", "segmenter", 0.70, 0.75), ("nearest_real_ssim", "pixels", 0.3, 0.2)]
    return [{"generator": "g", "budget": 16, "seed": s, "metric": m, "extractor": e, "value": v, "baseline": b, "n_real": 10, "n_synthetic": 10}
            for s in (0, 1) for m, e, v, b in rows]


def test_audit_checks_pass_or_flag_by_their_stated_rule(tmp_path):
    from augment.verdicts import checks

    table = checks(_audit_rows(fd=25.0, memorised=0.0), {1: "benign", 2: "malignant"}).set_index("check")
    assert table["result"].to_dict() == {
        "Fréchet distance (domain encoder)": "pass",  # 25 <= 3 x 10
        "KID (domain encoder)": "pass", "memorised fraction": "pass",
        "diversity (class benign)": "flag",  # the least diverse class: 0.30 vs 0.10
        "mask consistency (class benign)": "pass"}
    flagged = checks(_audit_rows(fd=31.0, memorised=0.02)).set_index("check")["result"]
    assert flagged["Fréchet distance (domain encoder)"] == "flag" and flagged["memorised fraction"] == "flag"
    write_report(tmp_path, _audit_rows(fd=31.0, memorised=0.02), _frame({"g": [0.01, 0.02]}), {},
                 {"name": "t", "protocol": "p", "inception": [{"computed": False, "reason": "no --inception-weights given"}]})
    md = (tmp_path / "report.md").read_text()
    assert md.index("## Audit: pass / flag") < md.index("## Details: the full quality")
    assert "flag when above 3x the real-vs-real baseline" in md
    assert "Inception FID not computed: no Inception weights given" in md and "domain encoder" in md
    assert json.loads((tmp_path / "report.json").read_text())["audit_checks"][0]["result"] == "flag"


def test_a_single_budget_is_drawn_as_grouped_bars_with_error_bars():
    from matplotlib.container import BarContainer, ErrorbarContainer

    from augment.figures import figure_metric_vs_budget, metric_caption

    summary = summarize(pd.concat([_frame({"g": [0.04, 0.05, 0.06], "h": [0.0, 0.01, 0.02]}),
                                   _frame({"g": [0.0, 0.0, 0.0]}).query("arm == 'real+classic'").assign(arm="real", value=0.4)]))
    ax = figure_metric_vs_budget(summary, "segmentation", "dice").axes[0]
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert len(bars) == 4 and len([c for c in ax.containers if isinstance(c, ErrorbarContainer)]) == 4
    assert not ax.lines or all(line.get_linestyle() == "--" for line in ax.lines if len(line.get_xdata()) > 2)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["real arms", "g", "h"]
    assert metric_caption(summary, "segmentation", "dice").startswith("Dice on the real test split at label budget 16, mean and 95% CI over 3 seeds")


def test_several_budgets_are_lines_with_shaded_intervals():
    from matplotlib.collections import PolyCollection

    from augment.figures import figure_metric_vs_budget

    ax = figure_metric_vs_budget(summarize(_recipe_rows()), "segmentation", "dice").axes[0]
    assert len(ax.lines) == 3 and len([c for c in ax.collections if isinstance(c, PolyCollection)]) == 3


def test_the_grid_drops_a_class_without_synthetic_pairs_and_says_why():
    import numpy as np

    from augment.figures import figure_grid, synthetic_shortfalls

    tile = (np.zeros((8, 8), np.uint8), np.ones((8, 8), np.uint8))
    real = [(*tile, c) for c in (0, 1, 2) for _ in range(2)]
    synthetic = [(*tile, c) for c in (1, 2) for _ in range(3)]
    plan = pd.DataFrame({"class": [0, 1, 2], "name": ["normal", "benign", "malignant"], "real": [2, 2, 2], "synthetic": [0, 3, 3]})
    why = synthetic_shortfalls(plan, {1: 3, 2: 3}, "match_max")
    assert why == {0: "the manifest asked for 0 (it already has the most images)"}
    assert synthetic_shortfalls(plan, {1: 1, 2: 3}, "ratio")[1] == "the manifest asked for 3, the generator made 1"
    fig = figure_grid(real, synthetic, {0: "normal", 1: "benign", 2: "malignant"}, per_class=2, why=why)
    grid = fig.axes[0].get_subplotspec().get_gridspec()
    assert grid.nrows == 5 and grid.ncols == 5  # 3 real + 2 synthetic rows; per example image | mask, a gap between
    for r in range(grid.nrows):
        assert fig.axes[r * grid.ncols].images and fig.axes[r * grid.ncols + 1].images  # image and mask side by side
    titles = [ax.get_title(loc="left") for ax in fig.axes if ax.get_title(loc="left")]
    assert titles[:2] == ["normal, real (image | mask)", "benign, real (image | mask)"] and len(titles) == 5
    assert all(t.get_fontsize() >= 8 for t in fig.texts) and any(
        "class normal: no synthetic pairs — the manifest asked for 0 (it already has the most images)" in t.get_text() for t in fig.texts)


def test_figures_get_sentence_captions_in_the_html(tmp_path):
    write_report(tmp_path, [], _recipe_rows(), {"segmentation_dice_vs_budget": b"\x89PNG fake", "class_balance_g": b"\x89PNG"},
                 {"name": "t", "protocol": "p"}, {"segmentation_dice_vs_budget": "Dice on the real test split vs label budget."})
    page = (tmp_path / "report.html").read_text()
    assert "<figcaption>Dice on the real test split vs label budget.</figcaption>" in page
    assert "<figcaption>class balance g</figcaption>" in page and (tmp_path / "figures" / "class_balance_g.png").is_file()
