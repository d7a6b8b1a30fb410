"""``augment export`` and the training manifest: a prepared dataset or synthetic set written
back out (a Hugging Face dataset, or a folder in the BUSI layout), and one manifest joining a
synthetic set with the real rows its generator was trained on, for any downstream trainer."""

from __future__ import annotations

import shutil
from pathlib import Path

from augment.data.manifest import CLASSES, COLUMNS, MANIFEST, combine, load_data, load_synthetic, write_classes, write_manifest
from augment.errors import ConfigError
from augment.lock import locked
from augment.output import StageResult, building


def training_manifest(data_dir: str | Path, synthetic_dir: str | Path, out_dir: str | Path) -> Path:
    """One training manifest for any downstream trainer: the real rows the synthetic set's
    generator was trained on (rows keep ``source=real``) plus the synthetic set (with its
    provenance), paths relative to ``out_dir``."""
    from augment.data.guard import check_trained_on
    from augment.runs import read_run
    from augment.runs import read_synthetic_record

    real, classes = load_data(data_dir)
    syn = load_synthetic(synthetic_dir, data_dir, classes)
    record = read_synthetic_record(synthetic_dir, syn)
    check_trained_on(record["generator_trained_on_sha256"], real, Path(data_dir), f"`{synthetic_dir}`")
    rows = read_run(record["generator_run"]).rows
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merged = combine([(real[real["id"].isin(rows["id"])], data_dir), (syn, synthetic_dir)], out)
    write_manifest(merged, out / MANIFEST)
    write_classes(classes, out / CLASSES)
    return out


def export_folder(data_dir: str | Path, out: str | Path) -> Path:
    """Copy a dataset or synthetic set into the BUSI folder layout (images/, masks/,
    labels.csv with id,label,split,group and any provenance columns, classes.csv)."""
    df, classes = load_data(data_dir, check_files=True)
    out = Path(out)
    with building(out, overwrite=False, verb="export") as tmp:
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
    return out


@locked(lambda data_dir, out, *_, **__: out, "export")
def export(data_dir: str | Path, out: str | Path, format: str = "hf") -> StageResult:
    """``augment export``: a dataset or synthetic set as a saved HF dataset (``hf``) or a folder
    in the BUSI layout (``folder``, see :func:`export_folder`)."""
    from augment.data.hf import save_hf

    out = Path(out)
    if out.exists():
        raise ConfigError(f"output `{out}` already exists; choose another --out")
    if format == "hf":
        save_hf(data_dir, out)
        return StageResult(out, {}, f"wrote Hugging Face dataset {out}")
    export_folder(data_dir, out)
    return StageResult(out, {}, f"wrote folder {out} (images/, masks/, labels.csv, classes.csv)")
