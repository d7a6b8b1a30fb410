"""Export of any manifest to a Hugging Face ``datasets.Dataset`` (and back via ``prepare``).

Features: ``id``, ``image`` (Image), ``mask`` (Image, when the manifest has masks), ``label``
(ClassLabel with the class names), ``split``, ``group``, ``sha256``, plus any extra manifest
columns (e.g. synthetic provenance) as strings. A dataset saved with ``save_to_disk`` is a valid
``augment prepare --source`` and comes back with the same pixels, labels, splits and groups.
"""

from __future__ import annotations

from pathlib import Path

import datasets
import pandas as pd

from augment.data.manifest import COLUMNS


def to_hf_dataset(manifest: pd.DataFrame, root: str | Path, classes: dict[int, str]) -> datasets.Dataset:
    root = Path(root)
    n_classes = max(classes) + 1
    # ClassLabel needs names for 0..max; gaps (never in our own sources) get their index as name.
    names = [classes.get(k, str(k)) for k in range(n_classes)]
    has_mask = bool((manifest["mask"] != "").all())
    extra = [c for c in manifest.columns if c not in COLUMNS]
    columns: dict[str, list] = {
        "id": manifest["id"].tolist(),
        "image": [_png(root / p) for p in manifest["image"]],
        "label": [int(v) for v in manifest["label"]],
        "split": manifest["split"].tolist(),
        "group": manifest["group"].tolist(),
        "sha256": manifest["sha256"].tolist(),
    }
    spec = {
        "id": datasets.Value("string"),
        "image": datasets.Image(),
        "label": datasets.ClassLabel(names=names),
        "split": datasets.Value("string"),
        "group": datasets.Value("string"),
        "sha256": datasets.Value("string"),
    }
    if has_mask:
        columns["mask"] = [_png(root / p) for p in manifest["mask"]]
        spec["mask"] = datasets.Image()
    for col in extra:
        columns[col] = manifest[col].astype(str).tolist()
        spec[col] = datasets.Value("string")
    return datasets.Dataset.from_dict(columns, features=datasets.Features(spec))


def _png(path: Path) -> dict:
    # The PNG bytes themselves, so the dataset never points back at our files.
    return {"bytes": path.read_bytes(), "path": None}


def save_hf(data_dir: str | Path, out: str | Path) -> Path:
    """Export a prepared (or synthetic) dataset folder with ``save_to_disk``."""
    from augment.data.manifest import load_data

    df, classes = load_data(data_dir, check_files=True)
    to_hf_dataset(df, data_dir, classes).save_to_disk(str(out))
    return Path(out)
