"""Sources -> canonical manifest, and every kind of bad input: one clear error, no output left."""

from __future__ import annotations

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
from tests.conftest import write_folder


def _prepare(source, out, **kw) -> Path:
    return prepare(PrepareConfig(source=str(source), out=out, **kw))


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


def test_rgb_mask_rejected(folder, tmp_path):
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(folder / "masks" / "c1_000.png")
    _expect(tmp_path, folder, r"mask `.*c1_000.png` has PIL mode RGB")


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
    _prepare(folder, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "manifest.csv").is_file()
