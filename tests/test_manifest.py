"""The manifest validator reports every bad row by id."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from augment.data.manifest import (
    counts_table,
    load_data,
    manifest_problems,
    read_classes,
    read_manifest,
    validate_manifest,
)
from augment.errors import DataError


def _copy(phantom_dir, tmp_path):
    import shutil

    dst = tmp_path / "data"
    shutil.copytree(phantom_dir, dst)
    return dst


def test_valid_dataset_has_no_problems(phantom_dir):
    df, classes = load_data(phantom_dir)
    assert manifest_problems(df, phantom_dir, classes, check_files=True, check_hashes=True) == []


def test_every_bad_row_is_reported_by_id(phantom_dir, tmp_path):
    d = _copy(phantom_dir, tmp_path)
    df, classes = read_manifest(d), read_classes(d / "classes.csv")
    ids = df["id"].tolist()
    (d / df.loc[0, "image"]).unlink()
    df.loc[1, "label"] = 9
    df.loc[2, "split"] = "dev"
    df.loc[3, "group"] = ""
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(d / df.loc[4, "mask"])
    df.loc[5, "id"] = ids[6]
    (d / df.loc[7, "image"]).write_bytes(b"garbage")
    df.loc[8, "sha256"] = "0" * 64
    problems = dict(manifest_problems(df, d, classes, check_files=True, check_hashes=True))
    assert "does not exist" in problems[ids[0]]
    assert "label 9 is not in classes.csv (allowed: 0, 1, 2)" in problems[ids[1]]
    assert "split `dev` is not one of train, val, test" in problems[ids[2]]
    assert "group is empty" in problems[ids[3]]
    assert "is 5x5 but its image is 16x16" in problems[ids[4]]
    assert "appears 2 times" in problems[ids[6]]
    assert "is not a readable image" in problems[ids[7]]
    assert "does not match its sha256" in problems[ids[8]]
    with pytest.raises(DataError, match=r"has \d+ bad row\(s\)"):
        validate_manifest(df, d, classes, check_files=True, check_hashes=True)


def test_missing_columns_and_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.csv").write_text("id,image,label\na,a.png,0\n")
    with pytest.raises(DataError, match=r"lacks columns mask, split, group, sha256"):
        read_manifest(tmp_path)


def test_classes_file_errors(tmp_path):
    (tmp_path / "classes.csv").write_text("label,name\n0,a\n0,b\n")
    with pytest.raises(DataError, match="label 0 is listed twice"):
        read_classes(tmp_path / "classes.csv")
    (tmp_path / "classes.csv").write_text("id,name\n0,a\n")
    with pytest.raises(DataError, match="must have columns label,name"):
        read_classes(tmp_path / "classes.csv")


def test_counts_table(phantom_dir):
    df, classes = load_data(phantom_dir)
    table = counts_table(df, classes)
    assert list(table.columns) == ["train", "val", "test", "total"]
    assert table.loc["all", "total"] == len(df)
    assert table.loc["2 irregular", "total"] == (df["label"] == 2).sum()
