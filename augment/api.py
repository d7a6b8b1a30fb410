"""Stage functions: the Python API behind every CLI verb.

Each takes a validated config, writes one self-describing output folder, and returns its path.
Output appears all at once (built in a sibling temporary folder, then renamed), so a failed or
interrupted stage leaves nothing half-written behind.
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

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
from augment.errors import DataError
from augment.runinfo import run_record, write_json


def _claim_output(out: Path, overwrite: bool) -> Path:
    """A fresh temporary folder beside ``out`` (same parent, so relative paths stay valid)."""
    if out.exists() and not out.is_dir():
        raise DataError(f"output `{out}` exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DataError(f"output `{out}` already exists and is not empty; choose another --out or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


def _publish(tmp: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def duplicate_images_across_splits(df: pd.DataFrame) -> list[tuple[str, str]]:
    """Pairs of ids whose image files are byte-identical but sit in different splits (leakage)."""
    pairs = []
    for _, same in df.groupby("sha256"):
        if same["split"].nunique() > 1:
            ids = sorted(same["id"])
            pairs.extend((ids[0], other) for other in ids[1:])
    return pairs


def prepare(cfg: PrepareConfig) -> Path:
    """``augment prepare``: turn ``cfg.source`` into ``cfg.out/manifest.csv`` + ``classes.csv``.

    Splits from the source are kept; otherwise a seeded, stratified split keeps each group on
    one side. Writes ``run.json`` with the config, counts and versions. Returns ``cfg.out``.
    """
    started = time.time()
    kind = source_kind(cfg.source)
    check_options(cfg, kind)
    out = Path(cfg.out)
    tmp = _claim_output(out, cfg.overwrite)
    try:
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
        validate_manifest(df, tmp, classes, check_files=False)
        write_manifest(df, tmp / MANIFEST)
        write_classes(classes, tmp / CLASSES)
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
            ),
            tmp / "run.json",
        )
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _check_run_folder(cfg, resume: bool) -> None:
    """A finished run is never overwritten; an unfinished one continues only with --resume and
    only with the same config (``train.max_steps`` may grow)."""
    from augment.config import load_json
    from augment.generators import TrainConfig
    from augment.generators.artifact import CONFIG, RUN

    out = Path(cfg.out)
    if (out / RUN).is_file():
        raise DataError(f"`{out}` already holds a finished generator run; choose another --out")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not (out / CONFIG).is_file():
        raise DataError(f"`{out}` is not empty and is not a generator run; choose another --out")
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


def train(cfg, resume: bool = False) -> Path:
    """``augment train``: fit a generator family on the label-budget subset of the train split.

    Works as one CPU process or under ``accelerate launch`` / ``torchrun`` (data parallel). The
    run folder is self-describing (see :mod:`augment.generators.artifact`); ``resume=True``
    continues an interrupted run from its last checkpoint with identical results.
    """
    import torch

    from augment.config import save_json
    from augment.data.guard import load_training_set
    from augment.generators import DataSpec, build
    from augment.generators.artifact import CONFIG, LOSS, RUN, WEIGHTS, save_weights
    from augment.generators.loop import make_accelerator, train_loop

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
    state = make_accelerator(cfg.train, len(model.phases))
    out = Path(cfg.out)
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_json(cfg, out / CONFIG)
    state.wait_for_everyone()

    result = train_loop(state, model, (data.images, data.masks, data.labels), cfg.train, cfg.seed, out, resume)
    if state.is_main_process:
        digest = save_weights(result.state_dict, out / WEIGHTS)
        pd.DataFrame(result.loss_rows).to_csv(out / LOSS, index=False)
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
            ),
            out / RUN,
        )
    state.wait_for_everyone()
    return out


def training_manifest(data_dir: str | Path, synthetic_dir: str | Path, out_dir: str | Path,
                      budget: int | None = None, seed: int = 0) -> Path:
    """One training manifest for any downstream trainer: the real label-budget subset (rows keep
    ``source=real``) plus a synthetic set (with its provenance), paths relative to ``out_dir``."""
    from augment.data.manifest import combine, load_data, read_classes, read_manifest
    from augment.data.splits import select_budget

    real, classes = load_data(data_dir)
    syn = read_manifest(synthetic_dir)
    if read_classes(Path(synthetic_dir) / CLASSES) != classes:
        raise DataError(f"`{synthetic_dir}` and `{data_dir}` have different classes.csv")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merged = combine([(select_budget(real, budget, seed), data_dir), (syn, synthetic_dir)], out)
    write_manifest(merged, out / MANIFEST)
    write_classes(classes, out / CLASSES)
    return out


def export_folder(data_dir: str | Path, out: str | Path) -> Path:
    """Copy a dataset or synthetic set into the BUSI folder layout (images/, masks/,
    labels.csv with id,label,split,group and any provenance columns, classes.csv)."""
    from augment.data.manifest import load_data

    df, classes = load_data(data_dir, check_files=True)
    out = Path(out)
    tmp = _claim_output(out, overwrite=False)
    try:
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
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
