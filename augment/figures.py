"""The report's figures (matplotlib, Agg) and the sentences that caption them.

Every figure function returns the matplotlib ``Figure``, so a test can look at what was drawn
(bars, bands, rows); :func:`png` turns it into the bytes the report embeds. Captions are built
from the same data the figure shows, so they say how many seeds an interval is over and why a
class or row is missing. Every text drawn from user data (class, generator and recipe names: a
class name comes from the dataset's ``classes.csv``) goes through :func:`plain`, so ``$...$`` in
it is drawn as written, never parsed as mathtext (where an unknown symbol such as ``\foo``
fails the whole figure).
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

from augment.verdicts import ARM_ORDER, METRIC_NAMES


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plain(text) -> str:
    """``text`` as matplotlib draws it literally: every ``$`` escaped, so nothing is mathtext."""
    return str(text).replace("$", r"\$")


def png(fig) -> bytes:
    """The figure as PNG bytes (110 dpi); the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def _arm_colours(arms) -> dict[str, str]:
    """One colour per arm name, the same in every panel (fixed arms in ARM_ORDER, recipes after)."""
    names = [a for a in ARM_ORDER if a in set(arms)] + sorted(set(arms) - set(ARM_ORDER))
    cycle = [f"C{i}" for i in range(10)]
    return {a: cycle[i % 10] for i, a in enumerate(names)}


def _errors(g: pd.DataFrame) -> np.ndarray:
    """(2, n) distances from each mean to its interval ends; 0 where the interval is unknown."""
    low = (g["mean"] - g["ci_low"]).fillna(0).clip(lower=0)
    high = (g["ci_high"] - g["mean"]).fillna(0).clip(lower=0)
    return np.vstack([low.to_numpy(), high.to_numpy()])


def figure_metric_vs_budget(summary: pd.DataFrame, task: str, metric: str):
    """The metric on the real test split per arm: mean and 95% CI over seeds. With several
    budgets, one panel per generator with lines over the budget and a shaded band for the
    interval (the shared real arms dashed in each); with one budget, grouped bars with error bars
    (the real arms, then each generator's arms)."""
    part = summary[(summary["task"] == task) & (summary["metric"] == metric)]
    if part["budget"].nunique() == 1:
        return _figure_bars(part, task, metric)
    plt = _pyplot()
    colours = _arm_colours(part["arm"])
    generators = [g for g in dict.fromkeys(part["generator"]) if g != "none"] or ["none"]
    fig, axes = plt.subplots(1, len(generators), figsize=(5.2 * len(generators), 3.6), squeeze=False, sharey=True)
    budgets = sorted(part["budget"].unique())
    for ax, generator in zip(axes[0], generators):
        for (gen, arm), g in part[part["generator"].isin(["none", generator])].groupby(["generator", "arm"], sort=False):
            g = g.sort_values("budget")
            ax.plot(g["budget"], g["mean"], marker="o", linestyle="--" if gen == "none" else "-", label=plain(arm), color=colours[arm])
            if g["ci_low"].notna().any():
                ax.fill_between(g["budget"], g["ci_low"], g["ci_high"], alpha=0.15, color=colours[arm], linewidth=0)
        ax.set_xscale("log", base=2)
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.set_xlabel("label budget (real training images)", fontsize=9)
        ax.set_title(plain(generator) if generator != "none" else "real arms", fontsize=9)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel(plain(METRIC_NAMES.get(metric, metric)), fontsize=9)
    fig.suptitle(plain(f"{task}: {METRIC_NAMES.get(metric, metric)} on the real test split (mean, 95% CI over seeds)"), fontsize=10)
    fig.tight_layout()
    return fig


def _figure_bars(part: pd.DataFrame, task: str, metric: str):
    plt = _pyplot()
    colours = _arm_colours(part["arm"])
    groups = ["none", *[g for g in dict.fromkeys(part["generator"]) if g != "none"]]
    order = {a: i for i, a in enumerate(colours)}
    fig, ax = plt.subplots(figsize=(max(5.0, 0.55 * len(part) + 1.5), 3.6))
    width, shown, ticks = 0.8, set(), []
    for x, generator in enumerate(groups):
        g = part[part["generator"] == generator].sort_values("arm", key=lambda s: s.map(order))
        if g.empty:
            continue
        w = width / len(g)
        xs = x - width / 2 + w * (np.arange(len(g)) + 0.5)
        for xi, row, err in zip(xs, g.itertuples(), _errors(g).T):
            label = None if row.arm in shown else plain(row.arm)
            shown.add(row.arm)
            ax.bar(xi, row.mean, w * 0.9, yerr=err.reshape(2, 1), capsize=3, color=colours[row.arm], label=label,
                   hatch="//" if generator == "none" else None, edgecolor="white" if generator == "none" else None)
        ticks.append((x, "real arms" if generator == "none" else plain(generator)))
    ref = part[(part["generator"] == "none") & (part["arm"] == "real+classic")]
    if len(ref):
        ax.axhline(float(ref["mean"].iloc[0]), color="0.4", linestyle="--", linewidth=0.8)
    ax.set_xticks([t for t, _ in ticks], [name for _, name in ticks], fontsize=9)
    ax.set_ylabel(plain(METRIC_NAMES.get(metric, metric)), fontsize=9)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    budget = int(part["budget"].iloc[0])
    ax.set_title(plain(f"{task}: {METRIC_NAMES.get(metric, metric)} at budget {budget}, real test split\n"
                       "(mean, 95% CI over seeds; dashed line: real+classic)"), fontsize=10)
    fig.tight_layout()
    return fig


def metric_caption(summary: pd.DataFrame, task: str, metric: str) -> str:
    """The sentence under :func:`figure_metric_vs_budget`: what is plotted, over how many seeds."""
    part = summary[(summary["task"] == task) & (summary["metric"] == metric)]
    seeds = sorted(set(part["n"]))
    name = METRIC_NAMES.get(metric, metric)
    over = f"{seeds[0]} seed{'s' if seeds[0] != 1 else ''}" if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]} seeds"
    interval = "" if max(seeds) > 1 else " (one seed: no interval)"
    if part["budget"].nunique() == 1:
        return (f"{name} on the real test split at label budget {int(part['budget'].iloc[0])}, mean and 95% CI over {over}"
                f"{interval}; hatched: the real arms without synthetic data, dashed line: real+classic.")
    return (f"{name} on the real test split vs label budget, mean and 95% CI (shaded) over {over}{interval}; "
            "dashed: the real arms without synthetic data.")


def synthetic_shortfalls(plan: pd.DataFrame, made: dict[int, int], strategy: str, classes: list[int] | None = None) -> dict[int, str]:
    """Why a class of the balancing plan got no (or fewer) synthetic pairs, per class: the
    manifest asked for 0 (with the strategy's reason) or for more than the set holds.
    ``plan``: the ``plan.csv`` frame (class, name, real, synthetic, total); ``made``: synthetic
    rows per class in the set."""
    out = {}
    top = int(plan["real"].max())
    for r in plan.to_dict("records"):
        c, asked = int(r["class"]), int(r["synthetic"])
        got = int(made.get(c, 0))
        if asked == 0:
            why = ("balance.classes leaves it out" if classes is not None and c not in classes
                   else "it already has the most images" if strategy == "match_max" and int(r["real"]) == top
                   else f"strategy {strategy}")
            out[c] = f"the manifest asked for 0 ({why})"
        elif got < asked:
            out[c] = f"the manifest asked for {asked}, the generator made {got}"
    return out


def figure_class_balance(plan: pd.DataFrame):
    """Images per class: the real images of the generator's budget subset with the synthetic
    pairs of the plan stacked on top (a composition: the stack is the class's training total)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    names = [plain(n) for n in plan["name"]]
    ax.bar(names, plan["real"], label="real (budget subset)", color="C0")
    ax.bar(names, plan["synthetic"], bottom=plan["real"], label="synthetic (added by the plan)", color="C1")
    for x, (r, s) in enumerate(zip(plan["real"], plan["synthetic"])):
        ax.text(x, r + s, f"{r} real + {s} synthetic", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("images", fontsize=9)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_ylim(0, max(1, int((plan["real"] + plan["synthetic"]).max())) * 1.15)
    ax.set_title("class balance: real + synthetic per class (stacked)", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
    fig.tight_layout()
    return fig


def grid_rows(real: list[tuple], synthetic: list[tuple], classes: dict[int, str], per_class: int,
              why: dict[int, str] | None = None) -> tuple[list[tuple[str, str, list]], list[str]]:
    """The rows of :func:`figure_grid`: (class name, ``real`` / ``synthetic``, items) for every
    class and source that has items, and a note for each row left out (``why``: the reason a
    class has no synthetic pairs, from :func:`synthetic_shortfalls`)."""
    rows, notes = [], []
    for label, name in sorted(classes.items()):
        for source, items in (("real", real), ("synthetic", synthetic)):
            picks = [it for it in items if it[2] == label][:per_class]
            if picks:
                rows.append((name, source, picks))
            elif source == "real":
                notes.append(f"class {name}: no real images in the budget subset")
            else:
                notes.append(f"class {name}: no synthetic pairs" + (f" — {why[label]}" if why and label in why else ""))
    return rows, notes


def figure_grid(real: list[tuple], synthetic: list[tuple], classes: dict[int, str], per_class: int = 4,
                why: dict[int, str] | None = None):
    """Rows: per class its real, then its synthetic examples (a row without items is left out
    and named below the grid); each example two tiles side by side, the image and its mask
    (white: lesion). ``real`` / ``synthetic``: lists of (image uint8 (H, W[, C]), mask uint8
    (H, W) or None, label)."""
    plt = _pyplot()
    rows, notes = grid_rows(real, synthetic, classes, per_class, why)
    tiles = 1 if all(it[1] is None for _, _, picks in rows for it in picks) else 2
    # each example's tiles side by side, a narrow empty column between examples
    ratios = ([1.0] * tiles + [0.25]) * per_class
    n = max(1, len(rows))
    row_h, head, foot = 1.2, 0.45, 0.2 + 0.18 * len(notes)
    height = n * row_h + head + foot
    fig, axes = plt.subplots(n, len(ratios) - 1, figsize=(0.95 * sum(ratios[:-1]), height), squeeze=False,
                             gridspec_kw={"width_ratios": ratios[:-1]})
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - head / height, bottom=foot / height, wspace=0.05, hspace=0.35)
    for ax in axes.flat:
        ax.set_axis_off()
    for r, (name, source, picks) in enumerate(rows):
        for k, (image, mask, _) in enumerate(picks):
            col = (tiles + 1) * k
            axes[r, col].imshow(image, cmap="gray", vmin=0, vmax=255)
            if tiles == 2 and mask is not None:
                axes[r, col + 1].imshow(mask, cmap="gray", vmin=0, vmax=max(1, int(mask.max())))
        axes[r, 0].set_title(plain(f"{name}, {source}" + (" (image | mask)" if tiles == 2 else "")), fontsize=9, loc="left")
    if notes:
        fig.text(0.01, 0.01, plain("\n".join(f"not shown: {n}" for n in notes)), fontsize=8, va="bottom")
    return fig
