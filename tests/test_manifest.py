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


# ---- paths outside the folder: recorded references only --------------------------------------


def test_write_manifest_records_outside_references(phantom_dir, tmp_path):
    from augment.data.images import sha256_file
    from augment.data.manifest import REFERENCES, combine, read_references, write_classes, write_manifest

    df, classes = load_data(phantom_dir)
    out = tmp_path / "combined"
    out.mkdir()
    merged = combine([(df.head(4), phantom_dir)], out)
    write_manifest(merged, out / "manifest.csv")
    write_classes(classes, out / "classes.csv")
    refs = read_references(out)
    assert sorted(refs) == sorted([*merged["image"], *merged["mask"]]) and all(p.startswith("../") for p in refs)
    assert refs[merged["image"][0]] == sha256_file(phantom_dir / df["image"][0])
    assert len(load_data(out, check_files=True)[0]) == 4
    # a manifest whose paths all stay inside its folder needs (and keeps) no record
    (out / "images").mkdir()
    (out / "images" / "a.png").write_bytes((phantom_dir / df["image"][0]).read_bytes())
    write_manifest(merged.head(1).assign(image="images/a.png", mask=""), out / "manifest.csv")
    assert not (out / REFERENCES).exists()


def test_outside_reference_to_a_missing_file_is_not_recorded(phantom_dir, tmp_path):
    from augment.data.manifest import write_manifest

    df = read_manifest(phantom_dir).head(2)
    df.loc[0, "image"] = "../nowhere.png"
    with pytest.raises(DataError, match=r"manifest path `\.\./nowhere\.png` \(relative to `.*`\) does not exist"):
        write_manifest(df, tmp_path / "d" / "manifest.csv")
    assert not (tmp_path / "d" / "manifest.csv").exists()


def test_unreadable_references_file(phantom_dir, tmp_path):
    d = _copy(phantom_dir, tmp_path)
    (d / "references.json").write_text("{not json")
    with pytest.raises(DataError, match=r"references file `.*references.json` is not readable JSON"):
        load_data(d)
    (d / "references.json").write_text('{"references": ["a"]}')
    with pytest.raises(DataError, match=r"has no `references` object of path -> sha256"):
        load_data(d)


# ---- mask values: 0..K for K classes ---------------------------------------------------------


@pytest.mark.parametrize("value,ok", [(3, True), (4, False), (31, False)])
def test_mask_values_are_bounded_by_the_class_count(phantom_dir, tmp_path, value, ok):
    d = _copy(phantom_dir, tmp_path)
    df, classes = load_data(d)
    Image.fromarray(np.full((16, 16), value, np.uint8)).save(d / df["mask"][2])
    problems = dict(manifest_problems(df, d, classes, check_files=True))
    if ok:
        assert problems == {}
    else:
        assert problems == {df["id"][2]: f"mask `{df['mask'][2]}` has value {value}; with 3 class(es) in classes.csv "
                                         "masks hold 0..3 (0 = background)"}


def test_pixel_sha256_ignores_encoding_but_not_pixels(tmp_path):
    from augment.data.images import pixel_sha256, read_image, sha256_file

    a = np.arange(64, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(a).save(tmp_path / "b.png", compress_level=0)
    assert sha256_file(tmp_path / "a.png") != sha256_file(tmp_path / "b.png")
    assert pixel_sha256(read_image(tmp_path / "a.png")) == pixel_sha256(read_image(tmp_path / "b.png"))
    assert pixel_sha256(a) != pixel_sha256(a.reshape(4, 16)) != pixel_sha256(a.T)
