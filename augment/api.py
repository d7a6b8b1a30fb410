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
