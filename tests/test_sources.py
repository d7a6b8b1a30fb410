"""Sources -> canonical manifest, and every kind of bad input: one clear error, no output left."""

from __future__ import annotations

import json
import shutil
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from augment.api import prepare
from augment.config import PrepareConfig
from augment.data.images import read_image, read_mask, sha256_file
from augment.data.manifest import load_data, read_manifest
from augment.errors import ConfigError, DataError
from tests.conftest import run_cli, write_folder


def _prepare(source, out, **kw) -> Path:
    return prepare(PrepareConfig(source=str(source), out=out, **kw)).out


def test_phantom_source_writes_valid_manifest(phantom_dir):
    df, classes = load_data(phantom_dir, check_files=True)
    assert list(df.columns[:7]) == ["id", "image", "mask", "label", "split", "group", "sha256"]
    assert classes == {0: "normal", 1: "round", 2: "irregular"}
    assert len(df) == 60 and set(df["split"]) == {"train", "val", "test"}
    assert set(df["label"]) == {0, 1, 2}
    row = df.iloc[0]
    assert read_image(phantom_dir / row["image"]).shape == (16, 16)
    assert sha256_file(phantom_dir / row["image"]) == row["sha256"]
    for r in df.itertuples():
        empty = read_mask(phantom_dir / r.mask).max() == 0
        assert empty == (r.label == 0)


def test_phantom_is_deterministic_and_rgb_option(tmp_path):
    a = _prepare("phantom", tmp_path / "a", count=12, image_size=16, seed=5)
    b = _prepare("phantom", tmp_path / "b", count=12, image_size=16, seed=5)
    c = _prepare("phantom", tmp_path / "c", count=12, image_size=16, seed=6, rgb=True)
    ma, mb = read_manifest(a), read_manifest(b)
    pd.testing.assert_frame_equal(ma, mb)
    assert read_image(c / read_manifest(c)["image"][0]).shape == (16, 16, 3)
    assert not read_manifest(c)["sha256"].equals(ma["sha256"])


def test_folder_source_in_place_and_resized(folder, tmp_path):
    out = _prepare(folder, tmp_path / "same")
    df = read_manifest(out)
    # No conversion needed: files are referenced in place, by paths relative to the manifest.
    assert (out / df["image"][0]).resolve() == (folder / "images" / f"{df['id'][0]}.png").resolve()
    assert list(df["split"]) == list(pd.read_csv(folder / "labels.csv")["split"])

    out = _prepare(folder, tmp_path / "big", image_size=24)
    df = read_manifest(out)
    assert df["image"][0] == f"images/{df['id'][0]}.png"
    mask = read_mask(out / df["mask"][df["label"] == 1].iloc[0])
    assert mask.shape == (24, 24) and set(np.unique(mask)) == {0, 1}  # nearest: no blended values


def test_folder_rgb_and_generated_split_with_groups(tmp_path):
    groups = {f"c1_{i:03d}": "patientA" for i in range(4)}
    src = write_folder(tmp_path / "src", {0: 10, 1: 10}, rgb=True, split=False, groups=groups)
    df = read_manifest(_prepare(src, tmp_path / "out", seed=1))
    assert df.loc[df["group"] == "patientA", "split"].nunique() == 1
    assert set(df["split"]) == {"train", "val", "test"}
    assert read_image(tmp_path / "out" / df["image"][0]).shape == (12, 12, 3)


def test_npz_source(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 10), ("val", 3), ("test", 4)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 3).reshape(-1, 1)
    np.savez(tmp_path / "x.npz", **arrays)
    out = _prepare(tmp_path / "x.npz", tmp_path / "out", image_size=16)
    df, classes = load_data(out, check_files=True)
    assert classes == {0: "0", 1: "1", 2: "2"}
    assert df["split"].value_counts().to_dict() == {"train": 10, "test": 4, "val": 3}
    assert (df["mask"] == "").all()
    assert read_image(out / df["image"][0]).shape == (16, 16, 3)
    first = read_image(out / df["image"][0])
    resized = np.asarray(Image.fromarray(arrays["train_images"][0]).resize((16, 16), Image.BILINEAR))
    np.testing.assert_array_equal(first, resized)


# ---- bad input: each gets a clear error naming the culprit, and leaves no output behind ----


def _expect(tmp_path, source, match, exc=DataError, **kw):
    out = tmp_path / "out"
    with pytest.raises(exc, match=match):
        _prepare(source, out, **kw)
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".out.partial")]


def test_missing_image(folder, tmp_path):
    (folder / "images" / "c1_002.png").unlink()
    _expect(tmp_path, folder, r"c1_002: image `.*c1_002.png` does not exist")


def test_missing_mask(folder, tmp_path):
    (folder / "masks" / "c2_000.png").unlink()
    _expect(tmp_path, folder, r"c2_000: mask `.*c2_000.png` does not exist")


def test_corrupt_png(folder, tmp_path):
    (folder / "images" / "c0_001.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    _expect(tmp_path, folder, r"c0_001: image `.*c0_001.png` is not a readable image")


def test_truncated_png(folder, tmp_path):
    p = folder / "masks" / "c1_001.png"
    p.write_bytes(p.read_bytes()[:40])
    _expect(tmp_path, folder, r"c1_001: mask `.*` is not a readable image")


def test_mask_size_mismatch(folder, tmp_path):
    Image.fromarray(np.zeros((6, 6), np.uint8)).save(folder / "masks" / "c1_003.png")
    _expect(tmp_path, folder, r"c1_003: mask `.*` is 6x6 but its image is 12x12")


def test_every_bad_row_is_reported(folder, tmp_path):
    (folder / "images" / "c0_000.png").unlink()
    (folder / "masks" / "c2_003.png").unlink()
    _expect(tmp_path, folder, r"2 bad row\(s\): c0_000: .*; c2_003: ")


@pytest.mark.parametrize("values", [(0, 255), (0, 40)])
def test_mask_values_not_class_indices(folder, tmp_path, values):
    m = np.zeros((12, 12), np.uint8)
    m[:3] = values[1]
    Image.fromarray(m).save(folder / "masks" / "c1_000.png")
    _expect(tmp_path, folder, rf"mask `.*c1_000.png` has values 0..{values[1]}; masks must be class indices")


def test_binary_masks_option_maps_255_to_1(folder, tmp_path):
    m = np.zeros((12, 12), np.uint8)
    m[:3] = 255
    Image.fromarray(m).save(folder / "masks" / "c1_000.png")
    out = _prepare(folder, tmp_path / "out", binary_masks=True)
    df = read_manifest(out)
    mask = read_mask(out / df.loc[df["id"] == "c1_000", "mask"].iloc[0])
    assert set(np.unique(mask)) == {0, 1} and mask[:3].all()


def test_rgb_mask_with_equal_channels_is_grayscale_and_other_rgb_is_rejected(folder, tmp_path):
    m = np.zeros((12, 12, 3), np.uint8)
    m[2:5, 2:5] = 1
    Image.fromarray(m).save(folder / "masks" / "c1_000.png")
    out = _prepare(folder, tmp_path / "ok")
    df = read_manifest(out)
    np.testing.assert_array_equal(read_mask(out / df.loc[df["id"] == "c1_000", "mask"].iloc[0]), m[..., 0])
    m[0, 0] = (0, 1, 0)
    Image.fromarray(m).save(folder / "masks" / "c1_000.png")
    _expect(tmp_path, folder, r"mask `.*c1_000.png` is RGB with channels that differ; masks must be single-channel")


def test_mask_mode_rejected(folder, tmp_path):
    Image.fromarray(np.zeros((12, 12, 4), np.uint8)).save(folder / "masks" / "c1_000.png")
    _expect(tmp_path, folder, r"mask `.*c1_000.png` has PIL mode RGBA; masks must be single-channel")


def test_unsupported_image_mode(folder, tmp_path):
    Image.fromarray(np.zeros((12, 12, 4), np.uint8)).save(folder / "images" / "c1_000.png")
    _expect(tmp_path, folder, r"image `.*c1_000.png` has PIL mode RGBA; allowed: 8-bit grayscale \(L\) or RGB")


def test_unknown_label(folder, tmp_path):
    labels = pd.read_csv(folder / "labels.csv")
    labels.loc[3, "label"] = 7
    labels.to_csv(folder / "labels.csv", index=False)
    _expect(tmp_path, folder, r"c0_003: label `7` is not listed in classes.csv \(allowed: 0, 1, 2\)")


def test_duplicate_ids(folder, tmp_path):
    labels = pd.read_csv(folder / "labels.csv")
    pd.concat([labels, labels.iloc[[5]]]).to_csv(folder / "labels.csv", index=False)
    _expect(tmp_path, folder, r"c1_001: id `c1_001` appears 2 times")


def test_unknown_split_value(folder, tmp_path):
    labels = pd.read_csv(folder / "labels.csv")
    labels.loc[0, "split"] = "holdout"
    labels.to_csv(folder / "labels.csv", index=False)
    _expect(tmp_path, folder, r"split `holdout` is not one of train, val, test")


def test_images_of_different_sizes_need_image_size(folder, tmp_path):
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(folder / "images" / "c0_000.png")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(folder / "masks" / "c0_000.png")
    _expect(tmp_path, folder, r"images of different sizes .*pass --image-size N")
    out = _prepare(folder, tmp_path / "ok", image_size=16)
    assert read_image(out / read_manifest(out)["image"][0]).shape == (16, 16)


def test_missing_classes_csv(folder, tmp_path):
    (folder / "classes.csv").unlink()
    _expect(tmp_path, folder, r"classes file `.*classes.csv` does not exist")


def test_npz_without_expected_keys(tmp_path):
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 8, 8), np.uint8), train_labels=np.zeros((2, 1)))
    _expect(tmp_path, tmp_path / "bad.npz", r"npz `.*bad.npz` lacks key\(s\) train_images, val_images")


def test_npz_length_mismatch(tmp_path):
    arrays = {f"{s}_images": np.zeros((3, 8, 8), np.uint8) for s in ("train", "val", "test")}
    arrays.update({f"{s}_labels": np.zeros((3, 1), np.int64) for s in ("train", "val", "test")})
    arrays["val_labels"] = np.zeros((2, 1), np.int64)
    np.savez(tmp_path / "bad.npz", **arrays)
    _expect(tmp_path, tmp_path / "bad.npz", r"val_images has 3 items but val_labels has 2")


def test_corrupt_npz(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    _expect(tmp_path, tmp_path / "bad.npz", r"npz `.*bad.npz` is not a readable .npz file")


def test_missing_source(tmp_path):
    _expect(tmp_path, tmp_path / "nowhere", r"source `.*nowhere` does not exist \(allowed: phantom")


def test_phantom_only_options_rejected_for_other_sources(folder, tmp_path):
    _expect(tmp_path, folder, r"count apply only to --source phantom", exc=ConfigError, count=10)


def test_bad_phantom_priors(tmp_path):
    _expect(tmp_path, "phantom", r"phantom: .*priors", exc=ConfigError, priors=[1.0, -1.0, 0.5])


def test_existing_output_is_not_clobbered(folder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match=r"output `.*out` already exists and is not empty; .*--overwrite"):
        _prepare(folder, out)
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(DataError, match=r"was not made by `augment prepare`.*replaces only a previous output of the same verb"):
        _prepare(folder, out, overwrite=True)  # the user's own folder: --overwrite never deletes it
    assert (out / "keep.txt").read_text() == "mine"
    shutil.rmtree(out)
    _prepare(folder, out)
    (out / "keep.txt").write_text("stale")
    _prepare(folder, out, overwrite=True)  # a previous prepare output is replaced whole
    assert not (out / "keep.txt").exists() and (out / "manifest.csv").is_file()


# ---- plain segmentation folders: images/ + masks/ only, one class ----


def write_plain(root: Path, n: int = 10, size: int = 16, ext: str = ".png", mask_ext: str = ".png",
                mask_suffix: str = "", quality: int = 90) -> dict[str, np.ndarray]:
    """images/<id><ext> and masks/<id><mask_suffix><mask_ext> (0/255, a lesion on odd ids);
    returns the 0/1 mask of every id."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    truth = {}
    for i in range(n):
        rid = f"case_{i:02d}"
        m = np.zeros((size, size), np.uint8)
        if i % 2:
            m[3:3 + size // 2, 4:4 + size // 2] = 1
        truth[rid] = m
        opts = {"quality": quality} if ext == ".jpg" else {}
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(root / "images" / f"{rid}{ext}", **opts)
        opts = {"quality": quality} if mask_ext == ".jpg" else {}
        Image.fromarray(m * 255).save(root / "masks" / f"{rid}{mask_suffix}{mask_ext}", **opts)
    return truth


def _masks(out: Path) -> dict[str, np.ndarray]:
    df = read_manifest(out)
    return {r.id: read_mask(out / r.mask) for r in df.itertuples()}


def test_plain_folder_is_one_class_split_here(tmp_path):
    truth = write_plain(tmp_path / "src")
    out = _prepare(tmp_path / "src", tmp_path / "out", binary_masks=True)
    df, classes = load_data(out, check_files=True)
    assert classes == {0: "lesion"} and set(df["label"]) == {0}
    assert set(df["split"]) == {"train", "val", "test"} and sorted(df["id"]) == sorted(truth)
    assert json.loads((out / "run.json").read_text())["split_from"] == "stratified_group_split"
    for rid, mask in _masks(out).items():
        np.testing.assert_array_equal(mask, truth[rid])
    renamed = _prepare(tmp_path / "src", tmp_path / "renamed", binary_masks=True, class_name="tumour")
    assert load_data(renamed)[1] == {0: "tumour"}


def test_plain_folder_jpeg_masks_need_a_threshold(tmp_path):
    truth = write_plain(tmp_path / "src", ext=".jpg", mask_ext=".jpg", mask_suffix="_mask")
    noisy = np.asarray(Image.open(tmp_path / "src" / "masks" / "case_01_mask.jpg"))
    assert len(np.unique(noisy)) > 2  # the premise: compression noise around 0 and 255
    _expect(tmp_path, tmp_path / "src", r"mask `.*_mask.jpg` has values 0\.\.2\d\d; masks must be class indices "
            r"0\.\.31 \(0 = background\); it has \d+ distinct values, .*use --set mask_threshold=128")
    out = _prepare(tmp_path / "src", tmp_path / "out", mask_threshold=128)
    df = read_manifest(out)
    assert all(p.startswith("images/") and p.endswith(".png") for p in df["image"])  # JPEG images become PNG
    np.testing.assert_array_equal(read_image(out / df["image"][0]), np.asarray(Image.open(tmp_path / "src" / "images" / f"{df['id'][0]}.jpg")))
    for rid, mask in _masks(out).items():
        np.testing.assert_array_equal(mask, truth[rid])


def test_mask_threshold_that_empties_every_mask(tmp_path):
    write_plain(tmp_path / "src", n=4)
    for p in (tmp_path / "src" / "masks").iterdir():
        Image.fromarray(np.asarray(Image.open(p)) // 255).save(p)  # 0/1 class indices
    _expect(tmp_path, tmp_path / "src", r"mask_threshold=128 leaves every mask empty \(no mask pixel is >= 128\)", mask_threshold=128)


@pytest.mark.parametrize("drop,extra,match", [
    ("masks/case_03.png", [], r"1 image\(s\) have no mask: `images/case_03.png` \(images and masks are paired by file stem"),
    ("images/case_04.png", [], r"1 mask\(s\) have no image: `masks/case_04.png`"),
    (None, [f"masks/zz_{i}.png" for i in range(7)], r"7 mask\(s\) have no image: `masks/zz_0.png`, .* and 2 more"),
])
def test_plain_folder_orphans(tmp_path, drop, extra, match):
    write_plain(tmp_path / "src")
    if drop:
        (tmp_path / "src" / drop).unlink()
    for name in extra:
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "src" / name)
    _expect(tmp_path, tmp_path / "src", match)


@pytest.mark.parametrize("name,match", [
    ("notes.txt", r"has 1 non-image entry: `images/notes.txt` \(allowed: .png, .jpg"),
    ("case_00.jpg", r"case_00: image of `case_00` is ambiguous: `.*case_00.jpg`, `.*case_00.png`; keep one"),
])
def test_plain_folder_stray_and_ambiguous_files(tmp_path, name, match):
    write_plain(tmp_path / "src")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "src" / "images" / name, format="PNG")
    (tmp_path / "src" / ".DS_Store").write_bytes(b"\0")  # hidden files are skipped
    _expect(tmp_path, tmp_path / "src", match, binary_masks=True)


def test_folder_without_labels_needs_masks(tmp_path):
    write_plain(tmp_path / "src")
    for p in (tmp_path / "src" / "masks").iterdir():
        p.unlink()
    (tmp_path / "src" / "masks").rmdir()
    _expect(tmp_path, tmp_path / "src", r"has images/ but no labels.csv; either add labels.csv")


def test_class_name_needs_a_plain_folder(folder, tmp_path):
    _expect(tmp_path, folder, r"option class_name applies only to a folder without labels.csv; `.*src` has one",
            exc=ConfigError, class_name="tumour")
    _expect(tmp_path, "phantom", r"option class_name applies only to a plain folder", exc=ConfigError, class_name="x")


def test_mask_options_that_do_not_apply(folder, tmp_path):
    _expect(tmp_path, "phantom", r"option mask_threshold applies only to sources with masks", exc=ConfigError, mask_threshold=128)
    no_masks = write_folder(tmp_path / "no_masks", {0: 2, 1: 2}, masks=False)
    _expect(tmp_path, no_masks, r"mask_threshold applies only to sources with masks .* not to `.*no_masks`", exc=ConfigError, mask_threshold=9)
    _expect(tmp_path, folder, r"binary_masks and mask_threshold both binarise masks; set only one", exc=ConfigError,
            mask_threshold=128, binary_masks=True)


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", "a b", "x\\y"])
def test_ids_must_be_plain_names(folder, tmp_path, bad):
    labels = pd.read_csv(folder / "labels.csv")
    labels.loc[0, "id"] = bad
    labels.to_csv(folder / "labels.csv", index=False)
    before = _files(tmp_path)
    _expect(tmp_path, folder, rf"{re.escape(bad)}: id `{re.escape(bad)}` is not a plain name \(allowed: letters, digits, `_`, `-` and `.`, "
            r"not starting with `.`\)", image_size=16)
    assert _files(tmp_path) == before  # nothing written anywhere, inside or outside the output


def test_plain_folder_file_names_must_be_plain_ids(tmp_path):
    write_plain(tmp_path / "src", n=4)
    for sub in ("images", "masks"):
        (tmp_path / "src" / sub / "case_00.png").rename(tmp_path / "src" / sub / "case (0).png")
    _expect(tmp_path, tmp_path / "src", r"1 image name\(s\) are not plain ids: `case \(0\)` \(allowed: letters")


def test_hf_ids_must_be_plain_names(tmp_path):
    import datasets

    datasets.Dataset.from_dict(
        {"id": ["ok", "../../escape"], "image": [np.zeros((8, 8), np.uint8)] * 2, "label": [0, 1]},
        features=datasets.Features({"id": datasets.Value("string"), "image": datasets.Image(), "label": datasets.Value("int64")}),
    ).save_to_disk(str(tmp_path / "hf"))
    before = _files(tmp_path)
    _expect(tmp_path, tmp_path / "hf", r"\.\./\.\./escape: id `\.\./\.\./escape` is not a plain name")
    assert _files(tmp_path) == before


def test_manifest_with_a_path_as_id_is_invalid(phantom_dir):
    from augment.data.manifest import manifest_problems, read_classes

    df = read_manifest(phantom_dir)
    df.loc[0, "id"] = "../../etc/x"
    problems = manifest_problems(df, phantom_dir, read_classes(phantom_dir / "classes.csv"), check_files=False)
    assert problems == [("../../etc/x", "id `../../etc/x` is not a plain name (allowed: letters, digits, `_`, `-` and `.`, not starting with `.`)")]


def test_cli_prepares_a_plain_folder(tmp_path, capsys):
    from augment.cli import main

    write_plain(tmp_path / "src", n=8, mask_ext=".jpg", quality=95)
    res = run_cli("prepare", "--source", tmp_path / "src", "--out", tmp_path / "out", "--set", "mask_threshold=128")
    assert res.returncode == 0, res.stderr
    assert "0 lesion" in res.stdout and "(8 images)" in res.stdout
    assert main(["prepare", "--source", str(tmp_path / "src"), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "mask_threshold=128" in err and not (tmp_path / "bad").exists()


# ---- mask values are bounded by the number of classes ----


@pytest.mark.parametrize("value,ok", [(3, True), (4, False)])
def test_folder_mask_values_above_the_class_count(folder, tmp_path, value, ok):
    m = np.zeros((12, 12), np.uint8)
    m[:3] = value
    Image.fromarray(m).save(folder / "masks" / "c1_000.png")
    if ok:
        load_data(_prepare(folder, tmp_path / "out"), check_files=True)
    else:
        _expect(tmp_path, folder, rf"c1_000: mask `.*c1_000.png` has value {value}; with 3 class\(es\) in classes.csv "
                r"masks hold 0\.\.3 \(0 = background\)")


def test_plain_folder_masks_are_binary(tmp_path):
    write_plain(tmp_path / "src", n=6)
    for p in (tmp_path / "src" / "masks").iterdir():
        Image.fromarray((np.asarray(Image.open(p)) > 0).astype(np.uint8) * 2).save(p)
    _expect(tmp_path, tmp_path / "src", r"mask `.*` has value 2; with 1 class\(es\) in classes.csv masks hold 0\.\.1")


def test_hf_mask_values_above_the_class_count(tmp_path):
    import datasets

    masks = [np.zeros((8, 8), np.uint8), np.full((8, 8), 5, np.uint8)]
    datasets.Dataset.from_dict(
        {"id": ["a", "b"], "image": [np.zeros((8, 8), np.uint8)] * 2, "mask": masks, "label": [0, 1]},
        features=datasets.Features({"id": datasets.Value("string"), "image": datasets.Image(), "mask": datasets.Image(),
                                    "label": datasets.ClassLabel(names=["x", "y"])}),
    ).save_to_disk(str(tmp_path / "hf"))
    _expect(tmp_path, tmp_path / "hf", r"b: mask in column `mask` has value 5; with 2 class\(es\) in classes.csv masks hold 0\.\.2")

