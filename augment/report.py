"""The report: ``report.json`` (stable keys ``quality``, ``downstream``, ``summary``, ``ranking``,
``verdicts``), ``report.md``, a self-contained ``report.html`` (figures embedded), ``figures/``
and ``tables/``, and the terminal summary. It opens with the verdict lines, then the ranking, the
audit's pass/flag table, the protocol and the tables of means and paired deltas.

The numbers come from :mod:`augment.verdicts` (means, intervals, paired deltas, ranking,
verdicts) and the figures from :mod:`augment.figures`; this module lays them out as text.
"""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path

import pandas as pd

from augment.runinfo import write_json
from augment.verdicts import (
    CHECK_NAMES, CHECK_RULES, METRIC_NAMES, RANKED, VERDICT_NOTE, VERDICT_NOTE_TEST, audit_table, checks, explorations, row_label,
    select_on_validation, summarize, verdicts,
)


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
    return table.reindex(list(dict.fromkeys(labels))).fillna("–")


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
    return table.reindex(list(dict.fromkeys(labels))).fillna("–")



def ranking_text(table: pd.DataFrame, task: str = "segmentation") -> str:
    """The ranking as a fixed-width table: pooled deltas with CIs, then the per-budget means. The
    second metric's columns are left out when no arm has a value for it (e.g. no false-positive
    rate without a lesion-free test image)."""
    main, second = RANKED[task]
    per_budget = sorted((c for c in table.columns if c.startswith(f"{main}_delta_b")), key=lambda c: int(c.rsplit("b", 1)[1]))
    shown = pd.DataFrame({
        "rank": table["rank"], "arm": table["arm"], "pairs": table["n_pairs"],
        f"{main} delta [95% CI]": [_fmt(r[f"{main}_delta"], r[f"{main}_ci_low"], r[f"{main}_ci_high"], signed=True) for _, r in table.iterrows()],
        main: table[f"verdict_{main}"].replace("unknown", "–"),
        **{f"b{c.rsplit('b', 1)[1]}": table[c].map(lambda v: f"{v:+.3f}" if pd.notna(v) else "–") for c in per_budget},
        f"{second} delta [95% CI]": [_fmt(r[f"{second}_delta"], r[f"{second}_ci_low"], r[f"{second}_ci_high"], signed=True) for _, r in table.iterrows()],
        second: table[f"verdict_{second}"].replace("unknown", "–"),
    })
    if table[f"{second}_delta"].isna().all():
        shown = shown.drop(columns=[f"{second} delta [95% CI]", second])
    if f"{main}_delta_vs_copypaste" in table:  # the second bar: real lesions pasted, no generator
        at = shown.columns.get_loc(main) + 1
        shown.insert(at, "vs copy-paste [95% CI]", [_fmt(r[f"{main}_delta_vs_copypaste"], r[f"{main}_ci_low_vs_copypaste"],
                                                         r[f"{main}_ci_high_vs_copypaste"], signed=True)
                                                    if pd.notna(r[f"{main}_delta_vs_copypaste"]) else "–" for _, r in table.iterrows()])
    if "p_holm" in table:  # the exploratory test ranking: Holm-adjusted across every comparison in it
        at = shown.columns.get_loc(main) + 1
        shown.insert(at, f"{main} Holm [CI]", [_fmt(r[f"{main}_delta"], r["holm_ci_low"], r["holm_ci_high"], signed=True)
                                               if pd.notna(r["holm_ci_low"]) else "–" for _, r in table.iterrows()])
        shown.insert(at + 1, "p Holm", table["p_holm"].map(lambda v: f"{v:.3g}" if pd.notna(v) else "–"))
    return shown.to_string(index=False)


def quality_table(quality: list[dict]) -> pd.DataFrame:
    """Audit metrics per (generator, budget): value and real-vs-real baseline, means over seeds."""
    q = pd.DataFrame(quality)
    if "generator" not in q.columns:
        q["generator"] = "synthetic"
    q = q.assign(value=pd.to_numeric(q["value"], errors="coerce"), baseline=pd.to_numeric(q["baseline"], errors="coerce"))
    keys = [k for k in ("generator", "budget", "metric", "extractor") if k in q.columns]
    return q.groupby(keys, sort=False)[["value", "baseline"]].mean()


RANKING_NOTE = ("paired delta vs real+classic, pooled over every (budget, seed) pair (mean [95% CI]; "
                "better / worse: the interval excludes 0; –: fewer than 2 pairs, no interval; bN: mean delta at budget N; "
                "vs copy-paste: the same paired delta against real+copypaste+classic, where that arm was trained)")
EXPLORATORY_NOTE = ("Exploratory: ranked on the test split after every arm was trained, so the first place here was not "
                    "chosen in advance. Holm [CI]: the interval adjusted for every comparison in this table (Holm's "
                    "step-down, family-wise 95%), with its adjusted p-value; trust a 'better' only where the Holm interval "
                    "also excludes 0.")


def generator_seed_note(n: int | None) -> str:
    """How many trained generators each interval covers, and the warning when it is one."""
    if not n:
        return ""
    if n == 1:
        return ("Every interval here covers task-model seeds only: each budget's synthetic set came from one trained "
                "generator (one generator seed), so a generator's own seed-to-seed variation is not in it. Train "
                "generator_seeds: [0, 1, 2] before publishing an interval.")
    return f"Each interval covers {n} generator seeds (a generator trained per seed) as well as the task-model seeds."


def selection_text(pick: dict, explore: pd.DataFrame, task: str) -> str:
    """What validation picked, whether it beat real+classic there at all, and whether the best on
    test is the same arm."""
    gen, arm = pick["overall"]
    lead = pick["table"].iloc[0][f"{RANKED[task][0]}_delta"]
    head = (f"On validation no synthetic arm or recipe beat real+classic (the best, {row_label(gen, arm)}, by {lead:+.3f}), "
            "so the pick is the least bad. " if lead <= 0 else "")
    if not len(explore):
        return f"{head}Picked on validation: {row_label(gen, arm)}."
    top = explore.iloc[0]
    if (top["generator"], top["recipe"]) == (gen, arm):
        return f"{head}Picked on validation: {row_label(gen, arm)}; the best on test (exploratory) is the same arm."
    where = explore.loc[(explore["generator"] == gen) & (explore["recipe"] == arm), "rank"]
    place = f"ranks {int(where.iloc[0])} of {len(explore)} on test" if len(where) else "has no test result"
    return f"{head}Picked on validation: {row_label(gen, arm)}, which {place}; the best on test (exploratory) is {top['arm']}."


TABLE_NOTE = "A value without [CI]: one seed, so no interval; –: no result for that arm and budget."
QUALITY_NOTE = ("–: no real-vs-real baseline (a count, or a generator's own figure on its val split), "
                "or a value the audit could not define (why: listed below the table, and in its audit.json).")
#: a task's metric that no result defines, and why, said in one line in place of its table and figure
NOT_MEASURED = {("segmentation", "fpr"): "no test image without a lesion: false-positive rate not measured"}


def not_measured(downstream: pd.DataFrame) -> dict[tuple[str, str], str]:
    """(task, metric) -> the line saying why, for each metric of a task in ``downstream`` that
    has no value in any result (absent, or every value None / NaN); other metrics get a generic line."""
    if not len(downstream):
        return {}
    values = pd.to_numeric(downstream["value"], errors="coerce")
    out = {}
    for task in dict.fromkeys(downstream["task"]):
        ranked = [m for m in RANKED.get(task, ()) if m in METRIC_NAMES]
        for metric in dict.fromkeys([*ranked, *downstream.loc[downstream["task"] == task, "metric"]]):
            if not values[(downstream["task"] == task) & (downstream["metric"] == metric)].notna().any():
                out[(task, metric)] = NOT_MEASURED.get(
                    (task, metric), f"{METRIC_NAMES.get(metric, metric)}: no result defines it ({task}); not measured")
    return out


def undefined_note(summary: pd.DataFrame, metric: str, records: list[dict]) -> str:
    """One line on the results whose ``metric`` is undefined (None / NaN rows in the summary's
    ``n_undefined``, or ``records``: the evaluations' ``undefined`` reasons), or "" when none is."""
    part = summary[summary["metric"] == metric]
    count = max(int(part["n_undefined"].sum()) if "n_undefined" in part else 0, len(records))
    if not count:
        return ""
    reasons = "; ".join(dict.fromkeys(str(r.get("reason")) for r in records if r.get("reason"))) or "no reason recorded"
    return (f"{METRIC_NAMES.get(metric, metric)}: {count} result{'s' if count != 1 else ''} undefined ({reasons}); "
            "left out of the means and deltas, never counted as 0.")


def inception_note(meta: dict) -> str:
    """Whether the audit computed Inception FID, from the audits' ``extractors.inception`` records
    (``meta["inception"]``: a list of them); empty when there was no audit."""
    records = meta.get("inception") or []
    if not records:
        return ""
    done = [r for r in records if r.get("computed")]
    if done:
        return (f"Inception FID computed with `{done[0].get('weights')}` in {len(done)} of {len(records)} audits; "
                "the Fréchet distance and KID rows name their extractor.")
    return ("Inception FID not computed: no Inception weights given (the audit's `inception_weights`, "
            "`augment audit --inception-weights FILE`, or `audit: {inception_weights: FILE}` in a pipeline; never downloaded). "
            "Fréchet distance and KID here use the domain encoder: a small CNN label classifier trained on the real train split.")


def radiomics_note(meta: dict) -> str:
    """Why the audit has no Fréchet Radiomics Distance, from the audits' ``extractors.radiomics``
    records (``meta["radiomics"]``); empty when every audit computed it, or there was no audit."""
    skipped = [r for r in meta.get("radiomics") or [] if isinstance(r, dict) and not r.get("computed")]
    return f"Fréchet Radiomics Distance not computed in {len(skipped)} audit(s): {skipped[0].get('reason')}." if skipped else ""


def _blocks(quality: list[dict], downstream: pd.DataFrame, meta: dict, captions: dict[str, str], figures: list[str],
            terminal: bool = False, validation: pd.DataFrame | None = None) -> list[tuple]:
    """The report as blocks, in reading order: ("h", level, text), ("p", text), ("ul", [(text,
    class)]), ("pre", text), ("table", frame, show_index), ("fig", name, caption). The terminal
    gets the verdict, ranking, audit checks and metric tables; the files get everything."""
    summary = summarize(downstream) if len(downstream) else pd.DataFrame()
    picks = select_on_validation(validation) if validation is not None and len(validation) else {}
    n_gseeds = meta.get("generator_seed_count")
    lines = verdicts(downstream, picks, n_gseeds) if len(downstream) else []
    blocks: list[tuple] = [("h", 2, "Verdict: did synthetic data help?")]
    if lines:
        on_test = any(v["selected_on"] == "test" for v in lines)
        blocks += [("ul", [(v["line"], v["verdict"].replace(" ", "-")) for v in lines]),
                   ("p", VERDICT_NOTE_TEST if on_test else VERDICT_NOTE)]
        blocks += [("p", generator_seed_note(n_gseeds))] if n_gseeds else []
    else:
        blocks.append(("p", "No synthetic arm or recipe has a paired result against real+classic yet."))
    for task, explore in explorations(downstream).items():
        if task in picks:
            blocks += [("h", 2, f"Selection on validation ({task})"),
                       ("p", f"Every synthetic arm and recipe on the val split, ranked by {RANKING_NOTE}. "
                             + selection_text(picks[task], explore, task)),
                       ("pre", ranking_text(picks[task]["table"], task))]
        blocks += [("h", 2, f"Ranking on test ({task}), exploratory"),
                   ("p", f"Every synthetic arm and recipe ranked by {RANKING_NOTE}. {EXPLORATORY_NOTE}"),
                   ("pre", ranking_text(explore, task))]
    classes = {int(k): v for k, v in (meta.get("classes") or {}).items()}
    audit = checks(quality, classes)
    if len(audit):
        from augment.predictive import audit_vs_gain, summary_blocks

        blocks += [("h", 2, "Audit: pass / flag per generator and budget (means over generator seeds; baseline: real vs real)"),
                   ("table", audit_table(audit), False),
                   ("ul", [(f"{CHECK_NAMES[k]}: {rule}", "") for k, rule in CHECK_RULES.items() if k in set(audit["kind"])]),
                   ("h", 2, "Does the audit predict the gain?"), *summary_blocks(audit_vs_gain(audit, lines)[0])]
    blocks += [("p", note) for note in (inception_note(meta), radiomics_note(meta)) if note]
    if not terminal and meta.get("protocol"):
        blocks += [("h", 2, "Protocol"), ("p", meta["protocol"])]
    missing = not_measured(downstream)
    unmeasured = {metric for _, metric in missing}
    records = [r for r in meta.get("undefined") or [] if isinstance(r, dict)]
    for metric in [m for m in dict.fromkeys(summary["metric"]) if m not in unmeasured] if len(summary) else []:
        name = METRIC_NAMES.get(metric, metric)
        blocks += [("h", 2, f"{name}: mean [95% CI] over seeds, real test split"), ("table", summary_table(summary, metric), True)]
        deltas = delta_table(summary, metric)
        if len(deltas):
            blocks += [("h", 3, f"{name}: paired delta vs real+classic (same budget and seed)"), ("table", deltas, True)]
        note = undefined_note(summary, metric, [r for r in records if r.get("metric") == metric])
        blocks += [("p", note)] if note else []
        blocks.append(("p", TABLE_NOTE))
    blocks += [("p", line) for line in missing.values()]
    if terminal:
        return blocks
    if figures:
        blocks.append(("h", 2, "Figures"))
        blocks += [("fig", name, captions.get(name) or name.replace("_", " ")) for name in figures]
    for metric in [m for m in dict.fromkeys(summary["metric"]) if m not in unmeasured] if len(summary) else []:
        deltas = delta_table(summary, metric, ref="real")
        if len(deltas):
            blocks += [("h", 3, f"Details: {METRIC_NAMES.get(metric, metric)}, paired delta vs real (same budget and seed)"),
                       ("table", deltas, True)]
    if quality:
        blocks += [("h", 2, "Details: the full quality and memorisation audit (mean over generator seeds; baseline = real vs real)"),
                   ("table", quality_table(quality), True), ("p", QUALITY_NOTE)]
        why = {f"{r.get('metric')} ({r.get('extractor')}){side}: undefined: {r[key]}": ""
               for r in quality for key, side in (("undefined", ""), ("baseline_undefined", " baseline")) if r.get(key)}
        blocks += [("ul", list(why.items()))] if why else []
    return blocks


def _num(v) -> str:
    return "–" if v is None or pd.isna(v) else f"{v:.4g}"


def _table_text(frame: pd.DataFrame, index: bool) -> str:
    return frame.to_string(index=index, na_rep="–", float_format=_num)


def write_report(out: str | Path, quality: list[dict], downstream: pd.DataFrame, figures: dict[str, bytes],
                 meta: dict, captions: dict[str, str] | None = None, validation: pd.DataFrame | None = None) -> Path:
    """Write report.json / .md / .html, figures/*.png and tables/*.csv into ``out``. ``captions``:
    a sentence per figure name (the name itself, in words, where none is given); ``meta``: name,
    protocol, and optionally ``classes`` ({label: name}), ``inception`` (the audits'
    ``extractors.inception`` records) and ``undefined`` (the evaluations' undefined metrics with
    their reasons: task, budget, generator, arm, seed, metric, reason), ``generator_seed_count``.
    ``validation``: the val scores of the same task models (the rows of each evaluation's
    ``val_results.csv``), the only thing the verdict's picks are made from
    (:func:`~augment.verdicts.select_on_validation`)."""
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    (out / "tables").mkdir(exist_ok=True)
    summary = summarize(downstream) if len(downstream) else pd.DataFrame()
    for name, data in figures.items():
        (out / "figures" / f"{name}.png").write_bytes(data)
    downstream.to_csv(out / "tables" / "downstream.csv", index=False)
    summary.to_csv(out / "tables" / "summary.csv", index=False)
    pd.DataFrame(quality).to_csv(out / "tables" / "quality.csv", index=False)
    audit = checks(quality, meta.get("classes"))
    audit.to_csv(out / "tables" / "audit_checks.csv", index=False)
    audit_table(audit).to_csv(out / "tables" / "audit_table.csv", index=False)
    validation = validation if validation is not None else pd.DataFrame(columns=downstream.columns)
    validation.to_csv(out / "tables" / "validation.csv", index=False)
    ranks = explorations(downstream)
    for task, table in ranks.items():
        table.to_csv(out / "tables" / f"ranking_{task}.csv", index=False)
    picks = select_on_validation(validation) if len(validation) else {}
    for task, pick in picks.items():
        pick["table"].to_csv(out / "tables" / f"selection_{task}.csv", index=False)
    lines = verdicts(downstream, picks, meta.get("generator_seed_count")) if len(downstream) else []
    from augment.predictive import audit_vs_gain, caption, enough, figure_audit_vs_gain

    gain, points = audit_vs_gain(audit, lines)
    gain.to_csv(out / "tables" / "audit_vs_gain.csv", index=False)
    if enough(gain):
        from augment.figures import png

        figures = {**figures, "audit_vs_gain": png(figure_audit_vs_gain(points, gain))}
        captions = {**(captions or {}), "audit_vs_gain": caption(gain)}
        (out / "figures" / "audit_vs_gain.png").write_bytes(figures["audit_vs_gain"])
    selection = {task: {"overall": list(p["overall"]), "generators": p["generators"], "ranking": p["table"].to_dict("records")}
                 for task, p in picks.items()}
    write_json({"quality": quality, "downstream": downstream.to_dict("records"), "validation": validation.to_dict("records"),
                "summary": summary.to_dict("records"), "meta": meta, "verdicts": lines, "selection": selection,
                "audit_checks": audit.to_dict("records"),
                "ranking": {task: table.to_dict("records") for task, table in ranks.items()}}, out / "report.json")
    blocks = _blocks(quality, downstream, meta, captions or {}, list(figures), validation=validation)
    title = f"augment report: {meta.get('name', '')}"
    (out / "report.md").write_text(_markdown(title, blocks))
    (out / "report.html").write_text(_html(title, blocks, figures))
    return out


def summary_text(out: str | Path) -> str:
    """What ``augment run`` and ``augment report`` print: the verdict lines first, then the
    ranking, the audit checks and the metric tables, read back from ``OUT/report.json``."""
    from augment.output import read_json

    rep = read_json(Path(out) / "report.json", "report")
    downstream = pd.DataFrame(rep.get("downstream") or [])
    if not len(downstream):
        return "no downstream results yet"
    lines = []
    validation = pd.DataFrame(rep.get("validation") or [])
    for block in _blocks(rep.get("quality") or [], downstream, rep.get("meta") or {}, {}, [], terminal=True, validation=validation):
        kind = block[0]
        if kind == "h":
            lines += ["", block[2]]
        elif kind == "ul":
            lines += [f"  {text}" for text, _ in block[1]]
        elif kind == "table":
            lines.append(_table_text(block[1], block[2]))
        else:
            lines.append(block[1])
    return "\n".join(lines).strip("\n")


def _markdown(title: str, blocks: list[tuple]) -> str:
    md = [f"# {title}", ""]
    for block in blocks:
        kind = block[0]
        if kind == "h":
            md += [f"{'#' * block[1]} {block[2]}", ""]
        elif kind == "p":
            md += [block[1], ""]
        elif kind == "ul":
            md += [f"- {text}" for text, _ in block[1]] + [""]
        elif kind == "pre":
            md += ["```", block[1], "```", ""]
        elif kind == "table":
            md += ["```", _table_text(block[1], block[2]), "```", ""]
        else:
            md += [f"![{block[2]}](figures/{block[1]}.png)", "", f"*{block[2]}*", ""]
    return "\n".join(md)


STYLE = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}"
         "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
         "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}"
         "figure{display:inline-block;margin:0.5em;vertical-align:top;max-width:100%}img{max-width:100%}"
         "figcaption{font-size:13px;color:#444}p,li{font-size:14px}ul.verdicts li{font-size:15px;margin:0.3em 0;font-family:monospace}"
         "li.helped{color:#1a7f37}li.hurt{color:#b42318}li.did-not-help,li.unknown{color:#444}"
         "td.flag{color:#b42318;font-weight:bold}td.pass{color:#1a7f37}")


def _html(title: str, blocks: list[tuple], figures: dict[str, bytes]) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    for block in blocks:
        kind = block[0]
        if kind == "h":
            parts.append(f"<h{block[1]}>{html.escape(block[2])}</h{block[1]}>")
        elif kind == "p":
            parts.append(f"<p>{html.escape(block[1])}</p>")
        elif kind == "ul":
            cls = " class='verdicts'" if any(c for _, c in block[1]) else ""
            parts.append(f"<ul{cls}>" + "".join(f"<li class='{c}'>{html.escape(t)}</li>" for t, c in block[1]) + "</ul>")
        elif kind == "pre":
            parts.append(f"<pre>{html.escape(block[1])}</pre>")
        elif kind == "table":
            table = block[1].to_html(index=block[2], na_rep="–", float_format=_num, escape=True)
            # a cell that is, or ends in a parenthesis starting with, flag / pass: `31 (flag)`, `0.3 (pass, class 2)`
            parts.append(re.sub(r"<td>([^<]*?\b(flag|pass)\b[^<]*)</td>",
                                lambda m: f"<td class='{m.group(2)}'>{m.group(1)}</td>", table))
        elif block[1] in figures:
            data = base64.b64encode(figures[block[1]]).decode()
            parts.append(f'<figure><img alt="{html.escape(block[2])}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{html.escape(block[2])}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)
