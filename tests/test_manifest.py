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
from tests.conftest import forged_png


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


# ---- images that claim to be huge (decompression bombs) ---------------------------------------


def _bomb(path, width: int, height: int) -> None:
    path.write_bytes(forged_png(width, height))


# 20000 x 20000 is past PIL's error limit (2 x 89,478,485 px); 10000 x 10000 only past its warning limit
BOMBS = [(20000, 20000, "20000x20000 px (400,000,000 pixels)"), (10000, 10000, "10000x10000 px (100,000,000 pixels)")]


@pytest.mark.parametrize("width,height,claim", BOMBS)
def test_an_image_claiming_a_huge_size_is_a_data_error(tmp_path, width, height, claim):
    import re

    from augment.data.images import read_image, read_mask

    from augment.data.images import decode_image

    _bomb(tmp_path / "x.png", width, height)
    for read, what in ((read_image, "image"), (read_mask, "mask")):
        with pytest.raises(DataError, match=rf"^{what} `{re.escape(str(tmp_path / 'x.png'))}` claims {re.escape(claim)}, more than "
                                            r"the 89,478,485 pixels an image may have \(PIL's decompression-bomb limit\)"):
            read(tmp_path / "x.png")
    with pytest.raises(DataError, match=rf"^image `row 3 of the HF dataset` claims {re.escape(claim)}, more than"):
        decode_image((tmp_path / "x.png").read_bytes(), "row 3 of the HF dataset")
    with pytest.raises(DataError, match=r"^image `row 4` is not a readable image \(UnidentifiedImageError"):
        decode_image(b"not an image", "row 4")


@pytest.mark.parametrize("where", ["images", "masks"])
@pytest.mark.parametrize("width,height,claim", BOMBS)
def test_prepare_and_validate_refuse_a_decompression_bomb_in_one_line(tmp_path, capsys, where, width, height, claim):
    from augment.cli import main
    from tests.conftest import write_folder

    src = write_folder(tmp_path / "src", {0: 4, 1: 4})
    _bomb(src / where / "c1_002.png", width, height)
    assert main(["prepare", "--source", str(src), "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"c1_002: {where[:-1]} `" in err[0] and f"claims {claim}" in err[0], err
    assert not (tmp_path / "d").exists()

    src = write_folder(tmp_path / "src2", {0: 4, 1: 4})
    assert main(["prepare", "--source", str(src), "--out", str(tmp_path / "d2")]) == 0
    _bomb(src / where / "c1_002.png", width, height)  # referenced in place: validate re-reads it
    capsys.readouterr()
    assert main(["validate", str(tmp_path / "d2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"claims {claim}" in err[0], err


# ---- hostile prepare / validate inputs: one line, exit 2, nothing written ---------------------


def _labels(src, column: str, row: int, value: str) -> None:
    import pandas as pd

    table = pd.read_csv(src / "labels.csv", dtype=str)
    table.loc[row, column] = value
    table.to_csv(src / "labels.csv", index=False)


def _save(path, array, mode=None) -> None:
    Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)


def _empty_images(src) -> None:
    for p in (src / "images").iterdir():
        p.unlink()


def _empty_plain_folder(src) -> None:
    for p in [*(src / "images").iterdir(), *(src / "masks").iterdir(), src / "labels.csv", src / "classes.csv"]:
        p.unlink()


HOSTILE_SOURCES = {
    "unknown_label": (lambda s: _labels(s, "label", 0, "7"), "c0_000: label `7` is not listed in classes.csv (allowed: 0, 1)"),
    "fractional_label": (lambda s: _labels(s, "label", 1, "1.5"), "c0_001: label `1.5` is not listed in classes.csv"),
    "mask_of_another_size": (lambda s: _save(s / "masks" / "c1_000.png", np.zeros((5, 7), np.uint8)), "c1_000: mask `"),
    "grayscale_alpha_image": (lambda s: _save(s / "images" / "c0_002.png", np.zeros((12, 12, 2), np.uint8), "LA"), "has PIL mode LA"),
    "rgba_image": (lambda s: _save(s / "images" / "c0_002.png", np.zeros((12, 12, 4), np.uint8), "RGBA"), "has PIL mode RGBA"),
    "sixteen_bit_image": (lambda s: _save(s / "images" / "c0_003.png", np.full((12, 12), 4000, np.uint16)), "has PIL mode I;16"),
    "empty_images_folder": (_empty_images, "has 8 bad row(s): c0_000: image `"),
    "empty_plain_folder": (_empty_plain_folder, "holds no images"),
    "id_with_dotdot": (lambda s: _labels(s, "id", 0, "../x.png"), "../x.png: id `../x.png` is not a plain name"),
    "absolute_id": (lambda s: _labels(s, "id", 0, "/etc/passwd"), "/etc/passwd: id `/etc/passwd` is not a plain name"),
    "duplicated_id": (lambda s: _labels(s, "id", 1, "c0_000"), "c0_000: id `c0_000` appears 2 times in labels.csv"),
    "unknown_split": (lambda s: _labels(s, "split", 0, "Train"), "c0_000: split `Train` is not one of train, val, test"),
    "image_is_a_folder": (lambda s: [(s / "images" / "c1_001.png").unlink(), (s / "images" / "c1_001.png").mkdir()], "c1_001: image `"),
    "text_file_as_image": (lambda s: (s / "images" / "c1_003.png").write_text("not a png"), "c1_003: image `"),
    # one patient on both sides of the split the source gives: the leak `group` exists to prevent
    "group_across_splits": (lambda s: [_labels(s, "group", i, "patient_7") for i in range(8)],
                            "c0_000: group `patient_7` is in train, val and test"),
}


@pytest.mark.parametrize("case", list(HOSTILE_SOURCES))
def test_hostile_prepare_inputs_end_in_one_line_and_exit_2(tmp_path, capsys, case):
    from augment.cli import main
    from tests.conftest import write_folder

    src = write_folder(tmp_path / "src", {0: 4, 1: 4})
    mutate, needle = HOSTILE_SOURCES[case]
    mutate(src)
    assert main(["prepare", "--source", str(src), "--out", str(tmp_path / "d")]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("augment prepare: error: ") and needle in err[0], err
    assert "Traceback" not in captured.err and not (tmp_path / "d").exists()


def test_tiny_and_sixteen_bit_mask_sources_are_prepared_as_they_are(tmp_path, capsys):
    """Legal if odd: 1x1 images (each a different grey) and 16-bit masks holding class indices."""
    from augment.cli import main
    from tests.conftest import write_folder

    src = write_folder(tmp_path / "src", {0: 4, 1: 4})
    for i, p in enumerate(sorted((src / "images").iterdir())):
        _save(p, np.full((1, 1), 10 * i, np.uint8))
    for p in sorted((src / "masks").iterdir()):
        _save(p, np.full((1, 1), p.stem.startswith("c1"), np.uint16))
    assert main(["prepare", "--source", str(src), "--out", str(tmp_path / "d")]) == 0
    df, _ = load_data(tmp_path / "d", check_files=True)
    assert len(df) == 8
    assert main(["validate", str(tmp_path / "d")]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("case,edit,needle", [
    ("sixteen_bit_image", lambda d, df: _save(d / df["image"][0], np.full((16, 16), 4000, np.uint16)), "has PIL mode I;16"),
    ("grayscale_alpha_mask", lambda d, df: _save(d / df["mask"][1], np.zeros((16, 16, 2), np.uint8), "LA"), "has PIL mode LA"),
    ("mask_of_another_size", lambda d, df: _save(d / df["mask"][2], np.zeros((4, 4), np.uint8)), "is 4x4 but its image is 16x16"),
    ("missing_classes_file", lambda d, df: (d / "classes.csv").unlink(), "classes file `"),
    ("group_across_splits", lambda d, df: df.assign(group="one_patient").to_csv(d / "manifest.csv", index=False),
     "group `one_patient` is in train, val and test"),
])
def test_hostile_validate_inputs_end_in_one_line_and_exit_2(phantom_dir, tmp_path, capsys, case, edit, needle):
    from augment.cli import main

    d = _copy(phantom_dir, tmp_path)
    edit(d, read_manifest(d))
    assert main(["validate", str(d)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("augment validate: error: ") and needle in err[0], err
    assert "Traceback" not in captured.err
