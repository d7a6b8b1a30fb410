"""Near-copies of val/test images among train images (a JPEG re-save, a flip, a one-pixel shift)
are refused by ``prepare``, or accepted knowingly and recorded; distinct images are never flagged."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from augment.cli import main
from augment.data import phantom
from augment.data.guard import NEAR_DUPLICATE_SSIM, check_near_duplicates
from augment.errors import DataError
from tests.conftest import write_folder


def _jpeg(a: np.ndarray, quality: int = 95) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf))


def _shifted(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """The picture moved by (dy, dx) px; the uncovered border repeats the edge (as an editor's
    canvas shift would leave it), nothing wraps around."""
    p = np.pad(a, ((abs(dy),) * 2, (abs(dx),) * 2) + ((0, 0),) * (a.ndim - 2), mode="edge")
    h, w = a.shape[:2]
    return p[abs(dy) - dy:abs(dy) - dy + h, abs(dx) - dx:abs(dx) - dx + w].copy()


COPIES = {
    "jpeg_q95": _jpeg,
    "flipped_horizontally": lambda a: a[:, ::-1].copy(),
    "flipped_vertically": lambda a: a[::-1].copy(),
    "shifted_1px_x": lambda a: _shifted(a, 0, 1),
    "shifted_1px_y": lambda a: _shifted(a, -1, 0),
    "shifted_2px": lambda a: _shifted(a, 2, -2),
    "flipped_shifted_and_jpeg": lambda a: _jpeg(_shifted(a[:, ::-1].copy(), 1, 1)),
}


def _phantoms(n: int, size: int, rgb: bool = False, seed: int = 0) -> list[np.ndarray]:
    return [image for image, _, _ in phantom.phantom_pairs(n, size, seed=seed, rgb=rgb)]


@pytest.mark.parametrize("size,rgb", [(16, False), (32, True), (64, False)])
@pytest.mark.parametrize("copy", list(COPIES))
def test_a_near_copy_of_a_heldout_image_is_found(copy, size, rgb):
    images = _phantoms(8, size, rgb)
    train = [("copy", COPIES[copy](images[0]))] + [(f"train_{i}", a) for i, a in enumerate(images[1:5], 1)]
    heldout = {"val": [("val_5", images[5])], "test": [("test_0", images[0]), ("test_6", images[6])]}
    hits = check_near_duplicates(train, heldout, "train", allow=True)
    assert [(h["candidate"], h["heldout"], h["split"]) for h in hits] == [("copy", "test_0", "test")]
    assert hits[0]["score"] >= NEAR_DUPLICATE_SSIM
    if copy.startswith("flipped_h"):
        assert hits[0]["view"] == "flipped horizontally"


@pytest.mark.parametrize("size,rgb,seed", [(8, False, 1), (16, False, 2), (32, False, 3), (64, False, 4), (64, True, 5)])
def test_distinct_phantom_images_are_not_near_duplicates(size, rgb, seed):
    images = _phantoms(90, size, rgb, seed)
    train = [(f"t{i}", a) for i, a in enumerate(images[:60])]
    assert check_near_duplicates(train, {"test": [(f"h{i}", a) for i, a in enumerate(images[60:])]}, "train", allow=False) == []


def test_refusal_names_the_pair_the_score_the_threshold_and_the_view():
    images = _phantoms(4, 32)
    train = [("images/x.png", images[0][::-1].copy()), ("images/z.png", images[1])]
    msg = (r"^1 near-duplicate pair\(s\) across splits: train image `images/x.png` is a near-duplicate of test image "
           rf"`images/y.png` \(score 1\.000 >= {NEAR_DUPLICATE_SSIM}, flipped vertically\); score = SSIM of 32x32 grayscale "
           r"thumbnails .*accept these pairs knowingly with `allow_near_duplicates=true`\)$")
    with pytest.raises(DataError, match=msg):
        check_near_duplicates(train, {"val": [("images/w.png", images[2])], "test": [("images/y.png", images[0])]}, "train", allow=False)


def test_plain_arrays_with_ids_and_lazy_iterables():
    images = np.stack(_phantoms(6, 24))
    copies = np.stack([_jpeg(images[4]), images[1]])
    hits = check_near_duplicates(zip(["s0", "s1"], copies), {"test": zip(["a", "b", "c"], images[3:6])}, "synthetic", allow=True)
    assert [(h["candidate"], h["heldout"]) for h in hits] == [("s0", "b")]
    with pytest.raises(DataError, match="synthetic image `s0` is a near-duplicate of test image `b`.* knowingly with --allow"):
        check_near_duplicates(zip(["s0"], copies[:1]), {"test": zip(["b"], images[4:5])}, "synthetic", allow=False, switch="--allow")


def test_blank_images_and_empty_sides_give_no_pairs():
    grey = np.full((16, 16), 90, np.uint8)
    assert check_near_duplicates([("a", grey)], {"test": [("b", grey.copy())]}, "train", allow=False) == []
    assert check_near_duplicates([("a", _phantoms(1, 16)[0])], {"val": [], "test": []}, "train", allow=False) == []
    assert check_near_duplicates([], {"test": [("b", _phantoms(1, 16)[0])]}, "train", allow=False) == []
    one_px = np.full((1, 1), 7, np.uint8)
    assert check_near_duplicates([("a", one_px)], {"test": [("b", one_px)]}, "train", allow=False) == []


def test_images_must_be_uint8_arrays():
    scan = _phantoms(1, 16)[0]
    with pytest.raises(TypeError, match="train image `a` is ndarray float32"):
        check_near_duplicates([("a", scan.astype(np.float32))], {"test": [("b", scan)]}, "train", False)
    with pytest.raises(TypeError, match=r"test image `b` is ndarray uint8 \(2, 16, 16\)"):
        check_near_duplicates([("a", scan)], {"test": [("b", np.stack([scan, scan]))]}, "train", False)


# ---- at prepare: the train split against val and test ----------------------------------------


def _source_with_copy(tmp_path: Path, copy: str) -> Path:
    """A BUSI-layout folder of distinct phantom scans in which train image c1_000 is `copy` of
    test image c1_003 (saved as JPEG, as users re-save images)."""
    src = write_folder(tmp_path / "src", {0: 4, 1: 4, 2: 4}, size=32)
    files = sorted((src / "images").glob("*.png"))
    for path, image in zip(files, _phantoms(len(files), 32, seed=7)):
        Image.fromarray(image).save(path)
    heldout = np.asarray(Image.open(src / "images" / "c1_003.png"))
    (src / "images" / "c1_000.png").unlink()
    Image.fromarray(COPIES[copy](heldout) if copy != "jpeg_q95" else heldout).save(src / "images" / "c1_000.jpg", quality=95)
    return src


@pytest.mark.parametrize("copy", ["jpeg_q95", "flipped_horizontally", "flipped_vertically", "shifted_1px_x"])
def test_prepare_refuses_a_near_copy_of_a_test_image_in_train(tmp_path, capsys, copy):
    src, out = _source_with_copy(tmp_path, copy), tmp_path / "data"
    assert main(["prepare", "--source", str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert re.match(r"augment prepare: error: 1 near-duplicate pair\(s\) across splits: train image `c1_000` is a near-duplicate "
                    rf"of test image `c1_003` \(score 0?\.\d+ >= {NEAR_DUPLICATE_SSIM}, ", err[0]), err[0]
    assert "`--set allow_near_duplicates=true`" in err[0]
    assert not out.exists()


def test_allowed_near_duplicates_are_recorded_in_run_json(tmp_path, capsys):
    src, out = _source_with_copy(tmp_path, "flipped_horizontally"), tmp_path / "data"
    assert main(["prepare", "--source", str(src), "--out", str(out), "--set", "allow_near_duplicates=true"]) == 0
    record = json.loads((out / "run.json").read_text())["near_duplicates"]
    assert record["allowed"] is True and record["threshold"] == NEAR_DUPLICATE_SSIM
    assert [(p["candidate"], p["heldout"], p["split"], p["view"]) for p in record["pairs"]] == [
        ("c1_000", "c1_003", "test", "flipped horizontally")]
    assert json.loads((out / "run.json").read_text())["config"]["allow_near_duplicates"] is True


def test_dropped_near_duplicates_leave_train_and_are_recorded(tmp_path):
    from augment.data.manifest import read_manifest

    src, out = _source_with_copy(tmp_path, "shifted_1px_x"), tmp_path / "data"
    assert main(["prepare", "--source", str(src), "--out", str(out), "--set", "drop_near_duplicates=true"]) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["near_duplicates"]["dropped"] == ["c1_000"] and record["n_images"] == 11
    manifest = read_manifest(out / "manifest.csv")
    assert "c1_000" not in set(manifest["id"]) and "c1_003" in set(manifest["id"])
    assert not any(p.name.startswith("c1_000") for p in out.rglob("*"))  # its converted file went with it
    assert main(["validate", str(out)]) == 0
    assert main(["prepare", "--source", str(src), "--out", str(tmp_path / "both"), "--set", "drop_near_duplicates=true",
                 "--set", "allow_near_duplicates=true"]) == 2


def test_prepare_of_distinct_images_records_an_empty_check(phantom_dir):
    record = json.loads((phantom_dir / "run.json").read_text())["near_duplicates"]
    assert record["pairs"] == [] and record["allowed"] is False
    assert f">= {NEAR_DUPLICATE_SSIM}" in record["rule"]
