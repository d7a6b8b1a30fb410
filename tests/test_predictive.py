"""Does the audit predict the gain: Spearman's rho of each audit check against the downstream
delta over hand-built (generator, budget) points, its undefined cases, the figure and the report."""

from __future__ import annotations

import math
import warnings

import pandas as pd
import pytest

from augment.predictive import audit_vs_gain, figure_audit_vs_gain, spearman


def test_spearman_of_a_monotone_relation_is_one_with_an_exact_p():
    up = spearman([1.0, 2.0, 5.0, 9.0], [0.1, 0.2, 0.3, 0.4])
    assert up["rho"] == pytest.approx(1.0) and up["p"] == pytest.approx(2 / 24)  # 2 of 4! orders are as extreme
    assert up["p_method"] == "exact (24 permutations)" and up["note"] == ""
    down = spearman([1.0, 2.0, 3.0], [0.3, 0.2, 0.1])
    assert down["rho"] == pytest.approx(-1.0) and down["p"] == pytest.approx(2 / 6)  # scipy's t approximation says 0
    mixed = spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5])
    assert mixed["rho"] == pytest.approx(0.8) and 0 < mixed["p"] < 1
    many = spearman(list(range(12)), [x * x for x in range(12)])
    assert many["rho"] == pytest.approx(1.0) and many["p_method"] == "t approximation (scipy)"


@pytest.mark.parametrize(("x", "y", "why"), [
    ([1.0, 2.0], [0.1, 0.2], "fewer than 3 (generator, budget) points (2)"),
    ([], [], "fewer than 3 (generator, budget) points (0)"),
    ([4.0, 4.0, 4.0], [0.1, 0.2, 0.3], "every audit value is the same"),
    ([1.0, 2.0, 3.0], [0.0, 0.0, 0.0], "every downstream delta is the same"),
])
def test_spearman_is_undefined_with_its_reason_and_no_warning(x, y, why):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy's ConstantInputWarning or a NaN RuntimeWarning would fail here
        out = spearman(x, y)
    assert out["rho"] is None and out["p"] is None and why in out["note"]


def _checks(points: dict[tuple[str, int], dict[str, tuple[float, float | None]]]) -> pd.DataFrame:
    """The long checks table: per (generator, budget), ``{kind: (value, baseline)}``."""
    names = {"frechet_distance": "Fréchet distance (domain encoder)", "memorisation_fraction": "memorised fraction",
             "diversity": "diversity (class {})", "coverage": "coverage (domain encoder)"}
    return pd.DataFrame([{"generator": g, "budget": b, "check": names[k].format(b), "kind": k, "value": v, "baseline": base, "result": "pass"}
                         for (g, b), kinds in points.items() for k, (v, base) in kinds.items()])


def _record(generator: str, budget: int | None, delta: float, **extra) -> dict:
    return {"task": "segmentation", "generator": generator, "budget": budget, "metric": "dice", "delta": delta, **extra}


def test_audit_vs_gain_ranks_each_check_against_the_delta():
    audit = _checks({
        ("a", 8): {"frechet_distance": (20.0, 10.0), "memorisation_fraction": (0.0, 0.0), "diversity": (0.2, 0.1), "coverage": (0.9, 0.9)},
        ("a", 16): {"frechet_distance": (15.0, 10.0), "memorisation_fraction": (0.1, 0.0), "diversity": (0.3, 0.1), "coverage": (0.9, 0.9)},
        ("b", 8): {"frechet_distance": (40.0, 10.0), "memorisation_fraction": (0.2, 0.0), "diversity": (0.4, 0.1)},
        ("b", 16): {"frechet_distance": (None, 10.0), "memorisation_fraction": (0.3, 0.0), "diversity": (0.5, 0.1)},
    })
    records = [_record("a", 8, 0.02), _record("a", 16, 0.05), _record("b", 8, -0.03), _record("b", 16, -0.01),
               _record("a", None, 9.0), _record("b", None, -9.0),  # pooled over budgets: no point
               _record("a", 8, 7.0, headline=True),  # repeats a generator's record
               {**_record("b", 8, 5.0), "metric": "fpr"}]  # the task's second metric: not another point
    table, points = audit_vs_gain(audit, records)
    rows = table.set_index("check")
    fd = rows.loc["Fréchet distance (domain encoder)"]
    # three points with an FD (b16's is undefined): 1.5, 2.0, 4.0 x baseline against +0.05, +0.02, -0.03
    assert fd["n_points"] == 3 and fd["rho"] == pytest.approx(-1.0) and fd["x"] == "value / baseline"
    assert sorted(points.loc[points["check"] == "Fréchet distance (domain encoder)", "x"]) == [1.5, 2.0, 4.0]
    memorised = rows.loc["memorised fraction"]  # a baseline of 0: x is the value itself
    # ranks 1, 2, 3, 4 against 3, 4, 1, 2: rho = 1 - 6 * 16 / (4 * 15) = -0.6
    assert memorised["x"] == "value" and memorised["n_points"] == 4 and memorised["rho"] == pytest.approx(-0.6)
    diversity = rows.loc["diversity"]  # its class differs between rows: one check all the same
    assert diversity["n_points"] == 4 and diversity["rho"] == pytest.approx(-0.6)
    coverage = rows.loc["coverage (domain encoder)"]
    assert coverage["n_points"] == 2 and math.isnan(coverage["rho"]) and "fewer than 3" in coverage["note"]
    assert set(points["budget"]) == {8, 16} and set(points["delta"]) == {0.02, 0.05, -0.03, -0.01}


def test_no_records_or_no_audit_give_an_empty_table():
    audit = _checks({("a", 8): {"frechet_distance": (20.0, 10.0)}})
    for table, points in (audit_vs_gain(audit, []), audit_vs_gain(audit.iloc[0:0], [_record("a", 8, 0.1)])):
        assert table.empty and points.empty and "rho" in table.columns


def test_the_figure_has_one_titled_panel_per_check():
    audit = _checks({(g, b): {"frechet_distance": (v, 10.0), "coverage": (0.9, 0.9)}
                     for (g, b), v in {("a", 8): 20.0, ("a", 16): 30.0, ("b", 8): 40.0}.items()})
    table, points = audit_vs_gain(audit, [_record("a", 8, 0.03), _record("a", 16, 0.02), _record("b", 8, 0.01)])
    fig = figure_audit_vs_gain(points, table)
    titles = [ax.get_title() for ax in fig.axes if ax.axison]
    assert titles == ["Fréchet distance (domain encoder)\nrho -1.00, p 0.33 (n=3)", "coverage (domain encoder)\nrho undefined (n=3)"]
    assert sum(len(c.get_offsets()) for c in fig.axes[0].collections) == 3


def _downstream(deltas: dict[tuple[str, int], float]) -> pd.DataFrame:
    rows = []
    for budget in sorted({b for _, b in deltas}):
        for seed in (0, 1):
            base = 0.5 + 0.01 * seed
            rows.append({"task": "segmentation", "budget": budget, "generator": "none", "arm": "real+classic", "seed": seed,
                         "metric": "dice", "value": base})
            rows += [{"task": "segmentation", "budget": budget, "generator": g, "arm": "real+synthetic+classic", "seed": seed,
                      "metric": "dice", "value": base + d + 0.001 * seed} for (g, b), d in deltas.items() if b == budget]
    return pd.DataFrame(rows)


def _quality(fds: dict[tuple[str, int], float]) -> list[dict]:
    return [{"generator": g, "budget": b, "seed": 0, "metric": "frechet_distance", "extractor": "domain", "value": v, "baseline": 10.0,
             "n_real": 10, "n_synthetic": 10} for (g, b), v in fds.items()]


def test_the_report_draws_the_figure_and_writes_the_table(tmp_path):
    from augment.report import write_report

    deltas = {("a", 8): 0.04, ("a", 16): 0.02, ("b", 8): -0.01, ("b", 16): -0.03}
    write_report(tmp_path, _quality({("a", 8): 11.0, ("a", 16): 15.0, ("b", 8): 25.0, ("b", 16): 35.0}), _downstream(deltas), {},
                 {"name": "t", "protocol": "p"})
    table = pd.read_csv(tmp_path / "tables" / "audit_vs_gain.csv")
    assert table.iloc[0][["check", "n_points", "rho"]].tolist() == ["Fréchet distance (domain encoder)", 4, pytest.approx(-1.0)]
    assert (tmp_path / "figures" / "audit_vs_gain.png").stat().st_size > 1000
    md = (tmp_path / "report.md").read_text()
    block = md[md.index("## Does the audit predict the gain?"):]
    assert "-1.00" in block and "![Each audit check" in md and "figures/audit_vs_gain.png" in md


def test_with_fewer_than_three_points_the_report_says_so_instead_of_a_figure(tmp_path):
    from augment.report import write_report

    write_report(tmp_path, _quality({("a", 8): 11.0, ("a", 16): 15.0}), _downstream({("a", 8): 0.04, ("a", 16): 0.02}), {},
                 {"name": "t", "protocol": "p"})
    assert not (tmp_path / "figures" / "audit_vs_gain.png").exists()
    md = (tmp_path / "report.md").read_text()
    assert "Not yet: no audit check has 3 (generator, budget) points with a downstream delta (the most is 2)" in md
    assert pd.read_csv(tmp_path / "tables" / "audit_vs_gain.csv")["n_points"].tolist() == [2]
