"""Summaries and the report: ``report.json`` (stable keys ``quality``, ``downstream``,
``summary``), ``report.md``, a self-contained ``report.html`` (figures embedded), ``figures/``
and ``tables/``.

Summaries are plain functions over the downstream rows: per (task, budget, generator, arm,
metric) the mean and its 95% confidence interval over seeds (Student t), and the paired
difference (same budget, same seed) against ``real`` and against ``real+classic`` with its own
interval. ``real`` and ``real+classic`` use no synthetic data: they are one shared reference
(generator ``none``) for every generator of a pipeline.
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


#: metrics with a bounded range: their intervals are clipped to it (deltas to +-its width).
#: A metric not named here (a distance, a loss) is never clipped.
METRIC_RANGE = {m: (0.0, 1.0) for m in ("dice", "fpr", "dice_all", "balanced_accuracy", "macro_f1", "minority_recall", "auroc")}
ARM_ORDER = ["real", "real+classic", "real+synthetic", "real+synthetic+classic", "synthetic"]
SHARED_ARMS = ("real", "real+classic")


def _clip(ci: tuple[float, float, float], metric: str, delta: bool = False) -> tuple[float, float, float]:
    """A t-interval from 2-3 seeds can overshoot a bounded metric's range, and a bound outside
    it says nothing; unbounded metrics are left alone."""
    if metric not in METRIC_RANGE:
        return ci
    lo, hi = METRIC_RANGE[metric]
    if delta:
        lo, hi = lo - hi, hi - lo
    m, a, b = ci
    return m, (a if math.isnan(a) else max(a, lo)), (b if math.isnan(b) else min(b, hi))


def paired_delta(values: pd.Series, ref: pd.Series, metric: str) -> tuple[float, float, float, int]:
    """``values - ref`` paired on their index (seed, or (budget, seed, ...)): the mean difference,
    its 95% t-interval (clipped to +-the metric's range) and the number of pairs. Pairs missing on
    either side are left out, never filled."""
    paired = (values - ref.reindex(values.index)).dropna()
    d, lo, hi = _clip(mean_ci(paired.to_numpy()), metric, delta=True)
    return d, lo, hi, len(paired)


def with_generator(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows with a ``generator`` column where the shared arms say ``none`` (older results without
    the column get ``synthetic`` for the others); duplicate shared-arm rows are dropped."""
    rows = rows.copy()
    if "generator" not in rows.columns:
        rows["generator"] = "synthetic"
    rows["generator"] = rows["generator"].fillna("synthetic").astype(str)
    rows.loc[rows["arm"].isin(SHARED_ARMS), "generator"] = "none"
    return rows.drop_duplicates(["task", "budget", "generator", "arm", "seed", "metric"])


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, budget, generator, arm, metric): n, mean, ci_low, ci_high, and the
    paired deltas ``delta_vs_real*`` and ``delta_vs_classic*`` (mean, ci_low, ci_high) against
    the shared ``real`` / ``real+classic`` arms. Intervals of bounded metrics are clipped to the
    metric's range (:data:`METRIC_RANGE`)."""
    rows = with_generator(rows)
    out = []
    for (task, budget, metric), group in rows.groupby(["task", "budget", "metric"], sort=True):
        series = {key: g.set_index("seed")["value"] for key, g in group.groupby(["generator", "arm"])}
        refs = {arm: series.get(("none", arm)) for arm in SHARED_ARMS}
        for (generator, arm), values in series.items():
            m, lo, hi = _clip(mean_ci(values.to_numpy()), metric)
            rec = {"task": task, "budget": int(budget), "generator": generator, "arm": arm, "metric": metric,
                   "n": int(values.notna().sum()), "mean": m, "ci_low": lo, "ci_high": hi}
            for ref, name in (("real", "delta_vs_real"), ("real+classic", "delta_vs_classic")):
                if refs[ref] is not None and arm != ref:
                    d, dlo, dhi, _ = paired_delta(values, refs[ref], metric)
                    rec.update({name: d, f"{name}_ci_low": dlo, f"{name}_ci_high": dhi})
            out.append(rec)
    frame = pd.DataFrame(out)
    if frame.empty:
        return frame
    order = {a: i for i, a in enumerate(ARM_ORDER)}
    frame["_g"] = frame["generator"].ne("none")
    frame["_a"] = frame["arm"].map(order)
    frame = frame.sort_values(["task", "metric", "budget", "_g", "generator", "_a"]).drop(columns=["_g", "_a"])
    return frame.reset_index(drop=True)


def row_label(generator: str, arm: str) -> str:
    return arm if generator == "none" else f"{generator}: {arm}"


def _fmt(m: float, lo: float, hi: float, signed: bool = False) -> str:
    if m is None or math.isnan(m):
        return "–"
    f = "+.3f" if signed else ".3f"
    return f"{m:{f}}" if math.isnan(lo) else f"{m:{f}} [{lo:{f}}, {hi:{f}}]"


def summary_table(summary: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Arms (rows: ``real``, ``real+classic``, then ``generator: arm``) x budgets (columns) of
    ``mean [95% CI]`` for one metric."""
    part = summary[summary["metric"] == metric]
    if part.empty:
        return pd.DataFrame()
    labels = [row_label(g, a) for g, a in zip(part["generator"], part["arm"])]
    cells = part.assign(row=labels, cell=[_fmt(r.mean, r.ci_low, r.ci_high) for r in part.itertuples()])
    table = cells.pivot(index="row", columns="budget", values="cell")
    table.index.name = "arm"
    return table.reindex(list(dict.fromkeys(labels)))


def delta_table(summary: pd.DataFrame, metric: str, ref: str = "classic") -> pd.DataFrame:
    """Generator arms (rows) x budgets of the paired delta vs ``real+classic`` (``ref="classic"``)
    or ``real`` (``ref="real"``), ``mean [95% CI]``."""
    col = f"delta_vs_{ref}"
    part = summary[(summary["metric"] == metric) & summary.get(col, pd.Series(dtype=float)).notna()] if col in summary else summary.iloc[0:0]
    if part.empty:
        return pd.DataFrame()
    labels = [row_label(g, a) for g, a in zip(part["generator"], part["arm"])]
    cells = part.assign(row=labels, cell=[_fmt(getattr(r, col), getattr(r, f"{col}_ci_low"), getattr(r, f"{col}_ci_high"), signed=True)
                                          for r in part.itertuples()])
    table = cells.pivot(index="row", columns="budget", values="cell")
    table.index.name = f"delta vs {'real+classic' if ref == 'classic' else 'real'}"
    return table.reindex(list(dict.fromkeys(labels)))


#: per task: the metric recipes are ranked by and the second one shown beside it
RANKED = {"segmentation": ("dice", "fpr"), "classification": ("balanced_accuracy", "minority_recall")}
#: which way is better, for the verdict
LOWER_IS_BETTER = {"fpr"}


def _verdict(metric: str, lo: float, hi: float) -> str:
    if math.isnan(lo):
        return "unknown"
    if lo > 0 or hi < 0:
        better = (hi < 0) if metric in LOWER_IS_BETTER else (lo > 0)
        return "better" if better else "worse"
    return "no evidence"


def ranking(rows: pd.DataFrame, task: str = "segmentation") -> pd.DataFrame:
    """Every synthetic arm and recipe (``generator: arm``) ranked by its paired delta vs
    ``real+classic`` on the task's main metric, pooled over all (budget, seed) pairs (mean and
    95% t-interval), with the per-budget mean deltas and the same pooled delta for the second
    metric (:data:`RANKED`). ``verdict_*``: ``better`` / ``worse`` when the interval excludes 0,
    ``no evidence`` when it holds 0, ``unknown`` with fewer than 2 pairs. Per budget B:
    ``{main}_delta_bB`` with its interval (``{main}_ci_low_bB``, ``{main}_ci_high_bB``) and
    ``n_pairs_bB``."""
    rows = with_generator(rows)
    rows = rows[rows["task"] == task]
    main, second = RANKED[task]
    ref = rows[(rows["generator"] == "none") & (rows["arm"] == "real+classic")].set_index(["budget", "seed", "metric"])["value"]
    out = []
    for (generator, arm), group in rows[rows["generator"] != "none"].groupby(["generator", "arm"], sort=False):
        rec = {"arm": row_label(generator, arm), "generator": generator, "recipe": arm}
        for metric in (main, second):
            part = group[group["metric"] == metric].set_index(["budget", "seed", "metric"])["value"]
            d, lo, hi, n = paired_delta(part, ref, metric)
            rec.update({f"{metric}_delta": d, f"{metric}_ci_low": lo, f"{metric}_ci_high": hi, f"verdict_{metric}": _verdict(metric, lo, hi)})
            if metric == main:
                rec["n_pairs"] = n
                for budget, g in part.groupby(level="budget"):
                    bd, blo, bhi, bn = paired_delta(g, ref, metric)
                    if bn:
                        b = int(budget)
                        rec.update({f"{main}_delta_b{b}": bd, f"{main}_ci_low_b{b}": blo, f"{main}_ci_high_b{b}": bhi, f"n_pairs_b{b}": bn})
        out.append(rec)
    frame = pd.DataFrame(out)
    if frame.empty:
        return frame
    frame = frame.sort_values(f"{main}_delta", ascending=False, na_position="last").reset_index(drop=True)
    frame.insert(0, "rank", range(1, len(frame) + 1))
    return frame


def rankings(rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """:func:`ranking` for every task the rows hold that has synthetic arms or recipes."""
    tables = {task: ranking(rows, task) for task in RANKED if len(rows) and (rows["task"] == task).any()}
    return {task: table for task, table in tables.items() if len(table)}


def ranking_text(table: pd.DataFrame, task: str = "segmentation") -> str:
    """The ranking as a fixed-width table: pooled deltas with CIs, then the per-budget means."""
    main, second = RANKED[task]
    per_budget = sorted((c for c in table.columns if c.startswith(f"{main}_delta_b")), key=lambda c: int(c.rsplit("b", 1)[1]))
    shown = pd.DataFrame({
        "rank": table["rank"], "arm": table["arm"], "pairs": table["n_pairs"],
        f"{main} delta [95% CI]": [_fmt(r[f"{main}_delta"], r[f"{main}_ci_low"], r[f"{main}_ci_high"], signed=True) for _, r in table.iterrows()],
        main: table[f"verdict_{main}"],
        **{f"b{c.rsplit('b', 1)[1]}": table[c].map(lambda v: f"{v:+.3f}" if pd.notna(v) else "–") for c in per_budget},
        f"{second} delta [95% CI]": [_fmt(r[f"{second}_delta"], r[f"{second}_ci_low"], r[f"{second}_ci_high"], signed=True) for _, r in table.iterrows()],
        second: table[f"verdict_{second}"],
    })
    return shown.to_string(index=False)


def quality_table(quality: list[dict]) -> pd.DataFrame:
    """Audit metrics per (generator, budget): value and real-vs-real baseline, means over seeds."""
    q = pd.DataFrame(quality)
    if "generator" not in q.columns:
        q["generator"] = "synthetic"
    q = q.assign(value=pd.to_numeric(q["value"], errors="coerce"), baseline=pd.to_numeric(q["baseline"], errors="coerce"))
    keys = [k for k in ("generator", "budget", "metric", "extractor") if k in q.columns]
    return q.groupby(keys, sort=False)[["value", "baseline"]].mean()


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def figure_metric_vs_budget(summary: pd.DataFrame, task: str, metric: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    part = summary[(summary["task"] == task) & (summary["metric"] == metric)]
    generators = [g for g in dict.fromkeys(part["generator"]) if g != "none"] or ["none"]
    fig, axes = plt.subplots(1, len(generators), figsize=(5.2 * len(generators), 3.6), squeeze=False, sharey=True)
    budgets = sorted(part["budget"].unique())
    for ax, generator in zip(axes[0], generators):
        # each panel: the shared real arms (dashed) and this generator's arms
        for (gen, arm), g in part[part["generator"].isin(["none", generator])].groupby(["generator", "arm"], sort=False):
            g = g.sort_values("budget")
            line = ax.plot(g["budget"], g["mean"], marker="o", linestyle="--" if gen == "none" else "-", label=arm)[0]
            if g["ci_low"].notna().any():
                ax.fill_between(g["budget"], g["ci_low"], g["ci_high"], alpha=0.15, color=line.get_color())
        ax.set_xscale("log", base=2)
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.set_xlabel("label budget (real training images)")
        ax.set_title(generator if generator != "none" else "real arms", fontsize=9)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(metric)
    fig.suptitle(f"{task}: {metric} on the real test split (mean, 95% CI over seeds)", fontsize=10)
    fig.tight_layout()
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
    ranks = rankings(downstream)
    for task, table in ranks.items():
        table.to_csv(out / "tables" / f"ranking_{task}.csv", index=False)
    write_json({"quality": quality, "downstream": downstream.to_dict("records"),
                "summary": summary.to_dict("records"), "meta": meta,
                "ranking": {task: table.to_dict("records") for task, table in ranks.items()}}, out / "report.json")

    metrics = list(dict.fromkeys(summary["metric"])) if len(summary) else []
    md = [f"# augment report: {meta.get('name', '')}", "", meta.get("protocol", ""), ""]
    for task, table in ranks.items():
        md += [f"## {task}: synthetic arms and recipes ranked by {RANKING_NOTE}", "", "```", ranking_text(table, task), "```", ""]
    for metric in metrics:
        md += [f"## {metric} (mean [95% CI] over seeds, real test split)", "", "```",
               summary_table(summary, metric).to_string(), "```", ""]
        deltas = delta_table(summary, metric)
        if len(deltas):
            md += [f"### {metric}: paired delta vs real+classic (same budget and seed)", "", "```", deltas.to_string(), "```", ""]
    if quality:
        md += ["## Quality and memorisation audit (mean over seeds)", "", "```",
               quality_table(quality).to_string(float_format="%.4g"), "```", ""]
    (out / "report.md").write_text("\n".join(md))
    (out / "report.html").write_text(_html(meta, summary, metrics, quality, figures, ranks))
    return out


RANKING_NOTE = ("paired delta vs real+classic, pooled over every (budget, seed) pair (mean [95% CI]; "
                "better / worse: the interval excludes 0; bN: mean delta at budget N)")


def _html(meta: dict, summary: pd.DataFrame, metrics: list[str], quality: list[dict], figures: dict[str, bytes],
          ranks: dict[str, pd.DataFrame] | None = None) -> str:
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
    for task, table in (ranks or {}).items():
        parts.append(f"<h2>{html.escape(task)}: synthetic arms and recipes ranked by {html.escape(RANKING_NOTE)}</h2>")
        parts.append(f"<pre>{html.escape(ranking_text(table, task))}</pre>")
    for metric in metrics:
        parts.append(f"<h2>{html.escape(metric)}: mean [95% CI] over seeds, real test split</h2>")
        parts.append(summary_table(summary, metric).to_html(escape=True))
        deltas = delta_table(summary, metric)
        if len(deltas):
            parts.append(f"<h3>{html.escape(metric)}: paired delta vs real+classic (same budget and seed)</h3>")
            parts.append(deltas.to_html(escape=True))
    parts.append("<h2>Figures</h2>")
    parts += [img(name) for name in figures]
    if len(summary):
        parts.append("<h2>Paired differences vs real and vs real+classic (same budget and seed)</h2>")
        cols = ["task", "budget", "generator", "arm", "metric", "delta_vs_real", "delta_vs_real_ci_low", "delta_vs_real_ci_high",
                "delta_vs_classic", "delta_vs_classic_ci_low", "delta_vs_classic_ci_high"]
        parts.append(summary[summary["arm"] != "real"][[c for c in cols if c in summary]].to_html(index=False, float_format="%.3f"))
    if quality:
        parts.append("<h2>Quality and memorisation audit (mean over seeds; baseline = real vs real)</h2>")
        parts.append(quality_table(quality).to_html(float_format="%.4g"))
    parts.append("</body></html>")
    return "\n".join(parts)
