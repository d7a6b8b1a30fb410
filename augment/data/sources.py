"""Sources that ``augment prepare`` turns into a canonical manifest.

* ``phantom``: the built-in seeded ultrasound-style generator (nothing is downloaded, ever);
* a folder in the BUSI layout: ``images/<id>.png``, ``masks/<id>.png`` (optional),
  ``labels.csv`` (``id,label[,split][,group]``) and ``classes.csv`` (``label,name``);
* a plain segmentation folder: ``images/`` and ``masks/`` only, paired by file stem, every image
  of one class (``lesion`` unless ``class_name`` says otherwise), split here;
* a MedMNIST ``.npz`` (``{train,val,test}_{images,labels}``; no masks);
* a Hugging Face dataset saved with ``save_to_disk`` (columns named by the config).

In both folder layouts images and masks may be PNG, JPEG, BMP or TIFF (``masks/<id>_mask.png``
is accepted beside ``masks/<id>.png``). Each loader returns rows (dicts with the manifest columns)
and the class table. Converted pixels (resized, non-PNG, thresholded) are written under the
output folder as PNG; files that need no conversion are referenced in place. Ids become file
names, so every id is checked to be a plain name before anything is written. Problems are
collected over all rows and raised once, naming every bad row.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from augment.config import PrepareConfig
from augment.data import phantom
from augment.data.images import MAX_MASK_VALUE, _open, read_image, resize_image, resize_mask, sha256_file, write_png
from augment.data.manifest import ID_RULE, SPLITS, format_problems, id_problem, read_classes
from augment.errors import ConfigError, DataError
from augment.progress import track

Row = dict[str, object]
DEFAULT_PHANTOM_COUNT = 300
DEFAULT_PHANTOM_SIZE = 64
_PHANTOM_ONLY = ("count", "rgb", "priors")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MASK_SUFFIX = "_mask"  # masks/<id>_mask.png, as many public sets name them
DEFAULT_CLASS_NAME = "lesion"
_MASK_MODES = ("1", "L", "P", "I", "I;16", "RGB")  # RGB only with three equal channels
_SHOWN = 5  # file names spelled out in one error line before "and N more"


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
            f"source `{p}` is a folder but neither the BUSI layout (images/, labels.csv, classes.csv), "
            "a plain segmentation folder (images/, masks/) nor a Hugging Face dataset saved with save_to_disk"
        )
    if not p.exists():
        raise DataError(f"source `{source}` does not exist (allowed: phantom, a folder, a .npz file, a saved HF dataset)")
    raise DataError(f"source `{source}` is not a supported source (allowed: phantom, a folder, a .npz file, a saved HF dataset)")


def _write_pair(
    out: Path, rid: str, image: np.ndarray, mask: np.ndarray | None, size: int | None
) -> tuple[str, str]:
    if (bad := id_problem(rid)) is not None:  # loaders check first; this guards the write itself
        raise DataError(bad)
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


def _mask_values(raw: np.ndarray, what: str, cfg: PrepareConfig) -> tuple[np.ndarray, bool]:
    """A raw mask array ``(H, W)`` or ``(H, W, 3)`` as ``(H, W)`` uint8 class indices, and
    whether its values changed (RGB to one channel, ``mask_threshold``, ``binary_masks``)."""
    changed = False
    if raw.ndim == 3 and raw.shape[2] == 3:
        if not ((raw[..., 0] == raw[..., 1]).all() and (raw[..., 0] == raw[..., 2]).all()):
            raise DataError(
                f"{what} is RGB with channels that differ; masks must be single-channel class indices "
                "(colour-coded masks are not supported: save them as grayscale class indices)"
            )
        raw, changed = raw[..., 0], True
    if raw.ndim != 2:
        raise DataError(f"{what} has shape {raw.shape}; masks must be single-channel class indices")
    if raw.dtype == bool:  # PIL mode "1": already 0/1
        return raw.astype(np.uint8), changed
    if cfg.mask_threshold is not None:
        return (raw >= cfg.mask_threshold).astype(np.uint8), True
    if cfg.binary_masks:
        return (raw != 0).astype(np.uint8), True
    lo, hi = int(raw.min()), int(raw.max())
    if lo < 0 or hi > MAX_MASK_VALUE:
        n = len(np.unique(raw))
        hint = ("for 0/255 lesion masks use --set binary_masks=true" if n <= 2 else
                f"it has {n} distinct values, as lossy (JPEG) or anti-aliased masks do: "
                "use --set mask_threshold=128 to make pixels >= 128 the lesion")
        raise DataError(f"{what} has values {lo}..{hi}; masks must be class indices 0..{MAX_MASK_VALUE} (0 = background); {hint}")
    return raw.astype(np.uint8), changed


def _read_mask(path: Path, cfg: PrepareConfig) -> tuple[np.ndarray, bool]:
    im = _open(path, "mask")
    if im.mode not in _MASK_MODES:
        raise DataError(
            f"mask `{path}` has PIL mode {im.mode}; masks must be single-channel class indices "
            "(L, P, I or 1), or RGB with three equal channels"
        )
    return _mask_values(np.array(im), f"mask `{path}`", cfg)


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
        _finish(_table_problems(table, classes, has_split), f"labels file `{src / 'labels.csv'}`")
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
                mask, mask_changed = _read_mask(mask_path, cfg)
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
    if cfg.mask_threshold is not None and rows and not foreground:
        raise DataError(
            f"source `{src}`: mask_threshold={cfg.mask_threshold} leaves every mask empty (no mask pixel is >= "
            f"{cfg.mask_threshold}); lower it, or leave it unset for masks that already hold class indices"
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
        if (bad := id_problem(rid)) is not None:
            problems.append((rid, bad))
            continue
        image = rec[cfg.image_column]
        if image is None or not hasattr(image, "mode"):
            problems.append((rid, f"column `{cfg.image_column}` does not hold an image"))
            continue
        if image.mode not in ("L", "RGB"):
            problems.append((rid, f"image has PIL mode {image.mode}; allowed: L or RGB"))
            continue
        mask = None
        if mask_col is not None:
            try:
                mask, _ = _mask_values(np.asarray(rec[mask_col]), f"mask in column `{mask_col}`", cfg)
            except DataError as exc:
                problems.append((rid, str(exc)))
                continue
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
    """Options that do not apply to the source are an error, not silently ignored."""
    if kind != "phantom":
        given = [k for k in _PHANTOM_ONLY if getattr(cfg, k) not in (None, False)]
        if given:
            raise ConfigError(f"option(s) {', '.join(given)} apply only to --source phantom, not to `{cfg.source}`")
    if cfg.mask_threshold is not None:
        if kind not in ("folder", "hf") or (kind == "folder" and not (Path(cfg.source) / "masks").is_dir()):
            raise ConfigError(
                f"option mask_threshold applies only to sources with masks (a folder with masks/, a HF dataset), not to `{cfg.source}`"
            )
        if cfg.binary_masks:
            raise ConfigError("options binary_masks and mask_threshold both binarise masks; set only one (mask_threshold=1 keeps every non-zero pixel)")
    if cfg.class_name is not None:
        if kind != "folder":
            raise ConfigError(f"option class_name applies only to a plain folder of images/ and masks/, not to `{cfg.source}`")
        if (Path(cfg.source) / "labels.csv").is_file():
            raise ConfigError(
                f"option class_name applies only to a folder without labels.csv; `{cfg.source}` has one, "
                "so its classes are named in classes.csv"
            )


def hash_images(rows: list[Row], out: Path) -> None:
    for row in rows:
        row["sha256"] = sha256_file(out / str(row["image"]))
