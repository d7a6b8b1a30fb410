"""Sources that ``augment prepare`` turns into a canonical manifest.

* ``phantom``: the built-in seeded ultrasound-style generator (nothing is downloaded, ever);
* a folder in the BUSI layout: ``images/<id>.png``, ``masks/<id>.png`` (optional),
  ``labels.csv`` (``id,label[,split][,group]``) and ``classes.csv`` (``label,name``);
* a MedMNIST ``.npz`` (``{train,val,test}_{images,labels}``; no masks);
* a Hugging Face dataset saved with ``save_to_disk`` (columns named by the config).

Each loader returns rows (dicts with the manifest columns) and the class table. Converted pixels
are written under the output folder; files that need no conversion are referenced in place.
Problems are collected over all rows and raised once, naming every bad row.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from augment.config import PrepareConfig
from augment.data import phantom
from augment.data.images import read_image, read_mask, resize_image, resize_mask, sha256_file, write_png
from augment.data.manifest import SPLITS, format_problems, read_classes
from augment.errors import ConfigError, DataError
from augment.progress import track

Row = dict[str, object]
DEFAULT_PHANTOM_COUNT = 300
DEFAULT_PHANTOM_SIZE = 64
_PHANTOM_ONLY = ("count", "rgb", "priors")


def source_kind(source: str) -> str:
    """``phantom``, ``folder``, ``npz`` or ``hf``; a path that is none of these is an error."""
    if source == "phantom":
        return "phantom"
    p = Path(source)
    if p.is_file() and p.suffix == ".npz":
        return "npz"
    if p.is_dir():
        if (p / "dataset_info.json").is_file() or (p / "dataset_dict.json").is_file():
            return "hf"
        if (p / "labels.csv").is_file() or (p / "images").is_dir():
            return "folder"
        raise DataError(
            f"source `{p}` is a folder but neither the BUSI layout (images/, labels.csv, classes.csv) "
            "nor a Hugging Face dataset saved with save_to_disk"
        )
    if not p.exists():
        raise DataError(f"source `{source}` does not exist (allowed: phantom, a folder, a .npz file, a saved HF dataset)")
    raise DataError(f"source `{source}` is not a supported source (allowed: phantom, a folder, a .npz file, a saved HF dataset)")


def _write_pair(
    out: Path, rid: str, image: np.ndarray, mask: np.ndarray | None, size: int | None
) -> tuple[str, str]:
    if size is not None:
        image = resize_image(image, size)
        mask = None if mask is None else resize_mask(mask, size)
    write_png(image, out / "images" / f"{rid}.png")
    if mask is None:
        return f"images/{rid}.png", ""
    write_png(mask, out / "masks" / f"{rid}.png")
    return f"images/{rid}.png", f"masks/{rid}.png"


def _finish(problems: list[tuple[str, str]], where: str) -> None:
    if problems:
        raise DataError(format_problems(problems, where))


def load_phantom(cfg: PrepareConfig, out: Path) -> tuple[list[Row], dict[int, str]]:
    count = cfg.count or DEFAULT_PHANTOM_COUNT
    size = cfg.image_size or DEFAULT_PHANTOM_SIZE
    try:
        priors = tuple(cfg.priors) if cfg.priors is not None else phantom.DEFAULT_PRIORS
        pairs = phantom.phantom_pairs(count, image_size=size, seed=cfg.seed, rgb=cfg.rgb, priors=priors)
        rows = []
        for i, (image, mask, label) in enumerate(track(pairs, count, "phantom")):
            rid = f"phantom_{i:05d}"
            img, msk = _write_pair(out, rid, image, mask, None)
            rows.append({"id": rid, "image": img, "mask": msk, "label": int(label), "split": "", "group": rid})
    except ValueError as exc:  # phantom validates its own arguments
        raise ConfigError(f"phantom: {exc}") from None
    return rows, dict(phantom.PHANTOM_CLASSES)


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
    for rid, label in zip(table["id"], table["label"]):
        if not str(label).strip().isdigit() or int(label) not in classes:
            problems.append((rid, f"label `{label}` is not listed in classes.csv (allowed: {allowed})"))
    if has_split:
        for rid, split in zip(table["id"], table["split"]):
            if split not in SPLITS:
                problems.append((rid, f"split `{split}` is not one of {', '.join(SPLITS)}"))
    return problems


def load_folder(cfg: PrepareConfig, out: Path) -> tuple[list[Row], dict[int, str]]:
    src = Path(cfg.source)
    classes = read_classes(src / "classes.csv")
    table = _read_labels(src / "labels.csv")
    has_split = "split" in table.columns
    has_masks = (src / "masks").is_dir()
    _finish(_table_problems(table, classes, has_split), f"labels file `{src / 'labels.csv'}`")

    rows: list[Row] = []
    problems: list[tuple[str, str]] = []
    sizes: dict[tuple[int, ...], str] = {}
    for rec in track(table.to_dict("records"), len(table), "reading"):
        rid = rec["id"]
        image_path = src / "images" / f"{rid}.png"
        mask_path = src / "masks" / f"{rid}.png"
        try:
            image = read_image(image_path)
            mask = read_mask(mask_path, binary=cfg.binary_masks) if has_masks else None
        except DataError as exc:
            problems.append((rid, str(exc)))
            continue
        if mask is not None and mask.shape != image.shape[:2]:
            problems.append((rid, f"mask `{mask_path}` is {mask.shape[1]}x{mask.shape[0]} but its image is {image.shape[1]}x{image.shape[0]}"))
            continue
        sizes.setdefault(image.shape[:2], rid)
        in_place = (cfg.image_size is None or image.shape[:2] == (cfg.image_size,) * 2) and not cfg.binary_masks
        if in_place:
            img = os.path.relpath(image_path.resolve(), out.resolve())
            msk = os.path.relpath(mask_path.resolve(), out.resolve()) if has_masks else ""
        else:
            img, msk = _write_pair(out, rid, image, mask, cfg.image_size)
        rows.append({
            "id": rid, "image": img, "mask": msk, "label": int(rec["label"]),
            "split": rec["split"] if has_split else "",
            "group": rec.get("group") or rid,
        })
    _finish(problems, f"source `{src}`")
    if cfg.image_size is None and len(sizes) > 1:
        (a, ida), (b, idb) = list(sizes.items())[:2]
        raise DataError(
            f"source `{src}` has images of different sizes ({ida} is {a[1]}x{a[0]}, {idb} is {b[1]}x{b[0]}); "
            "pass --image-size N to resize them all"
        )
    return rows, classes


def load_npz(cfg: PrepareConfig, out: Path) -> tuple[list[Row], dict[int, str]]:
    src = Path(cfg.source)
    try:
        data = np.load(src, allow_pickle=False)
        keys = set(data.files)
    except (OSError, ValueError) as exc:
        raise DataError(f"npz `{src}` is not a readable .npz file ({exc})") from None
    expected = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels")]
    missing = [k for k in expected if k not in keys]
    if missing:
        raise DataError(
            f"npz `{src}` lacks key(s) {', '.join(missing)} (a MedMNIST file has {', '.join(expected)}; "
            f"found: {', '.join(sorted(keys)) or 'none'})"
        )
    arrays = {}
    for split in SPLITS:
        images, labels = data[f"{split}_images"], data[f"{split}_labels"]
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
            raise DataError(f"npz `{src}`: {split}_images must be uint8 (N,H,W) or (N,H,W,3), got {images.dtype} {images.shape}")
        if labels.ndim == 2 and labels.shape[1] != 1:
            raise DataError(f"npz `{src}`: {split}_labels has shape {labels.shape}; multi-label sets are not supported")
        labels = labels.reshape(-1)
        if len(labels) != len(images):
            raise DataError(f"npz `{src}`: {split}_images has {len(images)} items but {split}_labels has {len(labels)}")
        if len(labels) and (labels.min() < 0 or not np.issubdtype(labels.dtype, np.integer)):
            raise DataError(f"npz `{src}`: {split}_labels must be non-negative integers")
        arrays[split] = (images, labels)
    n_classes = int(max(int(l.max()) for _, l in arrays.values() if len(l))) + 1
    classes = {k: str(k) for k in range(n_classes)}
    total = sum(len(l) for _, l in arrays.values())

    def items() -> Iterator[tuple[str, np.ndarray, int]]:
        for split, (images, labels) in arrays.items():
            for i in range(len(images)):
                yield split, images[i], int(labels[i])

    rows: list[Row] = []
    counters = dict.fromkeys(SPLITS, 0)
    for split, image, label in track(items(), total, "converting"):
        rid = f"{split}_{counters[split]:05d}"
        counters[split] += 1
        img, _ = _write_pair(out, rid, np.ascontiguousarray(image), None, cfg.image_size)
        rows.append({"id": rid, "image": img, "mask": "", "label": label, "split": split, "group": rid})
    return rows, classes


_HF_SPLITS = {"train": "train", "val": "val", "validation": "val", "valid": "val", "test": "test"}


def load_hf(cfg: PrepareConfig, out: Path) -> tuple[list[Row], dict[int, str]]:
    import datasets  # heavy import, only when needed

    src = Path(cfg.source)
    try:
        ds = datasets.load_from_disk(str(src))
    except Exception as exc:  # datasets raises several unrelated types for a bad folder
        raise DataError(f"HF dataset `{src}` could not be loaded ({type(exc).__name__}: {exc})") from None
    if isinstance(ds, datasets.DatasetDict):
        unknown = [s for s in ds if s not in _HF_SPLITS]
        if unknown:
            raise DataError(f"HF dataset `{src}` has split(s) {', '.join(unknown)}; allowed: {', '.join(_HF_SPLITS)}")
        parts = [(_HF_SPLITS[s], ds[s]) for s in ds]
    else:
        parts = [(None, ds)]
    first = parts[0][1]
    for col in (cfg.image_column, cfg.label_column):
        if col not in first.column_names:
            raise DataError(f"HF dataset `{src}` has no column `{col}` (columns: {', '.join(first.column_names)}); set image_column/label_column")
    mask_col = cfg.mask_column if cfg.mask_column in first.column_names else None
    split_col = cfg.split_column if parts[0][0] is None and cfg.split_column in first.column_names else None
    group_col = cfg.group_column if cfg.group_column in first.column_names else None
    feature = first.features[cfg.label_column]
    if isinstance(feature, datasets.ClassLabel):
        classes = dict(enumerate(feature.names))
    else:
        labels = [int(v) for _, part in parts for v in part[cfg.label_column]]
        classes = {k: str(k) for k in range(max(labels) + 1)}

    rows: list[Row] = []
    problems: list[tuple[str, str]] = []
    total = sum(len(p) for _, p in parts)
    records = ((split, i, rec) for split, part in parts for i, rec in enumerate(part))
    for split, i, rec in track(records, total, "converting"):
        rid = str(rec["id"]) if "id" in rec else f"{split or 'item'}_{i:05d}"
        split = split or (rec[split_col] if split_col else "")
        image = rec[cfg.image_column]
        if image is None or not hasattr(image, "mode"):
            problems.append((rid, f"column `{cfg.image_column}` does not hold an image"))
            continue
        if image.mode not in ("L", "RGB"):
            problems.append((rid, f"image has PIL mode {image.mode}; allowed: L or RGB"))
            continue
        mask = None
        if mask_col is not None:
            raw = np.asarray(rec[mask_col])
            if raw.ndim != 2:
                problems.append((rid, f"mask has shape {raw.shape}; masks must be single-channel class indices"))
                continue
            mask = (raw != 0).astype(np.uint8) if cfg.binary_masks else raw
            if mask.min() < 0 or mask.max() > 31:
                problems.append((rid, f"mask values {int(mask.min())}..{int(mask.max())} are not class indices 0..31"))
                continue
            mask = mask.astype(np.uint8)
        arr = np.asarray(image, dtype=np.uint8)
        if mask is not None and mask.shape != arr.shape[:2]:
            problems.append((rid, f"mask is {mask.shape[1]}x{mask.shape[0]} but its image is {arr.shape[1]}x{arr.shape[0]}"))
            continue
        img, msk = _write_pair(out, rid, arr, mask, cfg.image_size)
        group = str(rec[group_col]) if group_col and rec[group_col] not in (None, "") else rid
        rows.append({"id": rid, "image": img, "mask": msk, "label": int(rec[cfg.label_column]), "split": split, "group": group})
    _finish(problems, f"HF dataset `{src}`")
    return rows, classes


LOADERS = {"phantom": load_phantom, "folder": load_folder, "npz": load_npz, "hf": load_hf}


def check_options(cfg: PrepareConfig, kind: str) -> None:
    """Phantom-only options given to another source are an error, not silently ignored."""
    if kind != "phantom":
        given = [k for k in _PHANTOM_ONLY if getattr(cfg, k) not in (None, False)]
        if given:
            raise ConfigError(f"option(s) {', '.join(given)} apply only to --source phantom, not to `{cfg.source}`")


def hash_images(rows: list[Row], out: Path) -> None:
    for row in rows:
        row["sha256"] = sha256_file(out / str(row["image"]))
