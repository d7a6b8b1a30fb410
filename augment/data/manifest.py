"""The canonical manifest: one CSV row per image (+ mask), paths relative to the manifest.

Columns: ``id, image, mask, label, split, group, sha256``. ``mask`` is empty for sources without
masks (MedMNIST). ``sha256`` is the hash of the image file's bytes; later stages use it to prove
that a generator never saw a val or test image. ``classes.csv`` (``label,name``) sits beside the
manifest and lists every class, including ones absent from a split.

Paths stay inside the manifest's folder. The one exception is a file referenced where it lies
(prepare keeps source files that need no conversion in place; combined training manifests point
into their parts): :func:`write_manifest` records every such outside reference with its sha256 in
``references.json`` beside the manifest, and a path outside the folder that is not recorded there
(an absolute path, ``..``, a symlink out) is refused. ``prepare`` also records in ``run.json``
the digest of those references and which rows were val or test, so that a hand-edited manifest
cannot move a held-out row into the train split. A synthetic set (``run.json`` of stage
``sample``, or any set read by :func:`load_synthetic`) has no such exception: every one of its
paths stays inside its folder, whatever ``references.json`` says.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from augment.data.images import mask_class_problem, read_image, read_mask, sha256_file
from augment.errors import DataError

COLUMNS = ["id", "image", "mask", "label", "split", "group", "sha256"]
SPLITS = ("train", "val", "test")
MANIFEST = "manifest.csv"
CLASSES = "classes.csv"
REFERENCES = "references.json"  # files outside the folder that the manifest may point to
RUN = "run.json"
HELDOUT = ("val", "test")
_SHOWN = 8  # bad rows spelled out in one error line before "and N more"
# Ids become file names (images/<id>.png, export folders), so they must be plain names: no path
# separators, no leading dot (hidden files, `.`, `..`), nothing a shell or a filesystem treats specially.
_PLAIN_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
ID_RULE = "letters, digits, `_`, `-` and `.`, not starting with `.`"


def id_problem(rid: str) -> str | None:
    """Why ``rid`` cannot be an id (None when it can): ids must be plain file names."""
    if _PLAIN_ID.fullmatch(rid):
        return None
    return f"id `{rid}` is not a plain name (allowed: {ID_RULE})"


def _atomic_csv(df: pd.DataFrame, path: Path) -> None:
    from augment.output import atomic_path

    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def write_manifest(df: pd.DataFrame, path: str | Path) -> None:
    """Write the canonical columns first (extra columns, e.g. provenance, follow) atomically, and
    record the files it references outside its folder in ``references.json`` (see the module)."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"manifest frame lacks columns {missing}")
    path = Path(path)
    refs = outside_references(df, path.parent)
    sidecar = path.parent / REFERENCES
    if refs:
        from augment.output import write_json

        write_json({"references": refs}, sidecar)  # before the manifest: never an unrecorded reference
    else:
        sidecar.unlink(missing_ok=True)
    extra = [c for c in df.columns if c not in COLUMNS]
    _atomic_csv(df[COLUMNS + extra], path)


def _outside(rel: str, root: Path, real_root: Path) -> bool:
    """Whether ``rel`` (a manifest path) resolves, symlinks followed, outside ``root``."""
    return Path(rel).is_absolute() or not (root / rel).resolve().is_relative_to(real_root)


def _synthetic(root: Path) -> bool:
    """Whether ``root`` holds a set made by ``augment sample`` (its run.json says so)."""
    p = root / RUN
    return p.is_file() and _read_json(p, "run record").get("stage") == "sample"


def _path_problem(col: str, rel: str, root: Path, real_root: Path, refs: dict[str, str], synthetic: bool) -> str | None:
    """Why the manifest path ``rel`` (column ``col``) may not be opened (None when it may): it is
    absolute, or it resolves outside ``root`` and is not a recorded reference (a synthetic set has
    none)."""
    if synthetic:
        allowed = f"a synthetic set's paths must be relative and stay inside `{root}`; {REFERENCES} does not apply to it"
    else:
        allowed = (f"paths must be relative and stay inside `{root}`; only the in-place references "
                   f"recorded in {REFERENCES} may point outside it")
    if Path(rel).is_absolute():
        return f"{col} `{rel}` is an absolute path ({allowed})"
    if rel in refs or not _outside(rel, root, real_root):
        return None
    where = "the synthetic set's folder" if synthetic else "the dataset folder"
    return f"{col} `{rel}` resolves to `{(root / rel).resolve()}`, outside {where} ({allowed})"


def row_paths(df: pd.DataFrame, root: str | Path, masks: bool = True) -> list[tuple[Path, Path | None]]:
    """Each row's image path and mask path (None without ``masks`` or for a row without one) under
    ``root``, checked as :func:`manifest_problems` checks them: a path that leaves ``root`` and is
    not a recorded reference is a DataError naming the row, before anything is opened."""
    root = Path(root)
    real_root, synthetic = root.resolve(), _synthetic(root)
    refs = {} if synthetic else read_references(root)
    paths = []
    for row in df.itertuples(index=False):
        mask = row.mask if masks else ""
        for col, rel in (("image", row.image), ("mask", mask)):
            if rel and (bad := _path_problem(col, rel, root, real_root, refs, synthetic)) is not None:
                raise DataError(f"row {row.id}: {bad}")
        paths.append((root / row.image, root / mask if mask else None))
    return paths


def outside_references(df: pd.DataFrame, root: str | Path) -> dict[str, str]:
    """``{path: sha256}`` of the relative image and mask paths of ``df`` that lie outside ``root``."""
    root = Path(root)
    real_root = root.resolve()
    refs = {}
    for rel in [*df["image"], *df["mask"]]:
        if rel and not Path(rel).is_absolute() and rel not in refs and _outside(rel, root, real_root):
            if not (root / rel).is_file():
                raise DataError(f"manifest path `{rel}` (relative to `{root}`) does not exist")
            refs[rel] = sha256_file(root / rel)
    return dict(sorted(refs.items()))


def references_digest(refs: dict[str, str]) -> str:
    """One sha256 over the sorted ``path sha256`` lines: what ``prepare`` records in run.json."""
    lines = "".join(f"{p} {h}\n" for p, h in sorted(refs.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{what} `{path}` is not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"{what} `{path}` is not a JSON object")
    return data


def read_references(root: str | Path) -> dict[str, str]:
    """The recorded outside references of the manifest in ``root`` (``{}`` when none)."""
    p = Path(root) / REFERENCES
    if not p.is_file():
        return {}
    refs = _read_json(p, "references file").get("references")
    if not isinstance(refs, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in refs.items()):
        raise DataError(f"references file `{p}` has no `references` object of path -> sha256 (re-run the stage that wrote it)")
    return refs


def prepare_record(root: str | Path) -> dict | None:
    """What ``prepare`` recorded about the manifest in ``root``: ``{"heldout": {id: split},
    "references_sha256": str, "near_duplicates": {(train id, val/test id), ...}}`` (the pairs it
    accepted with ``allow_near_duplicates``), or None when ``root`` was not made by ``prepare`` (a
    synthetic set, a combined manifest). A prepare record without the first two is an error, not a
    skipped check; one from before the near-duplicate check accepted none."""
    p = Path(root) / RUN
    if not p.is_file():
        return None
    record = _read_json(p, "run record")
    if record.get("stage") != "prepare":
        return None
    heldout, refs = record.get("heldout_ids"), record.get("in_place_references")
    if (not isinstance(heldout, dict) or not all(isinstance(v, list) for v in heldout.values())
            or not isinstance(refs, dict) or not isinstance(refs.get("sha256"), str)):
        raise DataError(f"`{p}` does not record which rows were val/test and which files are referenced in place "
                        "(written by an older `augment prepare`); re-run prepare")
    near = record.get("near_duplicates")
    pairs = near.get("pairs") if isinstance(near, dict) and isinstance(near.get("pairs"), list) else []
    accepted = {(str(p.get("candidate")), str(p.get("heldout"))) for p in pairs if isinstance(p, dict)}
    return {"heldout": {str(i): s for s, ids in heldout.items() for i in ids}, "references_sha256": refs["sha256"],
            "near_duplicates": accepted}


def write_classes(classes: dict[int, str], path: str | Path) -> None:
    frame = pd.DataFrame({"label": list(classes), "name": list(classes.values())})
    _atomic_csv(frame.sort_values("label"), Path(path))


def read_classes(path: str | Path) -> dict[int, str]:
    """``classes.csv`` as ``{label: name}``; labels must be unique non-negative integers."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"classes file `{p}` does not exist (expected columns label,name)")
    try:
        frame = pd.read_csv(p, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"classes file `{p}` is not a readable CSV ({exc})") from None
    if list(frame.columns[:2]) != ["label", "name"]:
        raise DataError(f"classes file `{p}` must have columns label,name; found {','.join(frame.columns)}")
    classes: dict[int, str] = {}
    for raw, name in zip(frame["label"], frame["name"]):
        if not raw.strip().isdigit():
            raise DataError(f"classes file `{p}`: label `{raw}` is not a non-negative integer")
        if int(raw) in classes:
            raise DataError(f"classes file `{p}`: label {raw} is listed twice")
        classes[int(raw)] = name
    if not classes:
        raise DataError(f"classes file `{p}` lists no classes")
    return classes


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest CSV (``path`` may be the file or its folder); column checks only."""
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST
    if not p.is_file():
        raise DataError(f"manifest `{p}` does not exist (run `augment prepare` first)")
    try:
        df = pd.read_csv(p, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"manifest `{p}` is not a readable CSV ({exc})") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"manifest `{p}` lacks columns {', '.join(missing)} (required: {', '.join(COLUMNS)})")
    bad = [i for i, v in zip(df["id"], df["label"]) if not v.strip().lstrip("-").isdigit()]
    if bad:
        raise DataError(f"manifest `{p}`: label is not an integer for id {', '.join(bad[:_SHOWN])}")
    df["label"] = df["label"].astype("int64")
    return df


def group_problems(df: pd.DataFrame) -> list[tuple[str, str]]:
    """Groups (patient, video) on more than one side of the split, as ``(id, message)`` once per
    group, at its first row: the leak that ``group`` exists to prevent."""
    problems = []
    rows = df[df["split"].isin(SPLITS) & (df["group"] != "")]
    for group, part in rows.groupby("group", sort=True):
        splits = [s for s in SPLITS if s in set(part["split"])]
        if len(splits) > 1:
            where = ", ".join(splits[:-1]) + f" and {splits[-1]}"
            some = "; ".join(f"{s}: {', '.join(part.loc[part['split'] == s, 'id'].head(3))}" for s in splits)
            problems.append((part["id"].iloc[0], f"group `{group}` is in {where} ({some}); a group (one patient, one video) "
                                                 "stays on one side of the split: fix the split, or give independent images "
                                                 "groups of their own"))
    return problems


def manifest_problems(
    df: pd.DataFrame,
    root: str | Path,
    classes: dict[int, str],
    check_files: bool = True,
    check_hashes: bool = False,
    synthetic: bool = False,
) -> list[tuple[str, str]]:
    """Every problem as ``(id, message)``: duplicate or non-plain ids, groups across splits
    (:func:`group_problems`), unknown labels or splits,
    paths outside ``root`` that are not recorded references (``synthetic``, or a run.json of stage
    ``sample``: no path may leave ``root``), val/test rows of a prepared set moved to train, and
    (with ``check_files``) missing or corrupt images and masks, mask/image size mismatches and mask
    values above the number of classes; ``check_hashes`` also re-hashes every image and every
    recorded outside reference."""
    root = Path(root)
    real_root = root.resolve()
    synthetic = synthetic or _synthetic(root)
    refs = {} if synthetic else read_references(root)
    record = prepare_record(root)
    if record is not None and references_digest(refs) != record["references_sha256"]:
        raise DataError(f"the in-place references of `{root}` ({REFERENCES}) are not those prepare recorded in {RUN}; "
                        "re-run prepare")
    heldout = record["heldout"] if record is not None else {}
    problems: list[tuple[str, str]] = []
    dup = df["id"][df["id"].duplicated(keep=False)]
    for i in sorted(set(dup)):
        problems.append((i, f"id `{i}` appears {int((dup == i).sum())} times"))
    problems += group_problems(df)
    allowed = ", ".join(str(k) for k in sorted(classes))
    for row in df.itertuples(index=False):
        rid = row.id
        if not rid:
            problems.append(("(empty)", "a row has an empty id"))
        elif (bad := id_problem(rid)) is not None:
            problems.append((rid, bad))
        if int(row.label) not in classes:
            problems.append((rid, f"label {row.label} is not in classes.csv (allowed: {allowed})"))
        if row.split not in SPLITS:
            problems.append((rid, f"split `{row.split}` is not one of {', '.join(SPLITS)}"))
        if not row.group:
            problems.append((rid, "group is empty (use the id when images are independent)"))
        if row.split == "train" and rid in heldout:
            problems.append((rid, f"split is `train` but row {rid} was `{heldout[rid]}` at prepare time (recorded in {RUN}); "
                                  "val and test rows never become training data (re-run prepare for a new split)"))
        escapes = [bad for col, rel in (("image", row.image), ("mask", row.mask))
                   if rel and (bad := _path_problem(col, rel, root, real_root, refs, synthetic)) is not None]
        problems += [(rid, bad) for bad in escapes]
        if escapes or not check_files:
            continue  # an escaping path is never opened
        try:
            image = read_image(root / row.image)
        except DataError as exc:
            problems.append((rid, str(exc)))
            continue
        if check_hashes:
            sha = sha256_file(root / row.image)
            if sha != row.sha256:
                problems.append((rid, f"image `{row.image}` does not match its sha256 in the manifest"))
            elif row.image in refs and sha != refs[row.image]:
                problems.append((rid, f"image `{row.image}` does not match the sha256 recorded in {REFERENCES}"))
        if row.mask:
            try:
                mask = read_mask(root / row.mask)
            except DataError as exc:
                problems.append((rid, str(exc)))
                continue
            if mask.shape != image.shape[:2]:
                problems.append((rid, f"mask `{row.mask}` is {_hw(mask)} but its image is {_hw(image)}"))
            if (bad := mask_class_problem(mask, f"mask `{row.mask}`", len(classes))) is not None:
                problems.append((rid, bad))
            if check_hashes and row.mask in refs and sha256_file(root / row.mask) != refs[row.mask]:
                problems.append((rid, f"mask `{row.mask}` does not match the sha256 recorded in {REFERENCES}"))
    return problems


def _hw(a: np.ndarray) -> str:
    return f"{a.shape[1]}x{a.shape[0]}"


def format_problems(problems: Iterable[tuple[str, str]], where: str) -> str:
    problems = list(problems)
    # The first in full; the rest without the advice that follows the fact (usually the same).
    shown = "; ".join(f"{rid}: {msg if i == 0 else msg.split('; ')[0]}" for i, (rid, msg) in enumerate(problems[:_SHOWN]))
    more = f"; and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
    return f"{where} has {len(problems)} bad row(s): {shown}{more}"


def validate_manifest(df: pd.DataFrame, root: str | Path, classes: dict[int, str], **kwargs) -> None:
    """Raise one DataError listing every bad row by id (see :func:`manifest_problems`); a manifest
    with no rows (a header only) is an error too: no stage has anything to do with it."""
    if len(df) == 0:
        raise DataError(f"manifest in `{root}` has no rows (a set with no pairs); nothing can be trained, sampled from or measured")
    problems = manifest_problems(df, root, classes, **kwargs)
    if problems:
        raise DataError(format_problems(problems, f"manifest in `{root}`"))


def load_data(data_dir: str | Path, check_files: bool = False, synthetic: bool = False) -> tuple[pd.DataFrame, dict[int, str]]:
    """A prepared dataset folder as ``(manifest, classes)``, validated (paths inside the folder or
    recorded references, only inside with ``synthetic``; held-out rows still held out; files too
    with ``check_files``)."""
    d = Path(data_dir)
    df = read_manifest(d / MANIFEST)
    classes = read_classes(d / CLASSES)
    validate_manifest(df, d, classes, check_files=check_files, synthetic=synthetic)
    return df, classes


def load_synthetic(syn_dir: str | Path, data_dir: str | Path, classes: dict[int, str]) -> pd.DataFrame:
    """The manifest of a set made beside ``data_dir`` (a synthetic set), validated like
    :func:`load_data` except that no path may leave ``syn_dir`` (``references.json`` does not
    apply: a synthetic row that read a real val/test image would be leakage); its ``classes.csv``
    must be ``data_dir``'s (``classes``)."""
    syn, syn_classes = load_data(syn_dir, synthetic=True)
    if syn_classes != classes:
        raise DataError(f"`{syn_dir}` and `{data_dir}` have different classes.csv")
    return syn


def counts_table(df: pd.DataFrame, classes: dict[int, str]) -> pd.DataFrame:
    """Images per class (rows) and split (columns), with totals; every class listed."""
    table = pd.crosstab(df["label"], df["split"]).reindex(index=sorted(classes), fill_value=0)
    table = table.reindex(columns=[s for s in SPLITS if s in table.columns] or list(SPLITS), fill_value=0)
    table["total"] = table.sum(axis=1)
    table.index = [f"{k} {classes[k]}" for k in table.index]
    table.loc["all"] = table.sum(axis=0)
    return table


def combine(parts: list[tuple[pd.DataFrame, str | Path]], out_dir: str | Path) -> pd.DataFrame:
    """Concatenate manifests (each with its own root) into one whose paths are relative to
    ``out_dir``. Rows without a ``source`` get ``source=real``; ids must stay unique."""
    out = Path(out_dir).resolve()
    frames = []
    for df, root in parts:
        df = df.copy()
        base = Path(root).resolve()
        for col in ("image", "mask"):
            df[col] = [os.path.relpath(base / p, out) if p else "" for p in df[col]]
        if "source" not in df.columns:
            df["source"] = "real"
        frames.append(df)
    merged = pd.concat(frames, ignore_index=True).fillna("")
    dup = merged["id"][merged["id"].duplicated()].tolist()
    if dup:
        raise DataError(f"combined manifest would hold id `{dup[0]}` twice")
    return merged
