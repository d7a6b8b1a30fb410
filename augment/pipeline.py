"""``augment run pipelines/X.yaml``: prepare -> train -> sample -> audit -> evaluate -> report for
every label budget and seed, skipping stages whose outputs are complete and resuming the rest.

Layout: ``OUT/data``, ``OUT/runs/b{budget}_s{seed}/{generator,synthetic,audit,evaluate}``, and the
report in ``OUT/`` (``report.json``, ``report.md``, ``report.html``, ``figures/``, ``tables/``).
A stage is complete when its ``run.json`` (``audit.json`` for the audit) exists; it is then
checked against the spec and skipped, or refused when the spec changed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field

from augment.balance import BalanceConfig
from augment.classic import ClassicConfig
from augment.config import Strict, load_json, load_yaml, merge, save_json, validate
from augment.errors import ConfigError, DataError
from augment.evaluate import ARMS, Arm, TaskConfig
from augment.generators import GeneratorConfig
from augment.generators.loop import LoopConfig


class DataSpec(Strict):
    source: str = Field(description="phantom, or a path (relative to where `augment run` is started)")
    image_size: int | None = Field(None, ge=8)
    count: int | None = Field(None, ge=1, description="phantom only")
    seed: int = Field(0, ge=0)


class SampleSpec(Strict):
    batch_size: int = Field(16, ge=1)
    filter: bool = False


class AuditSpec(Strict):
    enabled: bool = True
    encoder_steps: int = Field(300, ge=1)
    segmenter_steps: int = Field(300, ge=1)


class EvaluateSpec(Strict):
    task: Literal["segmentation", "classification", "both"] = "segmentation"
    arms: list[Arm] = Field(default_factory=lambda: list(ARMS))
    segmentation: TaskConfig = Field(default_factory=TaskConfig)
    classification: TaskConfig = Field(default_factory=lambda: TaskConfig(steps=400, batch_size=32))
    classic: ClassicConfig = Field(default_factory=ClassicConfig)


class PipelineConfig(Strict):
    name: str = "pipeline"
    data: DataSpec
    generator: GeneratorConfig
    train: LoopConfig = Field(default_factory=LoopConfig)
    budgets: list[int] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    balance: BalanceConfig
    sample: SampleSpec = Field(default_factory=SampleSpec)
    audit: AuditSpec = Field(default_factory=AuditSpec)
    evaluate: EvaluateSpec = Field(default_factory=EvaluateSpec)


def load_pipeline(path: str | Path, overrides: dict | None = None) -> PipelineConfig:
    """A pipeline spec; ``balance`` may name a manifest file (relative to the spec's folder or
    the working directory) instead of holding one inline."""
    spec = merge(load_yaml(path), overrides or {})
    if isinstance(spec.get("balance"), str):
        ref = Path(spec["balance"])
        for cand in (ref, Path(path).parent / ref, Path(path).parent.parent / ref):
            if cand.is_file():
                spec["balance"] = load_yaml(cand)
                break
        else:
            raise ConfigError(f"pipeline `{path}`: balance manifest `{ref}` does not exist")
    return validate(PipelineConfig, spec, f"pipeline `{path}`")


def _done(folder: Path, marker: str = "run.json") -> bool:
    return (folder / marker).is_file()


def run_pipeline(cfg: PipelineConfig, out: str | Path, echo=print) -> Path:
    from augment.api import prepare, train
    from augment.audit import AuditConfig, audit
    from augment.config import PrepareConfig
    from augment.evaluate import EvaluateConfig, evaluate
    from augment.generators import TrainConfig
    from augment.sampling import SampleConfig, sample

    started = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "pipeline.json"
    if saved.is_file() and load_json(PipelineConfig, saved) != cfg:
        old = load_json(PipelineConfig, saved).model_dump(mode="json")
        new = cfg.model_dump(mode="json")
        changed = [k for k in new if new[k] != old.get(k)]
        if set(changed) - {"budgets", "seeds"}:
            raise DataError(f"`{out}` was made from a different pipeline spec (changed: {', '.join(changed)}); use another --out")
    save_json(cfg, saved)
    timings: dict[str, float] = {}

    def stage(name: str, folder: Path, fn, marker: str = "run.json"):
        if _done(folder, marker):
            echo(f"[skip] {name}: {folder} is complete")
            return
        echo(f"[run]  {name} -> {folder}")
        t = time.time()
        fn()
        timings[name] = round(time.time() - t, 2)

    data = out / "data"
    prep = PrepareConfig(source=cfg.data.source, out=data, image_size=cfg.data.image_size, count=cfg.data.count,
                         seed=cfg.data.seed, overwrite=not _done(data))
    stage("prepare", data, lambda: prepare(prep))
    # Seeds outermost: an interrupted run already holds whole budget curves for the first seeds.
    for seed in cfg.seeds:
        for budget in cfg.budgets:
            run = out / "runs" / f"b{budget}_s{seed}"
            tag = f"budget {budget} seed {seed}"
            gen = run / "generator"
            tcfg = TrainConfig(data=data, out=gen, budget=budget, seed=seed, generator=cfg.generator, train=cfg.train)
            stage(f"train ({tag})", gen, lambda: train(tcfg, resume=True))
            syn = run / "synthetic"
            scfg = SampleConfig(generator=gen, balance=cfg.balance, out=syn, seed=seed, batch_size=cfg.sample.batch_size,
                                filter=cfg.sample.filter)
            stage(f"sample ({tag})", syn, lambda: sample(scfg, resume=True, echo=lambda *_: None))
            if cfg.audit.enabled:
                acfg = AuditConfig(data=data, synthetic=syn, out=run / "audit", encoder_steps=cfg.audit.encoder_steps,
                                   segmenter_steps=cfg.audit.segmenter_steps, seed=seed, overwrite=True)
                stage(f"audit ({tag})", run / "audit", lambda: audit(acfg, echo=lambda *_: None), marker="audit.json")
            ecfg = EvaluateConfig(data=data, synthetic=syn, out=run / "evaluate", task=cfg.evaluate.task, arms=cfg.evaluate.arms,
                                  seeds=[seed], segmentation=cfg.evaluate.segmentation,
                                  classification=cfg.evaluate.classification, classic=cfg.evaluate.classic)
            stage(f"evaluate ({tag})", run / "evaluate", lambda: evaluate(ecfg, echo=lambda *_: None))
    t = time.time()
    build_report(cfg, out)
    timings["report"] = round(time.time() - t, 2)
    (out / "timings.json").write_text(json.dumps({"wall_seconds": round(time.time() - started, 2), "stages": timings}, indent=2))
    return out


def build_report(cfg: PipelineConfig, out: Path) -> Path:
    """Collect every run's audit and evaluation into the report."""
    from augment.data.images import read_image, read_mask
    from augment.data.manifest import load_data
    from augment.data.splits import select_budget
    from augment.report import _png, figure_class_balance, figure_grid, figure_metric_vs_budget, summarize, write_report

    quality, frames = [], []
    for budget in cfg.budgets:
        for seed in cfg.seeds:
            run = out / "runs" / f"b{budget}_s{seed}"
            if (run / "audit" / "audit.json").is_file():
                rep = json.loads((run / "audit" / "audit.json").read_text())
                quality += [{"budget": budget, "seed": seed, **r} for r in rep["metrics"]]
                quality.append({"budget": budget, "seed": seed, "metric": "copies", "extractor": "pixels+domain",
                                "value": len(rep["copies"]), "baseline": None, "n_real": None, "n_synthetic": None})
            if (run / "evaluate" / "results.csv").is_file():
                frames.append(pd.read_csv(run / "evaluate" / "results.csv"))
    downstream = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["task", "budget", "arm", "seed", "metric", "value"])
    summary = summarize(downstream) if len(downstream) else pd.DataFrame()
    figures: dict[str, bytes] = {}
    for task in downstream["task"].unique() if len(downstream) else []:
        main = "dice" if task == "segmentation" else "balanced_accuracy"
        figures[f"{task}_{main}_vs_budget"] = _png(figure_metric_vs_budget(summary, task, main))
        if task == "segmentation":
            figures["segmentation_fpr_vs_budget"] = _png(figure_metric_vs_budget(summary, task, "fpr"))
    first = out / "runs" / f"b{cfg.budgets[-1]}_s{cfg.seeds[0]}"
    if (first / "synthetic" / "plan.csv").is_file():
        figures["class_balance"] = _png(figure_class_balance(pd.read_csv(first / "synthetic" / "plan.csv")))
        df, classes = load_data(out / "data")
        real_rows = select_budget(df, cfg.budgets[-1], cfg.seeds[0])
        syn, _ = load_data(first / "synthetic")

        def items(frame, root):
            return [(read_image(root / r.image), read_mask(root / r.mask) if r.mask else None, int(r.label)) for r in frame.itertuples()]

        rng = np.random.default_rng(0)
        syn_pick = syn.iloc[rng.permutation(len(syn))].groupby("label").head(6)
        figures["samples_real_vs_synthetic"] = _png(figure_grid(items(real_rows.groupby("label").head(6), out / "data"),
                                                                 items(syn_pick, first / "synthetic"), classes))
    seg = cfg.evaluate.segmentation
    protocol = (
        f"{cfg.generator.family} generator, budgets {cfg.budgets}, seeds {cfg.seeds}, balance {cfg.balance.strategy}. "
        f"Task models: segmentation MONAI UNet ({seg.base_channels}, {2 * seg.base_channels}, {4 * seg.base_channels}, "
        f"{8 * seg.base_channels}), DiceCE, AdamW {seg.lr}, batch {seg.batch_size}, {seg.steps} steps, checkpoint rule "
        f"`{seg.selection}` (val checked every {seg.eval_every} steps). Test = the untouched real test split. "
        "Dice over test images with a lesion; fpr = share of test images with an empty mask on which the model paints any lesion."
    )
    return write_report(out, quality, downstream, figures, {"name": cfg.name, "protocol": protocol})
