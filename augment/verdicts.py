"""What the downstream rows say, as numbers: per (task, budget, generator, arm, metric) the mean
and its 95% confidence interval over seeds (Student t), the paired difference (same budget, same
seed) against the shared ``real`` and ``real+classic`` arms with its own interval, the ranking of
every synthetic arm and recipe, and the verdict per generator and budget ("synthetic data helped /
did not help / hurt vs real+classic"), and the audit's quality rows as pass / flag checks
(:func:`checks`). :mod:`augment.report` lays these out; the terminal summary prints the verdict lines.

``real`` and ``real+classic`` use no synthetic data: they are one shared reference (generator
``none``) for every generator of a pipeline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from augment.errors import AugmentError


def _defined(x) -> bool:
    """A metric value that counts: not None (undefined, e.g. AUROC without every class in the
    test labels) and not NaN (the same, in a CSV read back)."""
    return x is not None and not (isinstance(x, (float, np.floating)) and math.isnan(x))


def mean_ci(values) -> tuple[float, float, float]:
    """Mean and 95% t-interval of the defined values (:func:`_defined`: None and NaN are left
    out, never counted as 0); with one value the interval is (nan, nan): it is unknown, not
    zero; with none, all three are nan."""
    from scipy import stats

    v = np.asarray([x for x in values if _defined(x)], dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(v.mean())
    if len(v) < 2:
        return m, float("nan"), float("nan")
    half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return m, m - half, m + half


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm–Bonferroni step-down adjusted p-values, in the input order (Holm 1979, "A simple
    sequentially rejective multiple test procedure"). With the m defined p's sorted ascending,
    the one ranked j (0-based) gets ``max over k <= j of min(1, (m - k) * p_(k))``; the running
    max keeps them monotone in raw-p order. None / NaN entries are left out of m and come back
    as None. Rejecting where the adjusted p < alpha controls the family-wise error at alpha."""
    out: list[float | None] = [None] * len(p_values)
    defined = [(float(p), i) for i, p in enumerate(p_values) if _defined(p)]
    for p, i in defined:
        if not 0.0 <= p <= 1.0:
            raise AugmentError(f"p-value #{i} is {p}; a p-value must be in [0, 1]")
    m, running = len(defined), 0.0
    for j, (p, i) in enumerate(sorted(defined)):  # ties keep input order
        running = max(running, min(1.0, (m - j) * p))
        out[i] = running
    return out


def holm_intervals(samples: Sequence[np.ndarray], alpha: float = 0.05) -> list[dict]:
    """Per comparison (one 1-D array of paired deltas each; NaN entries dropped): ``mean``, ``n``,
    the two-sided one-sample t-test p against 0 (``p``), its Holm-adjusted value (``p_holm``,
    :func:`holm` over the comparisons with a p) and a simultaneous t-interval
    (``ci_low``, ``ci_high``) at the Holm step's ``level``.

    The comparison ranked r (0-based, raw p ascending, ties in input order) among the m with a
    p gets level ``1 - alpha / (m - r)``: the interval of the test Holm runs at that step, so
    for the comparisons Holm rejects in order (and the first it does not) the interval excludes
    0 exactly when ``p_holm < alpha``. Caveat: after the first non-rejection Holm stops and
    rejects nothing further; the later comparisons' intervals are still reported at
    ``1 - alpha / (m - r)``, and one of those may exclude 0 while its ``p_holm >= alpha`` —
    read ``p_holm``, not the interval, for the decision there. (Intervals fully compatible with
    Holm are more involved; see Strassburger & Bretz 2008, Stat. Med.)

    ``p`` is None with fewer than 2 values, with zero spread around a mean of exactly 0 (no
    evidence either way) or with an infinite delta; such a comparison has no rank, ``p_holm``
    and ``level`` None, and its interval is the point (0, 0) for zero spread, else (nan, nan).
    Zero spread around a nonzero mean gives p = 0 and the point interval (mean, mean)."""
    from scipy import stats

    if not 0.0 < alpha < 1.0:
        raise AugmentError(f"alpha is {alpha}; it must be in (0, 1), e.g. 0.05")
    rows = []
    for i, sample in enumerate(samples):
        x = np.asarray(sample, dtype=float)
        if x.ndim != 1:
            raise AugmentError(f"sample #{i} has shape {x.shape}; each comparison's paired deltas must be a 1-D array")
        x = x[~np.isnan(x)]
        n = len(x)
        mean = float(x.mean()) if n else float("nan")
        sd = float(x.std(ddof=1)) if n >= 2 else float("nan")
        if n < 2 or (sd == 0.0 and mean == 0.0):
            p = None
        elif sd == 0.0:
            p = 0.0  # t = mean / 0 is infinite; scipy would warn and say the same
        else:
            p = float(stats.ttest_1samp(x, 0.0).pvalue)
            p = None if math.isnan(p) else p  # an infinite delta: no test
        rows.append({"mean": mean, "p": p, "n": n, "sd": sd})
    adjusted = holm([r["p"] for r in rows])
    ranked = sorted((r["p"], i) for i, r in enumerate(rows) if r["p"] is not None)
    m = len(ranked)
    rank = {i: r for r, (_, i) in enumerate(ranked)}
    out = []
    for i, row in enumerate(rows):
        n, mean, sd = row["n"], row["mean"], row["sd"]
        tail = alpha / (m - rank[i]) if i in rank else None  # this Holm step's test level
        level = None if tail is None else 1.0 - tail
        if n >= 2 and sd == 0.0:
            lo = hi = mean
        elif tail is None:
            lo = hi = float("nan")
        else:
            half = float(stats.t.ppf(1.0 - tail / 2.0, n - 1) * sd / math.sqrt(n))
            lo, hi = mean - half, mean + half
        out.append({"mean": mean, "p": row["p"], "p_holm": adjusted[i], "ci_low": lo, "ci_high": hi, "level": level, "n": n})
    return out


#: metrics with a bounded range: their intervals are clipped to it (deltas to +-its width).
#: A metric not named here (a distance, a loss) is never clipped.
METRIC_RANGE = {m: (0.0, 1.0) for m in ("dice", "fpr", "dice_all", "balanced_accuracy", "macro_f1", "minority_recall", "auroc")}
#: the evaluation arms in report order (augment.evaluate takes them from here), and those without
#: synthetic data, trained once per (budget, seed) and shared by every generator
ARM_ORDER = ["real", "real+classic", "real+copypaste+classic", "real+synthetic", "real+synthetic+classic", "synthetic"]
#: the baseline a generator must beat beside real+classic: real lesions pasted into other budget
#: images (augment.copypaste), with classic augmentation; it needs no generator
COPYPASTE = "real+copypaste+classic"
SHARED_ARMS = ("real", "real+classic", COPYPASTE)


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
    # an undefined value (None from a result record, NaN from a CSV) is NaN from here on: left out
    # of every mean and paired delta (dropna), never 0; a value that is not a number raises
    rows["value"] = rows["value"].astype("float64")
    if "generator" not in rows.columns:
        rows["generator"] = "synthetic"
    rows["generator"] = rows["generator"].fillna("synthetic").astype(str)
    rows.loc[rows["arm"].isin(SHARED_ARMS), "generator"] = "none"
    return rows.drop_duplicates(["task", "budget", "generator", "arm", "seed", "metric"])


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, budget, generator, arm, metric): n (seeds with a value), n_undefined
    (seeds whose value is None / NaN, left out), mean, ci_low, ci_high, and the paired deltas
    ``delta_vs_real*`` and ``delta_vs_classic*`` (mean, ci_low, ci_high) against the shared
    ``real`` / ``real+classic`` arms, over the seeds defined on both sides. Intervals of bounded
    metrics are clipped to the metric's range (:data:`METRIC_RANGE`)."""
    rows = with_generator(rows)
    out = []
    for (task, budget, metric), group in rows.groupby(["task", "budget", "metric"], sort=True):
        series = {key: g.set_index("seed")["value"] for key, g in group.groupby(["generator", "arm"])}
        refs = {arm: series.get(("none", arm)) for arm in SHARED_ARMS}
        for (generator, arm), values in series.items():
            m, lo, hi = _clip(mean_ci(values.to_numpy()), metric)
            rec = {"task": task, "budget": int(budget), "generator": generator, "arm": arm, "metric": metric,
                   "n": int(values.notna().sum()), "n_undefined": int(values.isna().sum()), "mean": m, "ci_low": lo, "ci_high": hi}
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


#: per task: the metric recipes are ranked by and the second one shown beside it
RANKED = {"segmentation": ("dice", "fpr"), "classification": ("balanced_accuracy", "minority_recall")}
#: tasks whose verdict lines give both ranked metrics, not the main one alone
VERDICT_BOTH = ("classification",)
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
    ``n_pairs_bB``; the second metric's the same, named ``{second}_delta_bB`` ... and
    ``{second}_n_pairs[_bB]``. The copy-paste arm (:data:`COPYPASTE`, generator ``none``) is
    ranked too, and every other row gets its main-metric delta against it, pooled and per
    budget: ``{main}_delta_vs_copypaste[_bB]`` with ``..._ci_low_vs_copypaste[_bB]``,
    ``..._ci_high_vs_copypaste[_bB]`` and ``verdict_vs_copypaste``."""
    rows = with_generator(rows)
    rows = rows[rows["task"] == task]
    main, second = RANKED[task]
    ref = rows[(rows["generator"] == "none") & (rows["arm"] == "real+classic")].set_index(["budget", "seed", "metric"])["value"]
    pasted = rows[(rows["generator"] == "none") & (rows["arm"] == COPYPASTE)]
    cp = pasted[pasted["metric"] == main].set_index(["budget", "seed", "metric"])["value"]
    groups = list(rows[rows["generator"] != "none"].groupby(["generator", "arm"], sort=False))
    if len(pasted):
        groups.append((("none", COPYPASTE), pasted))
    out = []
    for (generator, arm), group in groups:
        rec = {"arm": row_label(generator, arm), "generator": generator, "recipe": arm}
        if len(cp) and arm != COPYPASTE:
            part = group[group["metric"] == main].set_index(["budget", "seed", "metric"])["value"]
            d, lo, hi, _ = paired_delta(part, cp, main)
            rec.update({f"{main}_delta_vs_copypaste": d, f"{main}_ci_low_vs_copypaste": lo,
                        f"{main}_ci_high_vs_copypaste": hi, "verdict_vs_copypaste": _verdict(main, lo, hi)})
            for budget, g in part.groupby(level="budget"):
                bd, blo, bhi, bn = paired_delta(g, cp, main)
                if bn:
                    b = int(budget)
                    rec.update({f"{main}_delta_vs_copypaste_b{b}": bd, f"{main}_ci_low_vs_copypaste_b{b}": blo,
                                f"{main}_ci_high_vs_copypaste_b{b}": bhi})
        for metric in (main, second):
            part = group[group["metric"] == metric].set_index(["budget", "seed", "metric"])["value"]
            d, lo, hi, n = paired_delta(part, ref, metric)
            count = "n_pairs" if metric == main else f"{second}_n_pairs"
            rec.update({f"{metric}_delta": d, f"{metric}_ci_low": lo, f"{metric}_ci_high": hi, f"verdict_{metric}": _verdict(metric, lo, hi),
                        count: n})
            for budget, g in part.groupby(level="budget"):
                bd, blo, bhi, bn = paired_delta(g, ref, metric)
                if bn:
                    b = int(budget)
                    rec.update({f"{metric}_delta_b{b}": bd, f"{metric}_ci_low_b{b}": blo, f"{metric}_ci_high_b{b}": bhi, f"{count}_b{b}": bn})
        out.append(rec)
    frame = pd.DataFrame(out)
    if frame.empty:
        return frame
    # stable: arms that tie keep the order they were trained in, so a pick among ties is reproducible
    frame = frame.sort_values(f"{main}_delta", ascending=False, na_position="last", kind="stable").reset_index(drop=True)
    frame.insert(0, "rank", range(1, len(frame) + 1))
    return frame


def rankings(rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """:func:`ranking` for every task the rows hold that has synthetic arms or recipes."""
    tables = {task: ranking(rows, task) for task in RANKED if len(rows) and (rows["task"] == task).any()}
    return {task: table for task, table in tables.items() if len(table)}


#: how a metric is named in a sentence
METRIC_NAMES = {"dice": "Dice", "fpr": "false-positive rate", "balanced_accuracy": "balanced accuracy",
                "minority_recall": "minority-class recall", "macro_f1": "macro-F1", "auroc": "AUROC"}
#: a ranking verdict as the words of the report's verdict lines
VERDICT_WORDS = {"better": "helped", "worse": "hurt", "no evidence": "did not help"}
VERDICT_NOTE = ("Each generator's synthetic arm or recipe was picked on the validation split (the largest paired delta vs "
                "real+classic of the val score, pooled over every budget and seed), before any test score was read; the "
                "line gives that pick's result on the untouched test split against real+classic at the same budget and "
                "seed, mean and 95% t-interval. helped / hurt: the interval excludes 0; did not help: it holds 0. "
                "The first line is the pick over every generator.")
VERDICT_NOTE_TEST = ("No validation scores were recorded (an evaluation from before they were kept), so each generator's best "
                     "synthetic arm or recipe is picked on the test results themselves (its paired delta vs real+classic "
                     "pooled over every budget and seed): a lone 'helped' among many arms is weak evidence.")


def select_on_validation(validation: pd.DataFrame) -> dict[str, dict]:
    """The picks a pipeline reports, made from val scores alone (``val_results.csv`` rows: the same
    columns as the test results, no test score among them): per task, per generator, the synthetic
    arm or recipe with the largest paired delta vs ``real+classic`` of the task's main metric on
    val, pooled over every (budget, seed) (:func:`ranking` of the val rows), and the pick over
    every generator. Returns ``{task: {"generators": {generator: arm}, "overall": (generator,
    arm), "table": the val ranking}}``; a task without val rows for a synthetic arm has no entry."""
    picks = {}
    for task, table in rankings(validation).items():
        table = table[table[f"{RANKED[task][0]}_delta"].notna()]
        if not len(table):
            continue
        first = table.groupby("generator", sort=False).head(1)  # the table is sorted, best first
        picks[task] = {"generators": dict(zip(first["generator"], first["recipe"])),
                       "overall": (table.iloc[0]["generator"], table.iloc[0]["recipe"]), "table": table}
    return picks


def exploratory(rows: pd.DataFrame, task: str, alpha: float = 0.05) -> pd.DataFrame:
    """The full test ranking (:func:`ranking`) with Holm-adjusted p-values and simultaneous
    intervals across every comparison in it (:func:`holm_intervals` over each arm's pooled paired
    deltas vs ``real+classic``): ``p``, ``p_holm``, ``holm_ci_low``, ``holm_ci_high``. Read it as
    exploration: any arm ranked first here was not chosen in advance."""
    table = ranking(rows, task)
    if not len(table):
        return table
    main = RANKED[task][0]
    rows = with_generator(rows)
    rows = rows[(rows["task"] == task) & (rows["metric"] == main)]
    ref = rows[(rows["generator"] == "none") & (rows["arm"] == "real+classic")].set_index(["budget", "seed"])["value"]
    samples = []
    for generator, arm in zip(table["generator"], table["recipe"]):
        part = rows[(rows["generator"] == generator) & (rows["arm"] == arm)].set_index(["budget", "seed"])["value"]
        samples.append((part - ref.reindex(part.index)).dropna().to_numpy())
    adjusted = holm_intervals(samples, alpha)
    table = table.copy()
    table["p"] = [a["p"] for a in adjusted]
    table["p_holm"] = [a["p_holm"] for a in adjusted]
    table["holm_ci_low"] = [_clip((a["mean"], a["ci_low"], a["ci_high"]), main, delta=True)[1] for a in adjusted]
    table["holm_ci_high"] = [_clip((a["mean"], a["ci_low"], a["ci_high"]), main, delta=True)[2] for a in adjusted]
    return table


def explorations(rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """:func:`exploratory` for every task the rows hold that has synthetic arms or recipes (the
    tasks of :func:`rankings`, each ranked once)."""
    tables = {task: exploratory(rows, task) for task in RANKED if len(rows) and (rows["task"] == task).any()}
    return {task: table for task, table in tables.items() if len(table)}


def verdicts(rows: pd.DataFrame, picks: dict[str, dict] | None = None, generator_seeds: int | None = None) -> list[dict]:
    """The verdict records: per task and generator, its synthetic arm or recipe picked on val
    (``picks``, :func:`select_on_validation`; without a pick for the task, the best by pooled
    paired delta on test, and ``selected_on`` says ``test``), one record per budget and, with
    several budgets, one pooled over them (``budget`` None); the test result of the pick over every
    generator comes first, with ``headline`` True. For classification each scope has a record per
    ranked metric (balanced accuracy, then the rarest class's recall). Each: task, generator, arm, budget, metric,
    delta, ci_low, ci_high (None when unknown), n_pairs, generator_seeds, selected_on, headline,
    verdict (``helped`` / ``did not help`` / ``hurt``, or ``unknown`` with fewer than 2 pairs) and
    ``line``, the sentence the report prints."""
    out = []
    for task, table in rankings(rows).items():
        main = RANKED[task][0]
        pick = (picks or {}).get(task)
        budgets = sorted(int(c.rsplit("b", 1)[1]) for c in table.columns if c.startswith(f"{main}_delta_b"))
        chosen = []  # (headline, ranking row)
        if pick is not None:
            by_arm = {(r["generator"], r["recipe"]): r for _, r in table.iterrows()}
            if len(pick["table"]) > 1 and tuple(pick["overall"]) in by_arm:  # a pick among several
                chosen.append((True, by_arm[tuple(pick["overall"])]))
            chosen += [(False, by_arm[(g, a)]) for g, a in pick["generators"].items() if (g, a) in by_arm]
        else:
            chosen = [(False, group.iloc[0]) for _, group in table.groupby("generator", sort=False)]
        # classification: balanced accuracy and the rarest class's recall, the two things rebalancing is for
        metrics = RANKED[task] if task in VERDICT_BOTH else (main,)
        for headline, best in chosen:
            scopes = [(b, f"_b{b}") for b in budgets]
            if len(budgets) > 1:
                scopes.append((None, ""))
            if headline:
                scopes = scopes[-1:]  # the pick over every generator: pooled only
            for (budget, suffix), metric in ((scope, m) for scope in scopes for m in metrics):
                d = best.get(f"{metric}_delta{suffix}")
                if d is None or pd.isna(d):
                    continue  # this arm has no paired result at this budget
                lo, hi = best[f"{metric}_ci_low{suffix}"], best[f"{metric}_ci_high{suffix}"]
                n = f"n_pairs{suffix}" if metric == main else f"{metric}_n_pairs{suffix}"
                rec = {"task": task, "generator": best["generator"], "arm": best["recipe"], "budget": budget, "metric": metric,
                       "delta": float(d), "ci_low": None if pd.isna(lo) else float(lo), "ci_high": None if pd.isna(hi) else float(hi),
                       "n_pairs": int(best[n]), "generator_seeds": None if best["recipe"] == COPYPASTE else generator_seeds,
                       "selected_on": "validation" if pick is not None else "test", "headline": headline,
                       "verdict": VERDICT_WORDS.get(_verdict(metric, lo, hi), "unknown")}
                cd = best.get(f"{metric}_delta_vs_copypaste{suffix}")
                if cd is not None and not pd.isna(cd):  # the same pick against copy-paste
                    clo, chi = best[f"{metric}_ci_low_vs_copypaste{suffix}"], best[f"{metric}_ci_high_vs_copypaste{suffix}"]
                    rec["vs_copypaste"] = {"delta": float(cd), "ci_low": None if pd.isna(clo) else float(clo),
                                           "ci_high": None if pd.isna(chi) else float(chi),
                                           "verdict": _verdict(metric, clo, chi)}
                out.append({**rec, "line": verdict_line(rec)})
    return out


def verdict_line(rec: dict) -> str:
    """``cvae_mask (frac50) b16: synthetic data did not help vs real+classic: +0.012 Dice
    [-0.020, +0.044] (3 seeds, 1 generator seed)``; the headline starts ``Selected on validation:``."""
    where = "all budgets" if rec["budget"] is None else f"b{rec['budget']}"
    pairs = f"{rec['n_pairs']} {'budget-seed pairs' if rec['budget'] is None else 'seeds' if rec['n_pairs'] > 1 else 'seed'}"
    gseeds = rec.get("generator_seeds")
    if gseeds:
        pairs += f", {gseeds} generator seed{'s' if gseeds > 1 else ''}"
    head = f"copy-paste ({rec['arm']}) {where}" if rec["arm"] == COPYPASTE else f"{rec['generator']} ({rec['arm']}) {where}"
    what = "pasted real lesions" if rec["arm"] == COPYPASTE else "synthetic data"
    if rec.get("headline"):
        head = f"Selected on validation, over every generator: {head}, on test"
    value = f"{rec['delta']:+.3f} {METRIC_NAMES.get(rec['metric'], rec['metric'])}"
    if rec["verdict"] == "unknown":
        return f"{head}: {value} vs real+classic ({pairs}); not enough seeds for an interval"
    line = f"{head}: {what} {rec['verdict']} vs real+classic: {value} [{rec['ci_low']:+.3f}, {rec['ci_high']:+.3f}] ({pairs})"
    cp = rec.get("vs_copypaste")
    if cp and cp["ci_low"] is not None:
        word = {"better": "beat", "worse": "lost to", "no evidence": "did not beat"}[cp["verdict"]]
        line += f"; it {word} copy-paste: {cp['delta']:+.3f} [{cp['ci_low']:+.3f}, {cp['ci_high']:+.3f}]"
    return line


# ---- the audit's quality rows as pass / flag checks ----

#: the pass/flag rule of each check of the report's short audit table (said beside the table)
CHECK_RULES = {
    "frechet_distance": "flag when above 3x the real-vs-real baseline (real test vs real train): "
                        "the synthetic set is much further from the train images than unseen real images are",
    "kid": "flag when above 3x the real-vs-real baseline (3x its spread over subsets when the baseline is <= 0)",
    "diversity": "flag when synthetic same-class pairs are more alike than real ones by more than 0.10 "
                 "(mean pairwise SSIM / MS-SSIM); the least diverse class is shown",
    "memorisation_fraction": "flag when above the real train split's own fraction under the same copy rule",
    "mask_consistency": "flag when the segmenter trained on the budget agrees with synthetic masks by more than 0.10 Dice "
                        "less than with real val masks of the class; the worst class is shown",
    "lesion_off_gamut_fraction": "flag when more than 0.05 above the real-vs-real baseline (real test lesions): the share "
                                 "of synthetic lesion pixels whose colour real train lesions almost never have (outside "
                                 "the colour cells of 99.5 % of their pixels)",
    "frd": "flag when above 3x the real-vs-real baseline, as for the Fréchet distance (radiomic features z-scored by the "
           "real train split; frd-score reports the log of this number)",
    "precision": "flag when more than 0.20 below the real-vs-real baseline (k=5 nearest neighbours, domain encoder): "
                 "many synthetic images lie outside every real image's neighbourhood (fidelity)",
    "recall": "flag when more than 0.20 below the real-vs-real baseline: many real images lie outside every synthetic "
              "image's neighbourhood (Naeem et al. find recall less reliable than coverage)",
    "density": "flag when below half the real-vs-real baseline: synthetic images sit in sparse corners of the real data",
    "coverage": "flag when more than 0.20 below the real-vs-real baseline: real images without a synthetic image near "
                "them (missing modes)",
}
CHECK_NAMES = {"frechet_distance": "Fréchet distance", "kid": "KID", "diversity": "diversity",
               "memorisation_fraction": "memorised fraction", "mask_consistency": "mask consistency",
               "lesion_off_gamut_fraction": "lesion colours", "frd": "FRD",
               "precision": "precision", "recall": "recall", "density": "density", "coverage": "coverage"}
EXTRACTOR_NAMES = {"domain": "domain encoder", "inception": "Inception", "radiomics": "radiomics"}
#: checks measured in a feature space: their name says which (the others are one per class or none)
PER_EXTRACTOR = ("frechet_distance", "kid", "frd", "precision", "recall", "density", "coverage")
#: checks shown at their worst class: the class is said in the check's name
PER_CLASS = ("diversity", "mask_consistency")
#: how far below its real-vs-real baseline a precision, recall or coverage may be: about 2 binomial
#: standard errors at 25 images (sqrt(0.25 / 25) = 0.10), so sampling noise alone rarely flags it
PRDC_GAP = 0.20
#: how far above real test lesions' share a synthetic set's off-gamut lesion pixels may be: 5 % of
#: the lesion area (CVC-ClinicDB's LDM inpainter had 3-22 % off-hue and 5-22 % clipped pixels in its
#: placed polyps, against 0.2 % of each in real ones)
GAMUT_GAP = 0.05


def _flagged(check: str, value: float, baseline: float, spread: float) -> bool:
    if check in ("frechet_distance", "frd"):
        return value > 3 * baseline
    if check in ("precision", "recall", "coverage"):
        return baseline - value > PRDC_GAP
    if check == "density":
        return value < 0.5 * baseline
    if check == "kid":
        return value > 3 * (baseline if baseline > 0 else spread)
    if check == "diversity":
        return value - baseline > 0.10
    if check == "memorisation_fraction":
        return value > baseline
    if check == "lesion_off_gamut_fraction":
        return value - baseline > GAMUT_GAP
    return baseline - value > 0.10  # mask_consistency


def checks(quality: list[dict], classes: dict[int, str] | None = None) -> pd.DataFrame:
    """The audit as pass/flag checks, one row per (generator, budget, check): Fréchet distance,
    KID, FRD and precision / recall / density / coverage per extractor, diversity and mask
    consistency at their worst class, memorised fraction. ``value`` and ``baseline`` are means
    over the generator seeds; ``result`` is ``pass`` / ``flag`` by :data:`CHECK_RULES`, or ``–``
    without a baseline. ``quality``: the report's quality rows (audit metrics tagged with
    generator, budget, seed). :func:`audit_table` lays it out one row per generator and budget."""
    q = pd.DataFrame(quality)
    if q.empty:
        return pd.DataFrame(columns=["generator", "budget", "check", "value", "baseline", "result"])
    if "generator" not in q.columns:
        q["generator"] = "synthetic"
    if "budget" not in q.columns:
        q["budget"] = None
    for col in ("value", "baseline", "baseline_std"):
        q[col] = pd.to_numeric(q[col], errors="coerce") if col in q.columns else float("nan")
    kind = q["metric"].str.replace(r"^diversity_.*_class_\d+$", "diversity", regex=True).str.replace(
        r"^mask_dice_class_\d+$", "mask_consistency", regex=True)
    q = q.assign(check=kind, cls=q["metric"].str.extract(r"_class_(\d+)$")[0])
    q = q[q["check"].isin(list(CHECK_RULES))]
    means = q.groupby(["generator", "budget", "check", "extractor", "cls"], sort=False, dropna=False)[
        ["value", "baseline", "baseline_std"]].mean().reset_index()
    out = []
    for (generator, budget), g in means.groupby(["generator", "budget"], sort=False, dropna=False):
        for check in CHECK_RULES:
            part = g[g["check"] == check]
            if part.empty:
                continue
            if check in PER_CLASS:
                gap = (part["value"] - part["baseline"]).dropna()  # an undefined class is no candidate
                part = part.loc[[gap.idxmax() if check == "diversity" else gap.idxmin()]] if len(gap) else part.iloc[:1]
            for r in part.itertuples():
                name = CHECK_NAMES[check]
                if check in PER_EXTRACTOR:
                    name += f" ({EXTRACTOR_NAMES.get(r.extractor, r.extractor)})"
                elif pd.notna(r.cls):
                    name += f" (class {(classes or {}).get(int(r.cls), r.cls)})"
                known = pd.notna(r.value) and pd.notna(r.baseline)
                flag = known and _flagged(check, r.value, r.baseline, r.baseline_std if pd.notna(r.baseline_std) else 0.0)
                out.append({"generator": generator, "budget": budget, "check": name, "kind": check, "value": r.value,
                            "baseline": r.baseline, "result": ("flag" if flag else "pass") if known else "–"})
    return pd.DataFrame(out)


def check_column(kind: str, check: str) -> str:
    """The column of a check in :func:`audit_table`: its name, less the class of a per-class
    check (which class was the worst differs between rows)."""
    return CHECK_NAMES.get(kind, kind) if kind in PER_CLASS else check


def audit_table(audit: pd.DataFrame) -> pd.DataFrame:
    """:func:`checks` pivoted: one row per (generator, budget), one column per check (in
    :data:`CHECK_RULES` order), each cell ``value (pass)`` / ``value (flag)`` (4 significant
    digits), the value alone without a baseline, ``–`` where the audit has no such check; a
    per-class check's cell names its worst class: ``0.8123 (flag, class round)``."""
    if audit.empty or "kind" not in audit.columns:
        return pd.DataFrame(columns=["generator", "budget"])
    order = {k: i for i, k in enumerate(CHECK_RULES)}
    rows: dict[tuple, dict] = {}
    columns: dict[str, tuple[int, int]] = {}
    for i, r in enumerate(audit.itertuples()):
        column = check_column(r.kind, r.check)
        columns.setdefault(column, (order.get(r.kind, len(order)), i))
        value = "–" if pd.isna(r.value) else f"{r.value:.4g}"
        tags = [r.result] if r.result in ("pass", "flag") and value != "–" else []
        if r.kind in PER_CLASS and r.check != column:
            tags.append(r.check[len(column) + 2:-1])  # "diversity (class round)" -> "class round"
        rows.setdefault((r.generator, r.budget), {})[column] = f"{value} ({', '.join(tags)})" if tags else value
    names = sorted(columns, key=columns.get)
    return pd.DataFrame([{"generator": g, "budget": b, **{c: cells.get(c, "–") for c in names}} for (g, b), cells in rows.items()])
