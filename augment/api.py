"""The Python API: one function per CLI verb, and the only module the CLI calls.

``prepare``, ``train``, ``sample``, ``audit``, ``evaluate``, ``score``, ``run`` and ``report`` each take a
validated config (the classes are importable from here: ``augment.api.SampleConfig`` ...),
write one self-describing output folder with its ``run.json`` (config, inputs' hashes, versions,
git commit, timings) and return a :class:`StageResult`. Output is written through
:mod:`augment.output`: whole folders appear at once (built beside, then renamed) or, for the
stages that resume in place (train, sample, evaluate), their ``run.json`` is written last.
Every stage that writes holds the lock of its output folder (:mod:`augment.lock`), so a second
process aimed at the same output fails at once, naming the one at work.
"""

from __future__ import annotations

import importlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from augment.config import PrepareConfig
from augment.data.manifest import (
    CLASSES,
    COLUMNS,
    MANIFEST,
    validate_manifest,
    write_classes,
    write_manifest,
)
from augment.data.sources import LOADERS, check_options, hash_images, source_kind
from augment.data.splits import stratified_group_split
from augment.errors import AugmentError, DataError
from augment.lock import locked
from augment.output import atomic_path, building, discard, read_json
from augment.runinfo import run_record, write_json

#: config classes re-exported (imported on first use, so `augment --help` stays fast)
_CONFIGS = {
    "PrepareConfig": "augment.config", "TrainConfig": "augment.generators", "SampleConfig": "augment.sampling",
    "AuditConfig": "augment.audit", "EvaluateConfig": "augment.evaluate", "PipelineConfig": "augment.pipeline",
    "ScoreConfig": "augment.plausibility",
}


def __getattr__(name: str):
    if name in _CONFIGS:
        return getattr(importlib.import_module(_CONFIGS[name]), name)
    raise AttributeError(f"module 'augment.api' has no attribute {name!r}")


@dataclass(frozen=True)
class StageResult:
    """What a stage made: its output folder, its record (``run.json``, ``audit.json`` for the
    audit) and a short human summary (what the CLI prints)."""

    out: Path
    record: dict[str, Any] = field(default_factory=dict)
    summary: str = ""


def _record(out: Path, name: str = "run.json") -> dict[str, Any]:
    path = Path(out) / name
    return read_json(path) if path.is_file() else {}


def duplicate_images_across_splits(df: pd.DataFrame) -> list[tuple[str, str]]:
    """Pairs of ids whose image files are byte-identical but sit in different splits (leakage)."""
    pairs = []
    for _, same in df.groupby("sha256"):
        if same["split"].nunique() > 1:
            ids = sorted(same["id"])
            pairs.extend((ids[0], other) for other in ids[1:])
    return pairs


@locked(lambda cfg, *_, **__: cfg.out, "prepare")
def prepare(cfg: PrepareConfig) -> StageResult:
    """``augment prepare``: turn ``cfg.source`` into ``cfg.out/manifest.csv`` + ``classes.csv``.

    Splits from the source are kept; otherwise a seeded, stratified split keeps each group on
    one side. Writes ``run.json`` with the config, counts and versions.
    """
    from augment.data.manifest import HELDOUT, counts_table, read_references, references_digest
    from augment.data.sources import check_out_apart

    started = time.time()
    check_out_apart(cfg.source, cfg.out)
    kind = source_kind(cfg.source)
    check_options(cfg, kind)
    out = Path(cfg.out)
    with building(out, cfg.overwrite) as tmp:
        rows, classes = LOADERS[kind](cfg, tmp)
        if not rows:
            raise DataError(f"source `{cfg.source}` holds no images")
        hash_images(rows, tmp)
        df = pd.DataFrame(rows, columns=COLUMNS)
        df["label"] = df["label"].astype("int64")
        split_from = "source"
        if (df["split"] == "").all():
            df["split"] = stratified_group_split(df, cfg.split.model_dump(), seed=cfg.seed)
            split_from = "stratified_group_split"
        write_manifest(df, tmp / MANIFEST)  # first: it records the in-place references the check allows
        validate_manifest(df, tmp, classes, check_files=False)
        write_classes(classes, tmp / CLASSES)
        references = read_references(tmp)
        counts = {
            split: {str(k): int(v) for k, v in part["label"].value_counts().sort_index().items()}
            for split, part in df.groupby("split")
        }
        write_json(
            run_record(
                "prepare",
                cfg.model_dump(mode="json"),
                started,
                source_kind=kind,
                split_from=split_from,
                n_images=len(df),
                counts=counts,
                has_masks=bool((df["mask"] != "").any()),
                duplicate_images_across_splits=duplicate_images_across_splits(df),
                heldout_ids={s: sorted(df.loc[df["split"] == s, "id"]) for s in HELDOUT},
                in_place_references={"count": len(references), "sha256": references_digest(references)},
            ),
            tmp / "run.json",
        )
        table = counts_table(df, classes).to_string()
    return StageResult(out, _record(out), f"{table}\nwrote {out / MANIFEST} ({len(df)} images)")


def _check_run_folder(cfg, resume: bool) -> None:
    """A finished run is never overwritten; an unfinished one continues only with --resume and
    only with the same config (``train.max_steps`` may grow)."""
    from augment.config import load_json
    from augment.generators import TrainConfig
    from augment.generators.artifact import CONFIG, RUN
    from augment.generators.checkpoint import STATE

    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise DataError(f"output `{out}` exists and is not a folder; choose another --out")
    if (out / RUN).is_file():
        if read_json(out / RUN, "run record").get("stage") == "train":
            raise DataError(f"`{out}` already holds a finished generator run; choose another --out")
        raise DataError(f"`{out}` is not empty and is not a generator run; choose another --out")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not (out / CONFIG).is_file():
        raise DataError(f"`{out}` is not empty and is not a generator run; choose another --out")
    if (out / STATE).exists() and not (out / STATE).is_dir():
        raise DataError(f"`{out / STATE}` should be the run's checkpoint folder but is a file; remove it to train from the start")
    if not resume:
        raise DataError(f"`{out}` holds an unfinished run; pass --resume to continue it, or choose another --out")
    saved = load_json(TrainConfig, out / CONFIG).model_dump(mode="json")
    now = cfg.model_dump(mode="json")
    saved["train"]["max_steps"] = now["train"]["max_steps"]
    diff = sorted(k for k in _flatten(now) if _flatten(now).get(k) != _flatten(saved).get(k))
    if diff:
        a, b = _flatten(saved), _flatten(now)
        shown = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff[:4])
        raise DataError(f"--resume with a different config than `{out / CONFIG}` ({shown}); use the same options")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@locked(lambda cfg, *_, **__: cfg.out, "train")
def train(cfg, resume: bool = False) -> StageResult:
    """``augment train``: fit a generator family on the label-budget subset of the train split.

    Works as one CPU process or under ``accelerate launch`` / ``torchrun`` (data parallel). The
    run folder is self-describing (see :mod:`augment.generators.artifact`); ``resume=True``
    continues an interrupted run from its last checkpoint with identical results.
    """
    import torch

    from augment.config import load_json, save_json
    from augment.data.guard import load_training_set
    from augment.generators import DataSpec, TrainConfig, build
    from augment.generators.artifact import CONFIG, LOSS, RUN, WEIGHTS, save_weights
    from augment.generators.loop import latest_checkpoint, make_accelerator, train_loop

    started = time.time()
    _check_run_folder(cfg, resume)
    data = load_training_set(cfg.data, cfg.budget, cfg.seed)
    spec = DataSpec(
        image_size=data.images.shape[-1],
        channels=data.images.shape[1],
        num_classes=max(data.classes) + 1,
        mask_classes=max(2, int(data.masks.max()) + 1),
    )
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(cfg.seed)
        model = build(cfg.generator, spec)
    state = make_accelerator(cfg.train, model.phases)
    out = Path(cfg.out)
    existed, fresh = out.exists(), not out.is_dir() or not any(out.iterdir())
    if state.is_main_process and (fresh or load_json(TrainConfig, out / CONFIG) != cfg):  # same config: left as it is
        out.mkdir(parents=True, exist_ok=True)
        save_json(cfg, out / CONFIG)
    state.wait_for_everyone()

    try:
        result = train_loop(state, model, (data.images, data.masks, data.labels), cfg.train, cfg.seed, out, resume)
    except AugmentError:
        if fresh and state.num_processes == 1 and latest_checkpoint(out) is None:
            discard(out, existed)  # e.g. a loss that diverged at once: nothing worth resuming
        raise
    if state.is_main_process:
        heldout = _val_reconstruction(model, Path(cfg.data), spec.image_size)
        digest = save_weights(result.state_dict, out / WEIGHTS)
        with atomic_path(out / LOSS) as tmp:
            pd.DataFrame(result.loss_rows).to_csv(tmp, index=False)
        steps_run = result.steps - (result.resumed_from or 0)
        write_json(
            run_record(
                "train",
                cfg.model_dump(mode="json"),
                started,
                family=cfg.generator.family,
                data_spec=spec.model_dump(),
                classes={str(k): v for k, v in data.classes.items()},
                data_dir=str(Path(cfg.data).resolve()),
                data_manifest_sha256=data.manifest_sha256,
                budget=cfg.budget,
                seed=cfg.seed,
                n_train=len(data.labels),
                class_counts={str(k): int(v) for k, v in data.rows["label"].value_counts().sort_index().items()},
                trained_on=data.trained_on,
                steps=result.steps,
                resumed_from_step=result.resumed_from,
                loop_seconds=round(result.seconds, 3),
                steps_per_s=round(steps_run / max(result.seconds, 1e-9), 3),
                processes=state.num_processes,
                replica_checksums=result.replica_checksums,
                weights_sha256=digest,
                val_reconstruction=heldout,
            ),
            out / RUN,
        )
    state.wait_for_everyone()
    record = _record(out, RUN)
    summary = (f"trained {record.get('family')} for {record.get('steps')} steps on {record.get('n_train')} images "
               f"in {record.get('loop_seconds', 0):.1f} s ({record.get('steps_per_s', 0):.2f} steps/s); wrote {out}") if record else ""
    r = record.get("val_reconstruction") or {}
    if "not_measured" in r:
        summary += f"\nautoencoder not measured on val: {r['not_measured']}"
    elif r:
        dice = r.get("mask_dice")
        summary += (f"\nautoencoder on {r['n']} val pairs (measured after training, never trained on): "
                    f"PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.3f}, mask Dice "
                    + (f"{dice:.3f}" if dice is not None else "n/a (no lesion)" if "mask_dice" in r else "n/a (the mask is given)"))
        for level in ("top", "bottom"):
            if f"{level}_codebook_usage" in r:
                summary += f"\n{level} codebook on val: {r[f'{level}_codebook_usage']:.0%} of codes used, perplexity {r[f'{level}_perplexity']:.1f}"
        p = r.get("prior") or {}
        for level in ("top", "bottom"):
            if f"val_{level}_accuracy" in p:
                train_acc = f"train {p[f'train_{level}_accuracy']:.3f} vs " if f"train_{level}_accuracy" in p else ""
                summary += (f"\n{level} prior token accuracy: {train_acc}val {p[f'val_{level}_accuracy']:.3f} "
                            f"(NLL {p[f'val_{level}_nll']:.2f} nats on val)")
    return StageResult(out, record, summary)


def _val_reconstruction(model, data_dir: Path, size: int, limit: int = 256) -> dict | None:
    """A two-stage family's autoencoder round trip on the val split (``reconstruction_metrics``),
    for the training record. The val pairs are only measured, after the weights are final."""
    import torch

    from augment.data.dataset import to_tensor
    from augment.data.images import read_image, read_mask
    from augment.data.manifest import load_data

    measure = getattr(model, "reconstruction_metrics", None)
    if measure is None:
        return None
    manifest, _ = load_data(data_dir)
    val = manifest[(manifest["split"] == "val") & (manifest["mask"] != "")].head(limit)
    pairs = [(to_tensor(read_image(data_dir / r.image)), torch.from_numpy(read_mask(data_dir / r.mask)).to(torch.int64), int(r.label))
             for r in val.itertuples()]
    fits = [p for p in pairs if p[0].shape[-2:] == (size, size)]  # the generator is built for one size
    if not fits:
        return {"n": 0, "not_measured": f"no val pair with a mask at {size}x{size} px (val pairs: {len(pairs)})"}
    images, masks = torch.stack([x for x, _, _ in fits]), torch.stack([m for _, m, _ in fits])
    with torch.no_grad():
        metrics = measure(images, masks)
        prior = getattr(model, "prior_metrics", None)  # token priors: train vs val accuracy
        if prior is not None:
            metrics["prior"] = prior(images, masks, torch.tensor([y for _, _, y in fits]))

    def rounded(d: dict) -> dict:
        return {k: rounded(v) if isinstance(v, dict) else round(v, 4) if isinstance(v, float) else v for k, v in d.items()}

    return {**rounded(metrics), "other_size": len(pairs) - len(fits)}


def training_manifest(data_dir: str | Path, synthetic_dir: str | Path, out_dir: str | Path) -> Path:
    """One training manifest for any downstream trainer: the real rows the synthetic set's
    generator was trained on (rows keep ``source=real``) plus the synthetic set (with its
    provenance), paths relative to ``out_dir``."""
    from augment.data.guard import check_trained_on
    from augment.data.manifest import combine, load_data, read_classes, read_manifest
    from augment.generators.artifact import load_run
    from augment.sampling import read_record

    real, classes = load_data(data_dir)
    syn = read_manifest(synthetic_dir)
    if read_classes(Path(synthetic_dir) / CLASSES) != classes:
        raise DataError(f"`{synthetic_dir}` and `{data_dir}` have different classes.csv")
    record = read_record(synthetic_dir, syn)
    check_trained_on(record["generator_trained_on_sha256"], real, Path(data_dir), f"`{synthetic_dir}`")
    rows = load_run(record["generator_run"]).rows
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merged = combine([(real[real["id"].isin(rows["id"])], data_dir), (syn, synthetic_dir)], out)
    write_manifest(merged, out / MANIFEST)
    write_classes(classes, out / CLASSES)
    return out


def export_folder(data_dir: str | Path, out: str | Path) -> Path:
    """Copy a dataset or synthetic set into the BUSI folder layout (images/, masks/,
    labels.csv with id,label,split,group and any provenance columns, classes.csv)."""
    import shutil

    from augment.data.manifest import load_data

    df, classes = load_data(data_dir, check_files=True)
    out = Path(out)
    with building(out, overwrite=False) as tmp:
        (tmp / "images").mkdir()
        if (df["mask"] != "").any():
            (tmp / "masks").mkdir()
        for row in df.itertuples():
            shutil.copyfile(Path(data_dir) / row.image, tmp / "images" / f"{row.id}.png")
            if row.mask:
                shutil.copyfile(Path(data_dir) / row.mask, tmp / "masks" / f"{row.id}.png")
        keep = ["id", "label", "split", "group"] + [c for c in df.columns if c not in COLUMNS]
        df[keep].to_csv(tmp / "labels.csv", index=False)
        write_classes(classes, tmp / CLASSES)
    return out


@locked(lambda data_dir, out, *_, **__: out, "export")
def export(data_dir: str | Path, out: str | Path, format: str = "hf") -> StageResult:
    """``augment export``: a dataset or synthetic set as a saved HF dataset (``hf``) or a folder
    in the BUSI layout (``folder``, see :func:`export_folder`)."""
    from augment.data.hf import save_hf
    from augment.errors import ConfigError

    out = Path(out)
    if out.exists():
        raise ConfigError(f"output `{out}` already exists; choose another --out")
    if format == "hf":
        save_hf(data_dir, out)
        return StageResult(out, {}, f"wrote Hugging Face dataset {out}")
    export_folder(data_dir, out)
    return StageResult(out, {}, f"wrote folder {out} (images/, masks/, labels.csv, classes.csv)")


def validate_data(data_dir: str | Path) -> StageResult:
    """``augment validate``: every file present, sizes, mask values and sha256 as recorded."""
    from augment.data.manifest import read_classes, read_manifest

    d = Path(data_dir)
    df = read_manifest(d / MANIFEST)
    validate_manifest(df, d, read_classes(d / CLASSES), check_files=True, check_hashes=True)
    return StageResult(d, {}, f"{d / MANIFEST}: {len(df)} rows, all files present, sizes and hashes match")


@locked(lambda cfg, *_, **__: cfg.out, "sample")
def sample(cfg, resume: bool = False, echo=print) -> StageResult:
    """``augment sample``: a synthetic set under a balancing manifest (see :mod:`augment.sampling`)."""
    from augment.sampling import sample as run_sampling

    out = run_sampling(cfg, resume=resume, echo=echo)
    record = _record(out)
    dropped = sum(record.get("dropped_by_filter", {}).values())
    extra = f"; the filter dropped and redrew {dropped}" if cfg.filter else ""
    summary = (f"wrote {record.get('n_synthetic', '?')} synthetic pairs to {out} "
               f"({record.get('samples_per_s_this_session', 0):.1f} samples/s{extra})")
    return StageResult(out, record, summary)


@locked(lambda cfg, *_, **__: cfg.out, "audit")
def audit(cfg, echo=print) -> StageResult:
    """``augment audit``: quality, diversity, memorisation and provenance (see :mod:`augment.audit`)."""
    from augment.audit import audit as run_audit
    from augment.audit import summary

    out = run_audit(cfg, echo=echo)
    record = _record(out, "audit.json")
    return StageResult(out, record, f"{summary(record)}\nwrote {out / 'audit.json'} and {out / 'nearest.csv'}")


@locked(lambda cfg, *_, **__: cfg.out, "evaluate")
def evaluate(cfg, echo=print) -> StageResult:
    """``augment evaluate``: task models on each arm and seed, tested on the real test split."""
    from augment.evaluate import evaluate as run_evaluation
    from augment.verdicts import summarize

    out = run_evaluation(cfg, echo=echo)
    summary = summarize(pd.read_csv(out / "results.csv"))
    cols = ["task", "budget", "generator", "arm", "metric", "n", "mean", "ci_low", "ci_high", "delta_vs_real", "delta_vs_classic"]
    table = summary[[c for c in cols if c in summary.columns]].to_string(index=False, float_format="%.3f")
    return StageResult(out, _record(out), f"{table}\nwrote {out / 'results.csv'}")


@locked(lambda cfg, *_, **__: cfg.out, "score")
def score(cfg, top: int = 10) -> StageResult:
    """``augment score``: train a small VAE on a dataset's images and rank them by reconstruction
    error, most anomalous first (see :mod:`augment.plausibility`); writes ``OUT/scores.csv``."""
    from augment.config import save_json
    from augment.plausibility import score_images

    started = time.time()
    table, scorer = score_images(cfg)
    with building(cfg.out, cfg.overwrite) as tmp:
        with atomic_path(tmp / "scores.csv") as f:
            table.to_csv(f, index=False)
        save_json(cfg, tmp / "config.json")
        high = float(table["score"].quantile(0.95))
        write_json(run_record("score", cfg.model_dump(mode="json"), started, n_images=len(table), split=cfg.split,
                              train_seconds=round(scorer.seconds, 2), score_p95=high,
                              median_score=float(table["score"].median())), tmp / "run.json")
    shown = table.head(top)[[c for c in ("rank", "id", "label", "split", "score") if c in table]]
    text = (f"{len(table)} images of `{cfg.data}` ({cfg.split}) ranked by VAE reconstruction error (most anomalous first; "
            f"median {table['score'].median():.5f}, 95th percentile {high:.5f}):\n"
            f"{shown.to_string(index=False, float_format='%.5f')}\nwrote {Path(cfg.out) / 'scores.csv'}")
    return StageResult(Path(cfg.out), _record(Path(cfg.out)), text)


@locked(lambda spec, out, *_, **__: out, "run")
def run(spec: str | Path, out: str | Path, overrides: dict | None = None, echo=print) -> StageResult:
    """``augment run``: a pipeline spec end to end (see :mod:`augment.pipeline`), then the report."""
    from augment.pipeline import load_pipeline, run_pipeline

    cfg = load_pipeline(spec, overrides)
    result = Path(run_pipeline(cfg, out, echo=echo))
    timings = json.loads((result / "timings.json").read_text())
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in timings["by_stage"].items())
    text = _report_text(result)
    return StageResult(result, timings, f"{text}\nwrote {result / 'report.html'} ({timings['wall_seconds']:.0f} s this run; "
                                            f"seconds per stage over every run into this folder: {stages})")


@locked(lambda out, *_, **__: out, "report")
def report(out: str | Path) -> StageResult:
    """``augment report``: rebuild the report of an ``augment run`` output folder."""
    from augment.config import load_json
    from augment.errors import ConfigError
    from augment.pipeline import PipelineConfig, build_report

    out = Path(out)
    if not (out / "pipeline.json").is_file():
        raise ConfigError(f"`{out}` is not the output of `augment run` (no pipeline.json)")
    build_report(load_json(PipelineConfig, out / "pipeline.json"), out)
    return StageResult(out, _record(out, "report.json"), f"{_report_text(out)}\nwrote {out / 'report.html'}")


def _report_text(out: Path) -> str:
    """The terminal summary of a pipeline report: the verdict lines first (see
    :func:`augment.report.summary_text`)."""
    from augment.report import summary_text

    return summary_text(out)
