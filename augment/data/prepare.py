"""``augment prepare`` and ``augment validate``: a source becomes a prepared data folder
(``manifest.csv``, ``classes.csv``, ``run.json`` and, when pixels were converted, ``images/`` and
``masks/``), and a prepared folder is re-checked file by file.

The folder is built beside its final place and renamed (:func:`augment.output.building`), so it
is complete or absent; the stage holds the lock of its output (:mod:`augment.lock`).

Every train image is compared with every val and test image for near-duplicates (a JPEG copy, a
flip, a shift: :func:`augment.data.guard.check_near_duplicates`); a pair stops prepare unless
``allow_near_duplicates`` accepts it or ``drop_near_duplicates`` leaves those train images out;
the pairs (and what was dropped) are recorded in ``run.json``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from augment.config import PrepareConfig
from augment.data.images import read_image
from augment.data.manifest import (
    CLASSES, COLUMNS, HELDOUT, MANIFEST, counts_table, format_problems, group_problems, read_classes, read_manifest,
    read_references, references_digest, validate_manifest, write_classes, write_manifest,
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


def near_duplicates_across_splits(df: pd.DataFrame, root: Path, allow: bool) -> dict:
    """Train images that are near-copies of val or test images (by id), refused unless ``allow``;
    what ``run.json`` records of the check: its rule, the pairs found (accepted) and its time."""
    from augment.data import guard  # torch: only once the cheap checks have passed

    started = time.time()

    def images(split: str):
        return ((r.id, read_image(root / r.image)) for r in df[df["split"] == split].itertuples())

    pairs = guard.check_near_duplicates(images("train"), {s: images(s) for s in HELDOUT}, "train", allow,
                                        switch="`--set allow_near_duplicates=true` (or drop_near_duplicates=true to leave them out of train)")
    rule = (f"SSIM of {guard.NEAR_DUPLICATE_SIDE}x{guard.NEAR_DUPLICATE_SIDE} grayscale thumbnails, best of 4 flips and "
            f"shifts up to {guard.NEAR_DUPLICATE_SHIFT} px each way, >= {guard.NEAR_DUPLICATE_SSIM} "
            "(augment.data.guard.check_near_duplicates)")
    return {"rule": rule, "threshold": guard.NEAR_DUPLICATE_SSIM, "allowed": allow, "pairs": pairs,
            "seconds": round(time.time() - started, 2)}


def _drop_train_copies(df: pd.DataFrame, tmp: Path, near: dict) -> pd.DataFrame:
    """``df`` without the train rows that near-copy a val/test image (``near``'s pairs, which then
    record ``dropped``); their converted files in ``tmp`` go too. Every class keeps a train image."""
    gone = {p["candidate"] for p in near["pairs"]}
    kept = df[~(df["id"].isin(gone) & (df["split"] == "train"))].reset_index(drop=True)
    lost = sorted(set(df.loc[df["split"] == "train", "label"]) - set(kept.loc[kept["split"] == "train", "label"]))
    if lost:
        raise DataError(f"drop_near_duplicates would leave class(es) {lost} with no train image; use allow_near_duplicates")
    for row in df[df["id"].isin(gone) & (df["split"] == "train")].itertuples():
        for rel in (row.image, row.mask):
            path = (tmp / rel).resolve() if rel else None
            if path is not None and tmp.resolve() in path.parents:  # converted here, not a source file referenced in place
                path.unlink(missing_ok=True)
    near["dropped"] = sorted(gone)
    write_manifest(kept, tmp / MANIFEST)
    return kept


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
        if groups := group_problems(df):  # a split the source gave, against its own groups
            raise DataError(format_problems(groups, f"source `{cfg.source}`"))
        write_manifest(df, tmp / MANIFEST)  # first: it records the in-place references the check allows
        validate_manifest(df, tmp, classes, check_files=False)
        write_classes(classes, tmp / CLASSES)
        near = near_duplicates_across_splits(df, tmp, cfg.allow_near_duplicates or cfg.drop_near_duplicates)
        if cfg.drop_near_duplicates:
            df = _drop_train_copies(df, tmp, near)
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
                near_duplicates=near,
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
