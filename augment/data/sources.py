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

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from augment.config import PrepareConfig
from augment.data import phantom
from augment.data.convert import finish, mask_values, write_pair
from augment.data.folder import load_folder
from augment.data.images import decode_image, sha256_file
from augment.data.manifest import SPLITS, id_problem
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
            f"source `{p}` is a folder but neither the BUSI layout (images/, labels.csv, classes.csv), "
            "a plain segmentation folder (images/, masks/) nor a Hugging Face dataset saved with save_to_disk"
        )
    if not p.exists():
        raise DataError(f"source `{source}` does not exist (allowed: phantom, a folder, a .npz file, a saved HF dataset)")
    raise DataError(f"source `{source}` is not a supported source (allowed: phantom, a folder, a .npz file, a saved HF dataset)")


def check_out_apart(source: str, out: str | Path) -> None:
    """Refuse an output folder that is the source, contains it or lies inside it (paths compared
    resolved, so symlinks and ``..`` count): ``--overwrite`` would delete the source, and an output
    inside it would become part of it. Called before anything is written or deleted."""
    if source == "phantom":
        return
    src, dst = Path(source).resolve(), Path(out).resolve()
    if dst == src:
        where = f"is the source `{source}` itself"
    elif src.is_relative_to(dst):
        where = f"contains the source `{source}`"
    elif dst.is_relative_to(src):
        where = f"lies inside the source `{source}`"
    else:
        return
    raise ConfigError(f"output `{out}` {where}; prepare never writes into or over its source "
                      "(choose an --out outside the source folder)")


def load_phantom(cfg: PrepareConfig, out: Path) -> tuple[list[Row], dict[int, str]]:
    count = cfg.count or DEFAULT_PHANTOM_COUNT
    size = cfg.image_size or DEFAULT_PHANTOM_SIZE
    try:
        priors = tuple(cfg.priors) if cfg.priors is not None else phantom.DEFAULT_PRIORS
        pairs = phantom.phantom_pairs(count, image_size=size, seed=cfg.seed, rgb=cfg.rgb, priors=priors)
        rows = []
        for i, (image, mask, label) in enumerate(track(pairs, count, "phantom")):
            rid = f"phantom_{i:05d}"
            img, msk = write_pair(out, rid, image, mask, None)
            rows.append({"id": rid, "image": img, "mask": msk, "label": int(label), "split": "", "group": rid})
    except ValueError as exc:  # phantom validates its own arguments
        raise ConfigError(f"phantom: {exc}") from None
    return rows, dict(phantom.PHANTOM_CLASSES)


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
        img, _ = write_pair(out, rid, np.ascontiguousarray(image), None, cfg.image_size)
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

    # Image columns are decoded by us (images.decode_image), not by datasets' own PIL call, so an
    # image whose header claims billions of pixels is one DataError, not a traceback.
    encoded = [c for c in (cfg.image_column, mask_col) if c is not None and isinstance(first.features[c], datasets.Image)]
    for column in encoded:
        parts = [(split, part.cast_column(column, datasets.Image(decode=False))) for split, part in parts]
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
        try:
            image = _hf_decoded(rec[cfg.image_column], f"{src}:{rid}", "image")
            if mask_col is not None and mask_col in encoded:
                rec = {**rec, mask_col: _hf_decoded(rec[mask_col], f"{src}:{rid}", "mask")}
        except DataError as exc:
            problems.append((rid, str(exc)))
            continue
        if image is None or not hasattr(image, "mode"):
            problems.append((rid, f"column `{cfg.image_column}` does not hold an image"))
            continue
        if image.mode not in ("L", "RGB"):
            problems.append((rid, f"image has PIL mode {image.mode}; allowed: L or RGB"))
            continue
        mask = None
        if mask_col is not None:
            try:
                mask, _ = mask_values(np.asarray(rec[mask_col]), f"mask in column `{mask_col}`", cfg, len(classes))
            except DataError as exc:
                problems.append((rid, str(exc)))
                continue
        arr = np.asarray(image, dtype=np.uint8)
        if mask is not None and mask.shape != arr.shape[:2]:
            problems.append((rid, f"mask is {mask.shape[1]}x{mask.shape[0]} but its image is {arr.shape[1]}x{arr.shape[0]}"))
            continue
        img, msk = write_pair(out, rid, arr, mask, cfg.image_size)
        group = str(rec[group_col]) if group_col and rec[group_col] not in (None, "") else rid
        rows.append({"id": rid, "image": img, "mask": msk, "label": int(rec[cfg.label_column]), "split": split, "group": group})
    finish(problems, f"HF dataset `{src}`")
    return rows, classes


def _hf_decoded(cell, name: str, what: str):
    """A Hugging Face ``Image(decode=False)`` cell (``{"bytes", "path"}``) as a PIL image through
    :func:`augment.data.images.decode_image`; anything else is returned as it is."""
    if not isinstance(cell, dict) or not ("bytes" in cell or "path" in cell):
        return cell
    data = cell.get("bytes")
    if data is None and cell.get("path"):
        data = Path(cell["path"]).read_bytes()
    return None if data is None else decode_image(data, name, what)


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
