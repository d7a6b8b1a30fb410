"""``augment prepare`` and ``augment validate``: a source becomes a prepared data folder
(``manifest.csv``, ``classes.csv``, ``run.json`` and, when pixels were converted, ``images/`` and
``masks/``), and a prepared folder is re-checked file by file.

The folder is built beside its final place and renamed (:func:`augment.output.building`), so it
is complete or absent; the stage holds the lock of its output (:mod:`augment.lock`).
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from augment.config import PrepareConfig
from augment.data.manifest import (
    CLASSES, COLUMNS, HELDOUT, MANIFEST, counts_table, read_classes, read_manifest, read_references, references_digest,
    validate_manifest, write_classes, write_manifest,
)
from augment.data.sources import LOADERS, check_options, check_out_apart, hash_images, source_kind
from augment.data.splits import stratified_group_split
from augment.errors import DataError
from augment.lock import locked
from augment.output import StageResult, building, record_of
from augment.runinfo import run_record, write_json


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
    started = time.time()
    check_out_apart(cfg.source, cfg.out)
    kind = source_kind(cfg.source)
    check_options(cfg, kind)
    out = Path(cfg.out)
    with building(out, cfg.overwrite, "prepare") as tmp:
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
    return StageResult(out, record_of(out), f"{table}\nwrote {out / MANIFEST} ({len(df)} images)")


def validate_data(data_dir: str | Path) -> StageResult:
    """``augment validate``: every file present, sizes, mask values and sha256 as recorded."""
    d = Path(data_dir)
    df = read_manifest(d / MANIFEST)
    validate_manifest(df, d, read_classes(d / CLASSES), check_files=True, check_hashes=True)
    return StageResult(d, {}, f"{d / MANIFEST}: {len(df)} rows, all files present, sizes and hashes match")
