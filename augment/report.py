"""Summaries and the report: ``report.json`` (stable keys ``quality``, ``downstream``,
``summary``), ``report.md``, a self-contained ``report.html`` (figures embedded), ``figures/``
and ``tables/``.

Summaries are plain functions over the downstream rows: per (task, budget, arm, metric) the mean
and its 95% confidence interval over seeds (Student t), and the paired difference (same budget,
same seed) against ``real`` and against ``real+classic`` with its own interval.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

import numpy as np
import pandas as pd

from augment.runinfo import write_json


def mean_ci(values) -> tuple[float, float, float]:
    """Mean and 95% t-interval; with one value the interval is (nan, nan): it is unknown, not zero."""
    from scipy import stats

    v = np.asarray([x for x in values if not (isinstance(x, float) and math.isnan(x))], dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(v.mean())
    if len(v) < 2:
        return m, float("nan"), float("nan")
    half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return m, m - half, m + half


def _clip(ci: tuple[float, float, float], lo: float, hi: float) -> tuple[float, float, float]:
    """Every metric here lives in [0, 1] (deltas in [-1, 1]); a t-interval from 2-3 seeds can
    overshoot, and a bound outside the metric's range says nothing."""
    m, a, b = ci
    return m, (a if math.isnan(a) else max(a, lo)), (b if math.isnan(b) else min(b, hi))


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, budget, arm, metric): n, mean, ci_low, ci_high, and the paired deltas
    ``delta_vs_real*`` and ``delta_vs_classic*`` (mean, ci_low, ci_high). Intervals are clipped
    to the metric's range ([0, 1], deltas [-1, 1])."""
    out = []
    keys = ["task", "budget", "metric"]
    for (task, budget, metric), group in rows.groupby(keys, sort=True):
        by_arm = {arm: g.set_index("seed")["value"] for arm, g in group.groupby("arm")}
        for arm, series in by_arm.items():
            m, lo, hi = _clip(mean_ci(series.to_numpy()), 0.0, 1.0)
            rec = {"task": task, "budget": int(budget), "arm": arm, "metric": metric, "n": int(series.notna().sum()),
                   "mean": m, "ci_low": lo, "ci_high": hi}
            for ref, name in (("real", "delta_vs_real"), ("real+classic", "delta_vs_classic")):
                if ref in by_arm and arm != ref:
                    paired = (series - by_arm[ref]).dropna()
                    d, dlo, dhi = _clip(mean_ci(paired.to_numpy()), -1.0, 1.0)
                    rec.update({name: d, f"{name}_ci_low": dlo, f"{name}_ci_high": dhi})
            out.append(rec)
    order = {a: i for i, a in enumerate(["real", "real+classic", "real+synthetic", "real+synthetic+classic", "synthetic"])}
    frame = pd.DataFrame(out)
    if frame.empty:
        return frame
    return frame.sort_values(["task", "metric", "budget", "arm"], key=lambda s: s.map(order) if s.name == "arm" else s).reset_index(drop=True)


def _fmt(m: float, lo: float, hi: float) -> str:
    if math.isnan(m):
        return "–"
    return f"{m:.3f}" if math.isnan(lo) else f"{m:.3f} [{lo:.3f}, {hi:.3f}]"


def summary_table(summary: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Arms (rows) x budgets (columns) of ``mean [95% CI]`` for one metric."""
    part = summary[summary["metric"] == metric]
    if part.empty:
        return pd.DataFrame()
    cells = part.assign(cell=[_fmt(r.mean, r.ci_low, r.ci_high) for r in part.itertuples()])
    table = cells.pivot(index="arm", columns="budget", values="cell")
    return table.reindex([a for a in ["real", "real+classic", "real+synthetic", "real+synthetic+classic", "synthetic"] if a in table.index])


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def figure_metric_vs_budget(summary: pd.DataFrame, task: str, metric: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    part = summary[(summary["task"] == task) & (summary["metric"] == metric)]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for arm, g in part.groupby("arm", sort=False):
        g = g.sort_values("budget")
        ax.plot(g["budget"], g["mean"], marker="o", label=arm)
        if g["ci_low"].notna().any():
            ax.fill_between(g["budget"], g["ci_low"], g["ci_high"], alpha=0.15)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(part["budget"].unique()), [str(b) for b in sorted(part["budget"].unique())])
    ax.set_xlabel("label budget (real training images)")
    ax.set_ylabel(metric)
    ax.set_title(f"{task}: {metric} on the real test split (mean, 95% CI)")
    ax.legend(fontsize=7)
    return fig


def figure_class_balance(plan: pd.DataFrame):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    names = [f"{c} {n}" for c, n in zip(plan["class"], plan["name"])]
    ax.bar(names, plan["real"], label="real (budget)")
    ax.bar(names, plan["synthetic"], bottom=plan["real"], label="synthetic")
    ax.set_ylabel("images")
    ax.set_title("class balance before / after sampling")
    ax.legend(fontsize=7)
    return fig


def figure_grid(real: list[tuple], synthetic: list[tuple], classes: dict[int, str], per_class: int = 6):
    """Rows: real and synthetic per class; each tile the image with its mask outlined.
    ``real`` / ``synthetic``: lists of (image uint8 (H, W[, C]), mask uint8 (H, W), label)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2 * len(classes), per_class, figsize=(1.3 * per_class, 2.7 * len(classes)), squeeze=False)
    for r, (label, name) in enumerate(sorted(classes.items())):
        for k, (source, items) in enumerate((("real", real), ("synthetic", synthetic))):
            picks = [it for it in items if it[2] == label][:per_class]
            for c in range(per_class):
                ax = axes[2 * r + k, c]
                ax.set_axis_off()
                if c < len(picks):
                    image, mask, _ = picks[c]
                    ax.imshow(image, cmap="gray", vmin=0, vmax=255)
                    if mask is not None and mask.any():
                        ax.contour(mask, levels=[0.5], colors="r", linewidths=0.7)
            axes[2 * r + k, 0].set_title(f"{source}: {name}", fontsize=7, loc="left")
    fig.tight_layout()
    return fig


def write_report(out: str | Path, quality: list[dict], downstream: pd.DataFrame, figures: dict[str, bytes],
                 meta: dict) -> Path:
    """Write report.json / .md / .html, figures/*.png and tables/*.csv into ``out``."""
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    (out / "tables").mkdir(exist_ok=True)
    summary = summarize(downstream) if len(downstream) else pd.DataFrame()
    for name, data in figures.items():
        (out / "figures" / f"{name}.png").write_bytes(data)
    downstream.to_csv(out / "tables" / "downstream.csv", index=False)
    summary.to_csv(out / "tables" / "summary.csv", index=False)
    pd.DataFrame(quality).to_csv(out / "tables" / "quality.csv", index=False)
    write_json({"quality": quality, "downstream": downstream.to_dict("records"),
                "summary": summary.to_dict("records"), "meta": meta}, out / "report.json")

    metrics = list(dict.fromkeys(summary["metric"])) if len(summary) else []
    md = [f"# augment report: {meta.get('name', '')}", "", meta.get("protocol", ""), ""]
    for metric in metrics:
        md += [f"## {metric} (mean [95% CI] over seeds, real test split)", "", "```",
               summary_table(summary, metric).to_string(), "```", ""]
    if len(summary):
        deltas = summary[summary["arm"] != "real"][["task", "budget", "arm", "metric", "delta_vs_real", "delta_vs_classic"]]
        md += ["## Paired differences (same budget and seed)", "", "```", deltas.to_string(index=False, float_format="%.3f"), "```", ""]
    if quality:
        q = pd.DataFrame(quality)
        md += ["## Quality and memorisation audit", "", "```", q.to_string(index=False, float_format="%.4g"), "```", ""]
    (out / "report.md").write_text("\n".join(md))
    (out / "report.html").write_text(_html(meta, summary, metrics, quality, figures))
    return out


def _html(meta: dict, summary: pd.DataFrame, metrics: list[str], quality: list[dict], figures: dict[str, bytes]) -> str:
    def img(name: str) -> str:
        if name not in figures:
            return ""
        data = base64.b64encode(figures[name]).decode()
        return f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(name)}</figcaption></figure>'

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>augment report</title><style>",
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}table{border-collapse:collapse;margin:1em 0;font-size:13px}",
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}figure{display:inline-block;margin:0.5em}",
        "img{max-width:520px}.note{color:#555;font-size:13px}</style></head><body>",
        f"<h1>augment report: {html.escape(str(meta.get('name', '')))}</h1>",
        f"<p class='note'>{html.escape(meta.get('protocol', ''))}</p>",
    ]
    for metric in metrics:
        parts.append(f"<h2>{html.escape(metric)}: mean [95% CI] over seeds, real test split</h2>")
        parts.append(summary_table(summary, metric).to_html(escape=True))
    parts.append("<h2>Figures</h2>")
    parts += [img(name) for name in figures]
    if len(summary):
        parts.append("<h2>Paired differences vs real and vs real+classic (same budget and seed)</h2>")
        cols = ["task", "budget", "arm", "metric", "delta_vs_real", "delta_vs_real_ci_low", "delta_vs_real_ci_high",
                "delta_vs_classic", "delta_vs_classic_ci_low", "delta_vs_classic_ci_high"]
        parts.append(summary[summary["arm"] != "real"][[c for c in cols if c in summary]].to_html(index=False, float_format="%.3f"))
    if quality:
        parts.append("<h2>Quality and memorisation audit</h2>")
        parts.append(pd.DataFrame(quality).to_html(index=False, float_format="%.4g"))
    parts.append("</body></html>")
    return "\n".join(parts)
