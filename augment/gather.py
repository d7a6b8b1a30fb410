"""What an ``augment run`` output folder holds, gathered into its report: every generator's
audits and own held-out figures, every finished evaluation, the figures (Dice vs budget, class
balance, sample grids) and the protocol paragraph (:func:`build_report`). The folder layout the
pipeline writes (:func:`generator_dir`) and its completion rule (:func:`_done`) live here too, so
the report can be rebuilt from what the stages left without running any of them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from augment.output import read_csv, read_json


def _done(folder: Path, marker: str | Callable[[Path], bool] = "run.json") -> bool:
    return marker(folder) if callable(marker) else (folder / marker).is_file()


def generator_dir(out: Path, name: str, budget: int, gseed: int) -> Path:
    return out / "generators" / name / f"b{budget}_g{gseed}"


def _heldout_rows(run_json: Path, tag: dict) -> list[dict]:
    """A generator's own figures from its run record (``heldout_metrics``, a flat ``{name: float}``
    whatever the family: autoencoder round trip, codebooks, priors on train vs val) as quality rows
    without a real-vs-real baseline (extractor ``generator``)."""
    own = read_json(run_json, "generator run record").get("heldout_metrics") or {}
    return [{**tag, "metric": k, "extractor": "generator", "value": v, "baseline": None, "n_real": None, "n_synthetic": None}
            for k, v in own.items() if k != "n_pairs"]


#: training-log columns the report's quality table shows, as their mean over the last tenth of the
#: logged steps: an adversarial pair's discriminator accuracy on real and fake and its losses, so
#: a collapsed generator or an overfitted discriminator shows (d_acc_real and d_acc_fake near 1)
TRAINING_LOG = ("d_acc_real", "d_acc_fake", "d_loss", "g_adv")


def _training_rows(loss_csv: Path, tag: dict) -> list[dict]:
    """Quality rows (extractor ``training log``) from a generator's ``loss.csv``: each column of
    :data:`TRAINING_LOG` it has, averaged over the last tenth of its logged rows."""
    if not loss_csv.is_file():
        return []
    log = read_csv(loss_csv, "generator training log")
    rows = []
    for key in TRAINING_LOG:
        if key in log.columns:
            values = pd.to_numeric(log[key], errors="coerce").dropna()
            if len(values):
                tail = values.iloc[-max(1, len(values) // 10):]
                rows.append({**tag, "metric": f"final_{key}", "extractor": "training log", "value": float(tail.mean()),
                             "baseline": None, "n_real": None, "n_synthetic": None})
    return rows


def _undefined_records(folder: Path) -> list[dict]:
    """The metrics an evaluation's results left undefined, with their reasons: one record (task,
    budget, generator, arm, seed, metric, reason) per entry of each ``runs/*.json``'s
    ``undefined`` (a metric the test split cannot define, e.g. AUROC without every class)."""
    out = []
    for path in sorted((folder / "runs").glob("*.json")):
        result = read_json(path, "result file")
        undefined = result.get("undefined")
        if isinstance(undefined, dict):
            out += [{**{k: result.get(k) for k in ("task", "budget", "generator", "arm", "seed")}, "metric": m, "reason": str(why)}
                    for m, why in undefined.items()]
    return out


def build_report(cfg, out: Path) -> Path:
    """Collect every generator's audits and every evaluation of the run of ``cfg`` (its
    :class:`~augment.pipeline.PipelineConfig`) in ``out`` into the report: Dice vs budget per
    family beside the shared real arms, quality per family, a sample grid per family."""
    from augment.data.dataset import read_rows
    from augment.data.manifest import load_data
    from augment.runs import read_run
    from augment.figures import (
        figure_class_balance, figure_grid, figure_metric_vs_budget, grid_rows, metric_caption, plain, png, synthetic_shortfalls,
    )
    from augment.report import not_measured, write_report
    from augment.verdicts import summarize

    quality, frames, val_frames, inception, radiomics, undefined = [], [], [], [], [], []
    for name in cfg.generators:
        for budget in cfg.budgets:
            for gseed in dict.fromkeys(cfg.generator_seed(s) for s in cfg.seeds):
                audit_json = generator_dir(out, name, budget, gseed) / "audit" / "audit.json"
                if audit_json.is_file():
                    rep = read_json(audit_json, "audit record")
                    inception.append((rep.get("extractors") or {}).get("inception") or {})
                    radiomics.append((rep.get("extractors") or {}).get("radiomics") or {"computed": False, "reason": "an audit from before FRD"})
                    tag = {"generator": name, "budget": budget, "seed": gseed}
                    quality += [{**tag, **r} for r in rep["metrics"]]
                    quality.append({**tag, "metric": "copies", "extractor": "pixels+domain", "value": len(rep["copies"]),
                                    "baseline": None, "n_real": None, "n_synthetic": None})
                    trained = generator_dir(out, cfg.trainer(name), budget, gseed) / "generator"
                    quality += _heldout_rows(trained / "run.json", tag) + _training_rows(trained / "loss.csv", tag)
    for seed in cfg.seeds:
        for budget in cfg.budgets:
            for sub in ["real", *cfg.generators]:
                results = out / "evaluate" / f"b{budget}_s{seed}" / sub / "results.csv"
                if _done(results.parent):  # only finished evaluations
                    frames.append(read_csv(results, "evaluation results"))
                    undefined += _undefined_records(results.parent)
                    if (results.parent / "val_results.csv").is_file():  # older evaluations kept no val scores
                        val_frames.append(read_csv(results.parent / "val_results.csv", "evaluation val results"))
    columns = ["task", "budget", "generator", "arm", "seed", "metric", "value"]
    downstream = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    validation = pd.concat(val_frames, ignore_index=True) if val_frames else pd.DataFrame(columns=columns)
    summary = summarize(downstream) if len(downstream) else pd.DataFrame()
    figures: dict[str, bytes] = {}
    captions: dict[str, str] = {}
    unmeasured = not_measured(downstream)  # no figure of empty axes: the report says why in one line
    for task in downstream["task"].unique() if len(downstream) else []:
        for metric in ("dice", "fpr") if task == "segmentation" else ("balanced_accuracy",):
            if (task, metric) in unmeasured:
                continue
            figures[f"{task}_{metric}_vs_budget"] = png(figure_metric_vs_budget(summary, task, metric))
            captions[f"{task}_{metric}_vs_budget"] = metric_caption(summary, task, metric)

    budget, gseed = cfg.budgets[-1], cfg.generator_seed(cfg.seeds[0])
    manifest, classes = load_data(out / "data") if _done(out / "data") else (None, {})
    for name, spec in cfg.generators.items():
        run = generator_dir(out, name, budget, gseed)
        if not (run / "synthetic" / "run.json").is_file():
            continue
        syn, _ = load_data(run / "synthetic")
        plan = read_csv(run / "synthetic" / "plan.csv", "balancing plan")
        why = synthetic_shortfalls(plan, syn["label"].value_counts().to_dict(), spec.balance.strategy, spec.balance.classes)
        where = f"budget {budget}, generator seed {gseed}"
        figures[f"class_balance_{name}"] = png(figure_class_balance(plan))
        captions[f"class_balance_{name}"] = (
            f"{name} ({where}): images per class, the real images of the generator's budget subset with the synthetic "
            f"pairs the balancing plan ({spec.balance.strategy}) added stacked on top."
            + "".join(f" Class {classes.get(c, c)}: {text}." for c, text in why.items()))
        info = read_run(generator_dir(out, cfg.trainer(name), budget, gseed) / "generator")
        pick = syn.iloc[np.random.default_rng(0).permutation(len(syn))].groupby("label").head(4)
        real_items, syn_items = read_rows(info.rows.groupby("label").head(4), info.data_dir), read_rows(pick, run / "synthetic")
        fig = figure_grid(real_items, syn_items, classes, why=why)
        fig.suptitle(plain(f"{name}: real (budget {budget}) vs synthetic"), fontsize=10)
        figures[f"samples_{name}"] = png(fig)
        _, missing = grid_rows(real_items, syn_items, classes, 4, why)
        captions[f"samples_{name}"] = (
            f"{name} ({where}): real images of the budget subset and synthetic pairs, per class, each image beside its mask "
            "(white: lesion)." + (" Not shown: " + "; ".join(missing) + "." if missing else ""))
    seg = cfg.evaluate.segmentation
    gens = "; ".join(
        f"{name}: {spec.generator.family}" + (f" ({spec.generator.mode} mode)" if hasattr(spec.generator, "mode") else "")
        + f", {spec.train.max_steps} steps, balance {spec.balance.strategy}, masks {spec.balance.mask_source}"
        for name, spec in cfg.generators.items()
    )
    gseeds = cfg.generator_seeds or cfg.seeds
    size = f" at {cfg.data.image_size} px" if cfg.data.image_size else ""
    counts = {} if manifest is None else manifest["split"].value_counts().to_dict()
    splits = ", ".join(f"{counts[s]} {s}" for s in ("train", "val", "test") if s in counts)
    protocol = (
        f"Data: {cfg.data.source}{size}{': ' + splits if splits else ''} images. "
        f"Generators: {gens}. Budgets {cfg.budgets}, task seeds {cfg.seeds}, generator seeds {gseeds}"
        + (" (the pipeline seeds)" if cfg.generator_seeds is None else " (task seed i uses generator seed i mod their count, and its budget subset)")
        + f". The arms real and real+classic use no synthetic data and are shared by every generator. "
        f"Task models: segmentation MONAI UNet ({seg.base_channels}, {2 * seg.base_channels}, {4 * seg.base_channels}, "
        f"{8 * seg.base_channels}), DiceCE, AdamW {seg.lr}, batch {seg.batch_size}, {seg.steps} steps, checkpoint rule "
        f"`{seg.selection}` (val checked every {seg.eval_every} steps). Test = the untouched real test split. "
        "Dice over test images with a lesion; fpr = share of test images with an empty mask on which the model paints any lesion."
        " Checkpoint rules: best_val = best val Dice over all val images; best_val_dice_fpr = best mean of val lesion Dice and"
        " 1 - val fpr; last = the last step."
    )
    if cfg.evaluate.recipes:
        from augment.recipes import describe

        protocol += " Recipes (each a synthetic arm of every generator): " + "; ".join(
            f"{name}: {describe(recipe)}" for name, recipe in cfg.evaluate.recipes.items()) + "."
    meta = {"name": cfg.name, "protocol": protocol, "generators": list(cfg.generators), "generator_seeds": gseeds,
            "generator_seed_count": len(dict.fromkeys(cfg.generator_seed(s) for s in cfg.seeds)),
            "classes": classes, "inception": inception, "radiomics": radiomics, "undefined": undefined}
    return write_report(out, quality, downstream, figures, meta, captions, validation=validation)
