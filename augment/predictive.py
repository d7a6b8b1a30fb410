"""Does the audit predict the gain? Each audit check against the downstream delta, across every
(generator, budget) of a run, so a user can learn which checks to trust before paying for a
downstream run.

The inputs are the report's: the long audit checks (:func:`augment.verdicts.checks`: generator,
budget, check, kind, value, baseline) and the verdict records (:func:`augment.verdicts.verdicts`:
task, generator, budget, metric, delta vs real+classic; a record pooled over budgets, ``budget``
None, is no point here, nor a ``headline`` record, which repeats one generator's). One point per (check, task, generator, budget); per check and task the
Spearman rank correlation of the audit's x with the delta:

* x is ``value / baseline`` (the check's real-vs-real baseline) when every point of that check
  has a positive baseline, else the value itself (a memorised fraction whose baseline is 0). A
  baseline is the same real-vs-real measure for every generator of a run, so the ratio mostly
  rescales the axis; it reads as "times what unseen real images score".
* rho is ``scipy.stats.spearmanr``'s; its p-value is exact (every permutation of the deltas,
  two-sided) for up to :data:`EXACT_UP_TO` points, where the t approximation scipy uses is poor
  (it gives p = 0 for three points in order), and scipy's above that.
* Undefined, with the reason in ``note`` and never a NaN warning: fewer than :data:`MIN_POINTS`
  points, or every x (or every delta) the same.

Rank correlations over a handful of points are weak evidence either way; the table says n.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd

from augment.verdicts import METRIC_NAMES, RANKED, check_column

MIN_POINTS = 3
EXACT_UP_TO = 8  # 8! = 40,320 permutations
COLUMNS = ["check", "task", "metric", "x", "n_points", "rho", "p", "p_method", "note"]


def spearman(x, y) -> dict:
    """Spearman's rho of two equal-length sequences with its two-sided p-value (exact by
    permutation up to :data:`EXACT_UP_TO` points, scipy's t approximation above): ``{rho, p,
    p_method, note}``, rho and p None with the reason in ``note`` when undefined."""
    from scipy import stats

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(x)
    why = (f"fewer than {MIN_POINTS} (generator, budget) points ({n})" if n < MIN_POINTS
           else "every audit value is the same: nothing to rank" if np.ptp(x) == 0
           else "every downstream delta is the same: nothing to rank" if np.ptp(y) == 0 else None)
    if why:
        return {"rho": None, "p": None, "p_method": None, "note": why}
    rho = float(stats.spearmanr(x, y).statistic)
    if n > EXACT_UP_TO:
        return {"rho": rho, "p": float(stats.spearmanr(x, y).pvalue), "p_method": "t approximation (scipy)", "note": ""}
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    perms = np.array(list(itertools.permutations(ry)))
    r = perms @ rx / (np.linalg.norm(rx) * np.linalg.norm(ry))
    p = float(np.mean(np.abs(r) >= abs(rho) - 1e-12))
    return {"rho": rho, "p": p, "p_method": f"exact ({len(perms)} permutations)", "note": ""}


def _budget(b):
    return None if b is None or (isinstance(b, float) and math.isnan(b)) else int(b)


def audit_points(audit: pd.DataFrame, records: list[dict]) -> pd.DataFrame:
    """One row per (check, task, generator, budget) with both an audit value and a delta of the
    task's main metric (:data:`~augment.verdicts.RANKED`; a classification verdict's minority-recall
    records are a second metric of the same points, not more points):
    check (its :func:`~augment.verdicts.check_column`), kind, task, metric, generator, budget,
    value, baseline, x, x_is (``value / baseline`` or ``value``) and delta (the mean when
    several records share a key)."""
    cols = ["check", "kind", "task", "metric", "generator", "budget", "value", "baseline", "x", "x_is", "delta"]
    deltas = pd.DataFrame([{"task": r["task"], "metric": r["metric"], "generator": str(r["generator"]), "budget": _budget(r["budget"]),
                            "delta": float(r["delta"])} for r in records
                           if _budget(r.get("budget")) is not None and not r.get("headline")
                           and r.get("metric") == RANKED.get(r.get("task"), (r.get("metric"),))[0]
                           and r.get("delta") is not None and math.isfinite(float(r["delta"]))])
    if audit.empty or "kind" not in audit.columns or deltas.empty:
        return pd.DataFrame(columns=cols)
    deltas = deltas.groupby(["task", "metric", "generator", "budget"], sort=False, as_index=False)["delta"].mean()
    a = audit.assign(check=[check_column(k, c) for k, c in zip(audit["kind"], audit["check"])], generator=audit["generator"].astype(str),
                     budget=[_budget(b) for b in audit["budget"]], value=pd.to_numeric(audit["value"], errors="coerce"),
                     baseline=pd.to_numeric(audit["baseline"], errors="coerce"))
    a = a[a["value"].notna() & a["budget"].notna()].astype({"budget": int})
    points = a.merge(deltas, on=["generator", "budget"])
    if points.empty:
        return pd.DataFrame(columns=cols)
    ratio = points.groupby(["check", "task"], sort=False)["baseline"].transform(lambda b: bool((b > 0).all())).astype(bool)
    points["x"] = np.where(ratio, points["value"] / points["baseline"].where(ratio, 1.0), points["value"])
    points["x_is"] = np.where(ratio, "value / baseline", "value")
    return points[cols].reset_index(drop=True)


def audit_vs_gain(audit: pd.DataFrame, records: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(table, points): per check and task, the number of (generator, budget) points, Spearman's
    rho of x against the delta vs real+classic, its p-value, how p was computed and, when
    undefined, why (:data:`COLUMNS`); and the points themselves (:func:`audit_points`). A check
    of the audit without any point with a delta is left out."""
    points = audit_points(audit, records)
    rows = []
    for (check, task), g in points.groupby(["check", "task"], sort=False):
        rows.append({"check": check, "task": task, "metric": g["metric"].iloc[0], "x": g["x_is"].iloc[0], "n_points": len(g),
                     **spearman(g["x"], g["delta"])})
    return pd.DataFrame(rows, columns=COLUMNS), points


def enough(table: pd.DataFrame) -> bool:
    """Whether any check has :data:`MIN_POINTS` points (else no figure, one sentence)."""
    return bool(len(table)) and int(table["n_points"].max()) >= MIN_POINTS


def summary_blocks(table: pd.DataFrame) -> list[tuple]:
    """The report's blocks (:mod:`augment.report`'s format) under "Does the audit predict the gain?"."""
    if not enough(table):
        most = int(table["n_points"].max()) if len(table) else 0
        return [("p", f"Not yet: no audit check has {MIN_POINTS} (generator, budget) points with a downstream delta "
                      f"(the most is {most}), and a rank correlation needs at least {MIN_POINTS}.")]
    shown = table.assign(rho=table["rho"].map(lambda v: "–" if pd.isna(v) else f"{v:+.2f}"),
                         p=table["p"].map(lambda v: "–" if pd.isna(v) else f"{v:.2g}"), note=table["note"].fillna(""))
    return [("p", "Each audit check against the downstream delta vs real+classic (the verdict's arm per generator and budget): "
                  "Spearman's rho over the (generator, budget) points, p exact by permutation up to 8 points. A check whose rho "
                  "has the expected sign across runs is one to trust before paying for a downstream run; few points are weak "
                  "evidence either way. Scatter plots: figures/audit_vs_gain.png."),
            ("table", shown.drop(columns="p_method"), False)]


def caption(table: pd.DataFrame) -> str:
    n = int(table["n_points"].max())
    return ("Each audit check (x: value / real-vs-real baseline where every point has a positive baseline, else the value) "
            "against the downstream delta vs real+classic of the verdict's arm (y), one point per generator (colour) and "
            f"budget (label); up to {n} points a panel; title: Spearman's rho and its p-value.")


def figure_audit_vs_gain(points: pd.DataFrame, table: pd.DataFrame):
    """One small scatter per row of ``table`` (check, task): x against the delta, the zero delta
    dashed (and x = 1, the real-vs-real level, dotted on a ratio axis), titled with rho."""
    from augment.figures import _pyplot, plain

    plt = _pyplot()
    n = max(1, len(table))
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.1 * ncols, 2.7 * nrows), squeeze=False)
    generators = list(dict.fromkeys(points["generator"]))
    colour = {g: f"C{i % 10}" for i, g in enumerate(generators)}
    tasks = table["task"].nunique() > 1
    for ax in axes.flat[len(table):]:
        ax.set_axis_off()
    for ax, r in zip(axes.flat, table.itertuples()):
        g = points[(points["check"] == r.check) & (points["task"] == r.task)]
        for gen, part in g.groupby("generator", sort=False):
            ax.scatter(part["x"], part["delta"], s=18, color=colour[gen], label=plain(gen))
            for x, y, b in zip(part["x"], part["delta"], part["budget"]):
                ax.annotate(f"b{b}", (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
        ax.axhline(0, color="0.5", linestyle="--", linewidth=0.7)
        if r.x == "value / baseline":
            ax.axvline(1, color="0.5", linestyle=":", linewidth=0.7)
        stat = f"rho {r.rho:+.2f}, p {r.p:.2g} (n={r.n_points})" if pd.notna(r.rho) else f"rho undefined (n={r.n_points})"
        ax.set_title(plain(f"{r.check}{f' [{r.task}]' if tasks else ''}\n{stat}"), fontsize=8)
        ax.set_xlabel(plain(r.x), fontsize=7)
        ax.set_ylabel(plain(f"delta {METRIC_NAMES.get(r.metric, r.metric)}"), fontsize=7)
        ax.tick_params(labelsize=6)
    legend = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    if legend:
        fig.legend(list(legend.values()), list(legend), fontsize=7, loc="upper center", ncol=min(6, len(legend)), frameon=False, bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return fig
