"""The Python API: one function per CLI verb, and the only module the CLI calls.

A façade: each stage lives in its own room and this module re-exports it, adding only the short
summary a person reads. ``prepare`` / ``validate_data`` (:mod:`augment.data.prepare`), ``train``
(:mod:`augment.training`), ``sample`` (:mod:`augment.sampling`), ``audit`` (:mod:`augment.audit`),
``evaluate`` (:mod:`augment.evaluate`), ``score`` (:mod:`augment.plausibility`), ``export`` and
``training_manifest`` (:mod:`augment.data.export`), ``run`` and ``report``
(:mod:`augment.pipeline`). Each takes a validated config (the classes are importable from here:
``augment.api.SampleConfig`` ...), writes one self-describing output folder with its
``run.json`` while holding that folder's lock (:mod:`augment.lock`), and returns a
:class:`StageResult`. Nothing below this module imports it, so the import graph has no circle.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from augment.output import StageResult, read_json, record_of

#: names re-exported from the stage rooms (imported on first use, so `augment --help` stays fast)
_ROOMS = {
    "PrepareConfig": "augment.config", "TrainConfig": "augment.generators", "SampleConfig": "augment.sampling",
    "AuditConfig": "augment.audit", "EvaluateConfig": "augment.evaluate", "PipelineConfig": "augment.pipeline",
    "ScoreConfig": "augment.plausibility",
    "prepare": "augment.data.prepare", "validate_data": "augment.data.prepare",
    "duplicate_images_across_splits": "augment.data.prepare",
    "train": "augment.training", "score": "augment.plausibility",
    "export": "augment.data.export", "export_folder": "augment.data.export", "training_manifest": "augment.data.export",
}

__all__ = ["StageResult", "audit", "evaluate", "report", "run", "sample", "status", *_ROOMS]


def __getattr__(name: str):
    if name in _ROOMS:
        return getattr(importlib.import_module(_ROOMS[name]), name)
    raise AttributeError(f"module 'augment.api' has no attribute {name!r}")


def sample(cfg, resume: bool = False, echo=print) -> StageResult:
    """``augment sample``: a synthetic set under a balancing manifest (see :mod:`augment.sampling`)."""
    from augment.sampling import sample as run_sampling

    out = run_sampling(cfg, resume=resume, echo=echo)
    record = record_of(out)
    dropped = sum(record.get("dropped_by_filter", {}).values())
    extra = f"; the filter dropped and redrew {dropped}" if cfg.filter else ""
    summary = (f"wrote {record.get('n_synthetic', '?')} synthetic pairs to {out} "
               f"({record.get('samples_per_s_this_session', 0):.1f} samples/s{extra})")
    return StageResult(out, record, summary)


def audit(cfg, echo=print) -> StageResult:
    """``augment audit``: quality, diversity, memorisation and provenance (see :mod:`augment.audit`)."""
    from augment.audit import audit as run_audit
    from augment.audit import summary

    out = run_audit(cfg, echo=echo)
    record = record_of(out, "audit.json")
    return StageResult(out, record, f"{summary(record)}\nwrote {out / 'audit.json'} and {out / 'nearest.csv'}")


def evaluate(cfg, echo=print) -> StageResult:
    """``augment evaluate``: task models on each arm and seed, tested on the real test split."""
    from augment.evaluate import evaluate as run_evaluation
    from augment.output import read_csv
    from augment.verdicts import summarize

    out = run_evaluation(cfg, echo=echo)
    summary = summarize(read_csv(out / "results.csv", "evaluation results"))
    cols = ["task", "budget", "generator", "arm", "metric", "n", "mean", "ci_low", "ci_high", "delta_vs_real", "delta_vs_classic"]
    table = summary[[c for c in cols if c in summary.columns]].to_string(index=False, float_format="%.3f")
    return StageResult(out, record_of(out), f"{table}\nwrote {out / 'results.csv'}")


def run(spec: str | Path, out: str | Path, overrides: dict | None = None, echo=print) -> StageResult:
    """``augment run``: a pipeline spec end to end (see :mod:`augment.pipeline`), then the report."""
    from augment.pipeline import run_spec
    from augment.report import summary_text

    result = Path(run_spec(spec, out, overrides, echo=echo))
    timings = read_json(result / "timings.json", "pipeline timings")
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in timings["by_stage"].items())
    return StageResult(result, timings, f"{summary_text(result)}\nwrote {result / 'report.html'} ({timings['wall_seconds']:.0f} s "
                                        f"this run; seconds per stage over every run into this folder: {stages})")


def status(out: str | Path, every: bool = False) -> StageResult:
    """``augment status``: the state of every stage of an ``augment run`` folder (:mod:`augment.status`)."""
    from augment.status import stage_states, summary

    rows = stage_states(out)
    return StageResult(Path(out), {"stages": [vars(r) for r in rows]}, summary(rows, every))


def report(out: str | Path) -> StageResult:
    """``augment report``: rebuild the report of an ``augment run`` output folder."""
    from augment.pipeline import rebuild_report
    from augment.report import summary_text

    out = rebuild_report(out)
    return StageResult(out, record_of(out, "report.json"), f"{summary_text(out)}\nwrote {out / 'report.html'}")
