"""The report on awkward inputs: class and arm names with matplotlib mathtext, sets without a
normal (lesion-free) test image, and downstream metrics that are undefined (None) for some seeds."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest

from augment.report import write_report
from augment.verdicts import mean_ci, ranking, summarize, verdicts
from tests.conftest import TINY, TINY_SPEC_TASK, run_cli, write_folder, yaml_items

MATH = r"$\foo$ 50%_x"  # mathtext that matplotlib cannot parse: a figure drawing it raw fails to render

FPR_LINE = "no test image without a lesion: false-positive rate not measured"


def _drawn_literally(fig) -> list[str]:
    """Every text of ``fig`` as it is drawn, after checking none is parsed as mathtext, and the
    figure rendered to PNG (where a bad mathtext string would raise)."""
    from matplotlib.text import Text

    from augment.figures import png

    texts = [t for t in fig.findobj(Text) if t.get_text()]
    shown = []
    for t in texts:
        s, math_mode = t._preprocess_math(t.get_text())
        assert not math_mode, t.get_text()
        shown.append(s)
    assert png(fig).startswith(b"\x89PNG")
    return shown


def test_class_names_with_mathtext_are_drawn_literally():
    from augment.figures import figure_class_balance, figure_grid

    plan = pd.DataFrame({"class": [1, 2], "name": ["benign", MATH], "real": [3, 2], "synthetic": [0, 1]})
    assert MATH in _drawn_literally(figure_class_balance(plan))
    tile = (np.zeros((8, 8), np.uint8), np.ones((8, 8), np.uint8))
    fig = figure_grid([(*tile, 1), (*tile, 2)], [(*tile, 2)], {1: "$x$", 2: MATH}, per_class=1,
                      why={1: "the manifest asked for 0 (strategy $y$)"})
    shown = "\n".join(_drawn_literally(fig))
    assert f"{MATH}, real" in shown and "$x$, real" in shown and "strategy $y$" in shown


def test_generator_and_arm_names_with_mathtext_are_drawn_literally():
    from augment.figures import figure_metric_vs_budget

    rows = []
    for budget in (8, 16):
        for seed in range(2):
            for generator, arm, v in (("none", "real", 0.4), ("$g$", r"$\bar$ recipe", 0.5)):
                rows.append({"task": "segmentation", "budget": budget, "generator": generator, "arm": arm, "seed": seed,
                             "metric": "dice", "value": v + 0.01 * seed})
    summary = summarize(pd.DataFrame(rows))
    shown = _drawn_literally(figure_metric_vs_budget(summary, "segmentation", "dice"))
    assert "$g$" in shown and r"$\bar$ recipe" in shown
    one = summary[summary["budget"] == 8]
    shown = _drawn_literally(figure_metric_vs_budget(one, "segmentation", "dice"))
    assert "$g$" in shown and r"$\bar$ recipe" in shown


# ---- downstream metrics that are undefined (None) for some results ----

def _cls_rows(undefined_seed: int | None = 1) -> pd.DataFrame:
    """Classification, budget 16, 3 seeds: real+classic and one synthetic arm, balanced accuracy
    always, AUROC None at ``undefined_seed`` for the synthetic arm (a class absent from its test labels)."""
    rows = []
    for seed in range(3):
        for generator, arm, ba, auc in (("none", "real+classic", 0.50, 0.70), ("g", "real+synthetic+classic", 0.55, 0.80)):
            rows.append({"task": "classification", "budget": 16, "generator": generator, "arm": arm, "seed": seed,
                         "metric": "balanced_accuracy", "value": ba + 0.01 * seed})
            rows.append({"task": "classification", "budget": 16, "generator": generator, "arm": arm, "seed": seed,
                         "metric": "auroc", "value": None if (generator == "g" and seed == undefined_seed) else auc + 0.01 * seed})
    return pd.DataFrame(rows)


def test_mean_ci_leaves_a_none_out_and_never_counts_it_as_zero():
    assert mean_ci([0.5, None, 0.7])[0] == pytest.approx(0.6)
    assert mean_ci([None, 0.5])[:1] == (0.5,) and math.isnan(mean_ci([None, 0.5])[1])
    assert all(math.isnan(v) for v in mean_ci([None, None]))


def test_summary_and_paired_deltas_skip_a_none_value_and_count_it():
    s = summarize(_cls_rows()).set_index(["generator", "arm", "metric"])
    auc = s.loc[("g", "real+synthetic+classic", "auroc")]
    assert auc["mean"] == pytest.approx((0.80 + 0.82) / 2) and auc["n"] == 2 and auc["n_undefined"] == 1
    assert auc["delta_vs_classic"] == pytest.approx(0.10)  # the pairs of seeds 0 and 2 only
    assert s.loc[("none", "real+classic", "auroc"), "n_undefined"] == 0
    table = ranking(_cls_rows(), "classification").iloc[0]
    assert table["n_pairs"] == 3 and table["balanced_accuracy_delta"] == pytest.approx(0.05)
    lines = verdicts(_cls_rows())
    assert lines and lines[0]["metric"] == "balanced_accuracy" and lines[0]["n_pairs"] == 3


def test_a_ranked_second_metric_that_is_none_is_left_out_of_its_delta():
    rows = _cls_rows()
    rows.loc[rows["metric"] == "auroc", "metric"] = "minority_recall"  # the ranking's second metric
    table = ranking(rows, "classification").iloc[0]
    assert table["minority_recall_delta"] == pytest.approx(0.10) and table["verdict_minority_recall"] != "worse"


def test_the_report_says_how_many_values_were_undefined_and_writes_no_nan(tmp_path):
    meta = {"name": "t", "protocol": "p", "undefined": [
        {"task": "classification", "budget": 16, "generator": "g", "arm": "real+synthetic+classic", "seed": 1, "metric": "auroc",
         "reason": "class malignant has no test image"}]}
    write_report(tmp_path, [], _cls_rows(), {}, meta)
    md = (tmp_path / "report.md").read_text()
    assert "AUROC: 1 result undefined (class malignant has no test image); left out of the means and deltas, never counted as 0." in md
    for name in ("report.md", "report.html"):
        assert not re.search(r"\bnan\b", (tmp_path / name).read_text(), re.IGNORECASE), name
    rep = json.loads((tmp_path / "report.json").read_text())
    assert any(r["metric"] == "auroc" and r["n_undefined"] == 1 for r in rep["summary"])


# ---- a set without normal images: no false-positive rate ----

def _seg_rows(fpr: str) -> pd.DataFrame:
    """Segmentation at budget 16, 2 seeds; the fpr rows NaN (``nan``: an older results.csv) or absent (``absent``)."""
    rows = []
    for seed in range(2):
        for generator, arm, dice in (("none", "real", 0.4), ("none", "real+classic", 0.45), ("g", "real+synthetic+classic", 0.5)):
            rows.append({"task": "segmentation", "budget": 16, "generator": generator, "arm": arm, "seed": seed, "metric": "dice",
                         "value": dice + 0.01 * seed})
            if fpr == "nan":
                rows.append({"task": "segmentation", "budget": 16, "generator": generator, "arm": arm, "seed": seed, "metric": "fpr",
                             "value": float("nan")})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("fpr", ["nan", "absent"])
def test_without_normal_test_images_the_fpr_table_is_left_out_and_the_report_says_why(tmp_path, fpr):
    write_report(tmp_path, [], _seg_rows(fpr), {}, {"name": "t", "protocol": "p"})
    md = (tmp_path / "report.md").read_text()
    assert FPR_LINE in md and "## false-positive rate" not in md and "fpr delta" not in md
    assert "## Dice: mean [95% CI]" in md
    assert FPR_LINE in (tmp_path / "report.html").read_text()


def test_with_normal_test_images_the_fpr_table_stays(tmp_path):
    rows = _seg_rows("absent")
    rows = pd.concat([rows, rows.assign(metric="fpr", value=0.3)])
    write_report(tmp_path, [], rows, {}, {"name": "t", "protocol": "p"})
    md = (tmp_path / "report.md").read_text()
    assert "## false-positive rate: mean [95% CI]" in md and FPR_LINE not in md


# ---- end to end: augment run / augment report on a folder whose class is named in mathtext, without normal images ----

def test_a_pipeline_with_a_mathtext_class_and_no_normal_images_gets_its_report(tmp_path):
    src = write_folder(tmp_path / "src", {1: 12, 2: 12}, size=16)  # every image has a lesion: no normal test image
    # the class named in mathtext gets no synthetic pairs (balance.classes), so its name is drawn in the class-balance
    # bars, the real row of the sample grid and the grid's "not shown" note, and written in a caption
    pd.DataFrame({"label": [1, 2], "name": ["benign", MATH]}).to_csv(src / "classes.csv", index=False)
    spec = tmp_path / "p.yaml"
    spec.write_text(f"""name: mathtext
data: {{source: {src}}}
generator: {{family: cvae, {yaml_items(TINY['cvae'])}}}
train: {{max_steps: 3, batch_size: 8, checkpoint_every: 100}}
budgets: [8]
seeds: [0]
balance: {{strategy: ratio, ratio: 1.0, classes: [1]}}
audit: {{enabled: false}}
evaluate: {{arms: [real, real+synthetic], recipes: {{}}, segmentation: {{{yaml_items(TINY_SPEC_TASK)}}}}}
""")
    out = tmp_path / "out"
    res = run_cli("run", spec, "--out", out)
    assert res.returncode == 0, res.stderr[-3000:]
    for attempt in ("run", "report"):
        if attempt == "report":
            (out / "report.html").unlink()
            res = run_cli("report", out)
            assert res.returncode == 0, res.stderr[-3000:]
        page = (out / "report.html").read_text()
        assert f"Class {MATH}: the manifest asked for 0 (balance.classes leaves it out)" in page and FPR_LINE in page, attempt
        figures = sorted(p.name for p in (out / "figures").iterdir())
        assert "class_balance_cvae.png" in figures and "samples_cvae.png" in figures and "segmentation_dice_vs_budget.png" in figures
        assert "segmentation_fpr_vs_budget.png" not in figures
        assert page.count("data:image/png;base64,") == len(figures)
    assert FPR_LINE in res.stdout
    meta = json.loads((out / "report.json").read_text())["meta"]
    assert isinstance(meta["undefined"], list) and all({"metric", "reason", "arm", "seed"} <= set(r) for r in meta["undefined"])
