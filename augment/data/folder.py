"""Folder sources of ``augment prepare``: the BUSI layout (``images/``, ``masks/``,
``labels.csv``, ``classes.csv``) and plain segmentation folders (``images/`` and ``masks/`` only,
paired by file stem, one class). Images and masks may be PNG, JPEG, BMP or TIFF;
``masks/<id>_mask.png`` is accepted beside ``masks/<id>.png``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from augment.config import PrepareConfig
from augment.data.convert import finish, mask_values, write_pair
from augment.data.images import open_image, read_image
from augment.data.manifest import ID_RULE, SPLITS, id_problem, read_classes
from augment.errors import DataError
from augment.progress import track

Row = dict[str, object]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MASK_SUFFIX = "_mask"  # masks/<id>_mask.png, as many public sets name them
DEFAULT_CLASS_NAME = "lesion"
_MASK_MODES = ("1", "L", "P", "I", "I;16", "RGB")  # RGB only with three equal channels
_SHOWN = 5  # file names spelled out in one error line before "and N more"


def _read_labels(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"labels file `{path}` does not exist (expected columns id,label[,split][,group])")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"labels file `{path}` is not a readable CSV ({exc})") from None
    missing = [c for c in ("id", "label") if c not in table.columns]
    if missing:
        raise DataError(f"labels file `{path}` lacks column(s) {', '.join(missing)} (found: {', '.join(table.columns)})")
    return table


def _table_problems(table: pd.DataFrame, classes: dict[int, str], has_split: bool) -> list[tuple[str, str]]:
    """Row checks that need no pixels: duplicate ids, labels and splits."""
    problems = []
    allowed = ", ".join(str(k) for k in sorted(classes))
    counts = table["id"].value_counts()
    for rid in sorted(counts.index[counts > 1]):
        problems.append((rid, f"id `{rid}` appears {counts[rid]} times in labels.csv"))
    for rid in table["id"]:
        if (bad := id_problem(rid)) is not None:
            problems.append((rid, bad))
    for rid, label in zip(table["id"], table["label"]):
        if not str(label).strip().isdigit() or int(label) not in classes:
            problems.append((rid, f"label `{label}` is not listed in classes.csv (allowed: {allowed})"))
    if has_split:
        for rid, split in zip(table["id"], table["split"]):
            if split not in SPLITS:
                problems.append((rid, f"split `{split}` is not one of {', '.join(SPLITS)}"))
    return problems


def _few(names: list[str]) -> str:
    shown = ", ".join(f"`{n}`" for n in names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def _files_by_stem(folder: Path) -> tuple[dict[str, list[Path]], list[str]]:
    """Image files in ``folder`` by stem, and the names of its other entries. Hidden entries
    (``.DS_Store``, editor files) are skipped."""
    found: dict[str, list[Path]] = {}
    other: list[str] = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            found.setdefault(p.stem, []).append(p)
        else:
            other.append(f"{folder.name}/{p.name}")
    return found, other


def _lookup(files: dict[str, list[Path]], rid: str, folder: Path, what: str) -> Path:
    """The one file for ``rid``: ``<rid>.<ext>`` (masks also ``<rid>_mask.<ext>``). None: the
    ``.png`` path, so that reading it says which file does not exist; several: a DataError."""
    hits = files.get(rid, []) + (files.get(rid + MASK_SUFFIX, []) if what == "mask" else [])
    if len(hits) > 1:
        raise DataError(f"{what} of `{rid}` is ambiguous: {', '.join(f'`{h}`' for h in hits)}; keep one")
    return hits[0] if hits else folder / f"{rid}.png"


def _plain_records(src: Path, images: dict[str, list[Path]], masks: dict[str, list[Path]], stray: list[str]) -> list[Row]:
    """Rows of a folder without labels.csv: one per image stem, all label 0, no split."""
    if stray:
        raise DataError(
            f"source `{src}` has {len(stray)} non-image entr{'y' if len(stray) == 1 else 'ies'}: {_few(stray)} "
            f"(allowed: {', '.join(IMAGE_SUFFIXES)} files; names starting with `.` are skipped)"
        )
    no_mask = [f"images/{images[s][0].name}" for s in images if s not in masks and s + MASK_SUFFIX not in masks]
    no_image = [f"masks/{masks[s][0].name}" for s in masks if s not in images and s.removesuffix(MASK_SUFFIX) not in images]
    if no_mask or no_image:
        parts = [f"{len(no_mask)} image(s) have no mask: {_few(no_mask)}"] if no_mask else []
        parts += [f"{len(no_image)} mask(s) have no image: {_few(no_image)}"] if no_image else []
        raise DataError(
            f"source `{src}`: {'; '.join(parts)} (images and masks are paired by file stem: "
            f"images/<id>.png with masks/<id>.png or masks/<id>{MASK_SUFFIX}.png)"
        )
    bad = [s for s in images if id_problem(s) is not None]
    if bad:
        raise DataError(f"source `{src}`: {len(bad)} image name(s) are not plain ids: {_few(bad)} (allowed: {ID_RULE}); rename them")
    return [{"id": s, "label": 0} for s in images]


def _read_mask(path: Path, cfg: PrepareConfig, n_classes: int) -> tuple[np.ndarray, bool]:
    im = open_image(path, "mask")
    if im.mode not in _MASK_MODES:
        raise DataError(
            f"mask `{path}` has PIL mode {im.mode}; masks must be single-channel class indices "
            "(L, P, I or 1), or RGB with three equal channels"
        )
    return mask_values(np.array(im), f"mask `{path}`", cfg, n_classes)


def load_folder(cfg: PrepareConfig, out: Path) -> tuple[list[Row], dict[int, str]]:
    src = Path(cfg.source)
    if not (src / "images").is_dir():
        raise DataError(f"source `{src}` has no images/ folder (a folder source holds images/<id>.png)")
    images, stray = _files_by_stem(src / "images")
    has_masks = (src / "masks").is_dir()
    masks, stray_masks = _files_by_stem(src / "masks") if has_masks else ({}, [])
    if (src / "labels.csv").is_file():
        classes = read_classes(src / "classes.csv")
        table = _read_labels(src / "labels.csv")
        has_split = "split" in table.columns
        finish(_table_problems(table, classes, has_split), f"labels file `{src / 'labels.csv'}`")
        records = table.to_dict("records")
    elif (src / "classes.csv").is_file() or not has_masks:
        raise DataError(
            f"source `{src}` has images/ but no labels.csv; either add labels.csv (id,label[,split][,group]) and "
            "classes.csv (label,name), or give images/ and masks/ only (a plain segmentation folder: one class)"
        )
    else:
        records = _plain_records(src, images, masks, stray + stray_masks)
        classes = {0: cfg.class_name or DEFAULT_CLASS_NAME}
        has_split = False

    rows: list[Row] = []
    problems: list[tuple[str, str]] = []
    sizes: dict[tuple[int, ...], str] = {}
    foreground = False
    for rec in track(records, len(records), "reading"):
        rid = rec["id"]
        mask_path, mask, mask_changed = None, None, False
        try:
            image_path = _lookup(images, rid, src / "images", "image")
            image = read_image(image_path)
            if has_masks:
                mask_path = _lookup(masks, rid, src / "masks", "mask")
                mask, mask_changed = _read_mask(mask_path, cfg, len(classes))
        except DataError as exc:
            problems.append((rid, str(exc)))
            continue
        if mask is not None and mask.shape != image.shape[:2]:
            problems.append((rid, f"mask `{mask_path}` is {mask.shape[1]}x{mask.shape[0]} but its image is {image.shape[1]}x{image.shape[0]}"))
            continue
        foreground = foreground or bool(mask is not None and mask.any())
        sizes.setdefault(image.shape[:2], rid)
        in_place = (
            (cfg.image_size is None or image.shape[:2] == (cfg.image_size,) * 2)
            and image_path.suffix.lower() == ".png"
            and (mask_path is None or (mask_path.suffix.lower() == ".png" and not mask_changed))
        )
        if in_place:
            img = os.path.relpath(image_path.resolve(), out.resolve())
            msk = os.path.relpath(mask_path.resolve(), out.resolve()) if mask_path is not None else ""
        else:
            img, msk = write_pair(out, rid, image, mask, cfg.image_size)
        rows.append({
            "id": rid, "image": img, "mask": msk, "label": int(rec["label"]),
            "split": rec["split"] if has_split else "",
            "group": rec.get("group") or rid,
        })
    finish(problems, f"source `{src}`")
    if cfg.image_size is None and len(sizes) > 1:
        (a, ida), (b, idb) = list(sizes.items())[:2]
        raise DataError(
            f"source `{src}` has images of different sizes ({ida} is {a[1]}x{a[0]}, {idb} is {b[1]}x{b[0]}); "
            "pass --image-size N to resize them all"
        )
    if cfg.mask_threshold is not None and rows and not foreground:
        raise DataError(
            f"source `{src}`: mask_threshold={cfg.mask_threshold} leaves every mask empty (no mask pixel is >= "
            f"{cfg.mask_threshold}); lower it, or leave it unset for masks that already hold class indices"
        )
    return rows, classes
