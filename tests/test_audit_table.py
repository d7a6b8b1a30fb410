"""The audit's checks: FRD and precision / recall / density / coverage by their stated rules, the
table with one row per generator and budget, and the report's files with and without the new rows."""

from __future__ import annotations

import pandas as pd
import pytest

from augment.report import write_report
from augment.verdicts import CHECK_RULES, audit_table, checks


def _quality(generator: str, budget: int, **values) -> list[dict]:
    """Audit rows of one generator and budget, two seeds alike: ``metric=(value, baseline)``."""
    extractor = {"frechet_distance": "domain", "frd": "radiomics", "memorisation_fraction": "pixels+domain",
                 "diversity_ssim_class_1": "pixels"}
    return [{"generator": generator, "budget": budget, "seed": s, "metric": m, "extractor": extractor.get(m, "domain"),
             "value": v, "baseline": b, "n_real": 10, "n_synthetic": 10} for s in (0, 1) for m, (v, b) in values.items()]


@pytest.mark.parametrize(("metric", "value", "baseline", "result"), [
    ("frd", 30.0, 10.0, "pass"), ("frd", 30.1, 10.0, "flag"),  # 3x the real-vs-real baseline
    ("precision", 0.61, 0.80, "pass"), ("precision", 0.59, 0.80, "flag"),  # 0.20 below it
    ("recall", 0.55, 0.70, "pass"), ("recall", 0.45, 0.70, "flag"),
    ("coverage", 0.95, 0.90, "pass"), ("coverage", 0.60, 0.90, "flag"),
    ("density", 0.51, 1.00, "pass"), ("density", 0.49, 1.00, "flag"),  # half the baseline
])
def test_frd_and_prdc_checks_follow_their_stated_rules(metric, value, baseline, result):
    table = checks(_quality("g", 16, **{metric: (value, baseline)}))
    assert len(table) == 1 and table["result"].item() == result and table["kind"].item() == metric
    assert table["check"].item() == ("FRD (radiomics)" if metric == "frd" else f"{metric} (domain encoder)")
    assert metric in CHECK_RULES


def test_the_wide_table_has_a_row_per_generator_and_budget_and_a_column_per_check():
    long = pd.DataFrame([
        ("a", 16, "Fréchet distance (domain encoder)", "frechet_distance", 31.0, 10.0, "flag"),
        ("a", 16, "diversity (class benign)", "diversity", 0.3, 0.1, "flag"),
        ("a", 16, "memorised fraction", "memorisation_fraction", 0.02, None, "–"),
        ("a", 32, "FRD (radiomics)", "frd", 12.345678, 10.0, "pass"),
        ("a", 32, "diversity (class malignant (spiculated))", "diversity", 0.12, 0.1, "pass"),
        ("b", 16, "Fréchet distance (domain encoder)", "frechet_distance", None, 10.0, "–"),
        ("b", 16, "precision (domain encoder)", "precision", 0.5, 0.8, "flag"),
    ], columns=["generator", "budget", "check", "kind", "value", "baseline", "result"])
    wide = audit_table(long)
    assert list(wide.columns) == ["generator", "budget", "Fréchet distance (domain encoder)", "diversity", "memorised fraction",
                                  "FRD (radiomics)", "precision (domain encoder)"]  # CHECK_RULES' order
    assert wide.to_dict("records") == [
        {"generator": "a", "budget": 16, "Fréchet distance (domain encoder)": "31 (flag)", "diversity": "0.3 (flag, class benign)",
         "memorised fraction": "0.02", "FRD (radiomics)": "–", "precision (domain encoder)": "–"},
        {"generator": "a", "budget": 32, "Fréchet distance (domain encoder)": "–", "diversity": "0.12 (pass, class malignant (spiculated))",
         "memorised fraction": "–", "FRD (radiomics)": "12.35 (pass)", "precision (domain encoder)": "–"},
        {"generator": "b", "budget": 16, "Fréchet distance (domain encoder)": "–", "diversity": "–",
         "memorised fraction": "–", "FRD (radiomics)": "–", "precision (domain encoder)": "0.5 (flag)"},
    ]
    assert list(audit_table(checks([])).columns) == ["generator", "budget"]


def _downstream(deltas: dict[str, dict[int, float]]) -> pd.DataFrame:
    """real+classic at 0.5 + 0.01 * seed and per generator one synthetic arm at ``delta`` above
    it per budget (plus 0.001 * seed, so the interval is defined), two seeds."""
    rows = []
    for budget in sorted({b for d in deltas.values() for b in d}):
        for seed in (0, 1):
            base = 0.5 + 0.01 * seed
            rows.append({"task": "segmentation", "budget": budget, "generator": "none", "arm": "real+classic", "seed": seed,
                         "metric": "dice", "value": base})
            rows += [{"task": "segmentation", "budget": budget, "generator": g, "arm": "real+synthetic+classic", "seed": seed,
                      "metric": "dice", "value": base + d[budget] + 0.001 * seed} for g, d in deltas.items()]
    return pd.DataFrame(rows)


def test_old_audits_without_the_new_rows_still_report(tmp_path):
    quality = _quality("a", 16, frechet_distance=(31.0, 10.0), memorisation_fraction=(0.0, 0.01))
    write_report(tmp_path, quality, _downstream({"a": {16: 0.02}}), {}, {"name": "t", "protocol": "p"})
    wide = pd.read_csv(tmp_path / "tables" / "audit_table.csv")
    assert list(wide.columns) == ["generator", "budget", "Fréchet distance (domain encoder)", "memorised fraction"]
    assert wide.iloc[0].to_dict() == {"generator": "a", "budget": 16, "Fréchet distance (domain encoder)": "31 (flag)",
                                      "memorised fraction": "0 (pass)"}
    assert len(pd.read_csv(tmp_path / "tables" / "audit_checks.csv")) == 2  # the long table stays
    md = (tmp_path / "report.md").read_text()
    assert "31 (flag)" in md and "FRD" not in md and "precision" not in md


def test_the_report_shows_the_wide_table_with_the_new_checks(tmp_path):
    quality = _quality("a", 16, frechet_distance=(5.0, 10.0), frd=(40.0, 10.0), precision=(0.7, 0.8), recall=(0.3, 0.7),
                       density=(0.9, 1.0), coverage=(0.85, 0.9))
    write_report(tmp_path, quality, _downstream({"a": {16: 0.02}}), {}, {"name": "t", "protocol": "p"})
    md = (tmp_path / "report.md").read_text()
    section = md[md.index("## Audit: pass / flag"):md.index("## Does the audit predict the gain?")]
    header = next(line for line in section.splitlines() if line.startswith("generator"))
    for column in ("FRD (radiomics)", "precision (domain encoder)", "recall (domain encoder)", "density (domain encoder)",
                   "coverage (domain encoder)"):
        assert column in header
    assert "40 (flag)" in section and "0.3 (flag)" in section and "0.7 (pass)" in section
    assert "FRD: flag when above 3x the real-vs-real baseline" in section and "precision: flag when more than 0.20 below" in section


@pytest.mark.parametrize(("value", "result"), [(0.29, "pass"), (0.31, "flag")])  # 0.05 above real test lesions' 0.25
def test_the_lesion_colour_check_flags_a_share_well_above_real_test_lesions(value, result):
    rows = [{**r, "extractor": "pixels"} for r in _quality("g", 16, lesion_off_gamut_fraction=(value, 0.25))]
    table = checks(rows)
    assert table[["check", "kind", "result"]].values.tolist() == [["lesion colours", "lesion_off_gamut_fraction", result]]
