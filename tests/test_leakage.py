"""Routes by which val/test data could reach a generator, files outside a dataset could be read
or exported, and prepare could destroy its own source: each is refused with one clear error."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, PngImagePlugin

from augment.api import prepare, validate_data
from augment.cli import main
from augment.config import PrepareConfig, validate
from augment.data.guard import load_training_set
from augment.data.images import sha256_file
from augment.data.manifest import REFERENCES, load_data, read_manifest
from augment.errors import ConfigError, DataError
from tests.conftest import TINY_CVAE, run_cli, write_folder


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "data"
    shutil.copytree(src, dst, symlinks=True)
    return dst


def _files(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


def _edit(d: Path, **changes) -> pd.DataFrame:
    """Hand-edit the manifest in ``d``: ``changes`` maps a column to ``{row index: value}``."""
    df = read_manifest(d)
    for col, values in changes.items():
        for i, v in values.items():
            df.loc[i, col] = v
    df.to_csv(d / "manifest.csv", index=False)
    return df


def _secret(tmp_path: Path) -> Path:
    p = tmp_path / "secret.png"
    Image.fromarray(np.full((16, 16), 7, np.uint8)).save(p)
    return p


# ---- 1. manifest paths never leave the dataset folder unless prepare recorded them ----------


@pytest.mark.parametrize("path", ["/etc/passwd", "../../secret.png", "images/../../../secret.png"])
def test_hand_edited_path_outside_the_folder_is_refused(phantom_dir, tmp_path, path):
    d = _copy(phantom_dir, tmp_path / "w")  # tmp_path/w/data: ../../secret.png is tmp_path/secret.png
    _secret(tmp_path)
    rid = _edit(d, image={0: path})["id"][0]
    what = "is an absolute path" if path.startswith("/") else r"resolves to `.*secret.png`, outside the dataset folder"
    with pytest.raises(DataError, match=rf"{rid}: image `{re.escape(path)}` {what} \(paths must be relative and stay inside"):
        load_data(d)
    with pytest.raises(DataError, match=rf"{rid}: image `{re.escape(path)}`"):
        validate_data(d)


def test_symlink_out_of_the_folder_is_refused(phantom_dir, tmp_path):
    d = _copy(phantom_dir, tmp_path)
    secret = _secret(tmp_path)
    df = read_manifest(d)
    (d / df["mask"][3]).unlink()
    (d / df["mask"][3]).symlink_to(secret)
    with pytest.raises(DataError, match=rf"{df['id'][3]}: mask `{df['mask'][3]}` resolves to `{re.escape(str(secret))}`, outside"):
        load_data(d)


def test_in_place_references_are_recorded_and_only_they_may_point_outside(tmp_path):
    src = write_folder(tmp_path / "src", {0: 4, 1: 4, 2: 4})
    out = prepare(PrepareConfig(source=str(src), out=tmp_path / "d")).out
    df = read_manifest(out)
    refs = json.loads((out / REFERENCES).read_text())["references"]
    assert set(refs) == set(df["image"]) | set(df["mask"]) and all(p.startswith("../src/") for p in refs)
    run = json.loads((out / "run.json").read_text())
    assert run["in_place_references"]["count"] == 24
    load_data(out, check_files=True)
    validate_data(out)

    # a path to a source file that prepare did not reference is refused like any other
    Image.fromarray(np.zeros((12, 12), np.uint8)).save(src / "images" / "extra.png")
    _edit(out, image={0: "../src/images/extra.png"})
    with pytest.raises(DataError, match=rf"{df['id'][0]}: image `\.\./src/images/extra\.png` resolves to"):
        load_data(out)


def test_validate_rechecks_in_place_references(tmp_path):
    src = write_folder(tmp_path / "src", {0: 4, 1: 4, 2: 4})
    out = prepare(PrepareConfig(source=str(src), out=tmp_path / "d")).out
    m = np.zeros((12, 12), np.uint8)
    m[0, 0] = 1
    Image.fromarray(m).save(src / "masks" / "c2_001.png")  # a source mask changed after prepare
    (src / "images" / "c0_002.png").unlink()
    with pytest.raises(DataError) as err:
        validate_data(out)
    msg = str(err.value)
    assert "c2_001: mask `../src/masks/c2_001.png` does not match the sha256 recorded in references.json" in msg
    assert "c0_002: image `" in msg and "c0_002.png` does not exist" in msg
    # the record is tied to prepare's run.json: adding a reference by hand is refused
    refs = json.loads((out / REFERENCES).read_text())
    refs["references"]["../../secret.png"] = "0" * 64
    (out / REFERENCES).write_text(json.dumps(refs))
    with pytest.raises(DataError, match=r"in-place references of `.*` \(references.json\) are not those prepare recorded"):
        load_data(out)


# ---- export: ids and paths are checked before anything is copied -----------------------------


@pytest.mark.parametrize("fmt", ["folder", "hf"])
@pytest.mark.parametrize("column,value,needle", [
    ("id", "../evil", "../evil: id `../evil` is not a plain name"),
    ("image", "../../secret.png", "image `../../secret.png` resolves to"),
])
def test_export_refuses_crafted_manifests(phantom_dir, tmp_path, capsys, fmt, column, value, needle):
    d = _copy(phantom_dir, tmp_path / "w")
    _secret(tmp_path)
    _edit(d, **{column: {0: value}})
    before = _files(tmp_path)
    assert main(["export", str(d), "--out", str(tmp_path / "w" / "exp"), "--format", fmt]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and needle in err
    assert _files(tmp_path) == before and not (tmp_path / "w" / "exp").exists() and not (tmp_path / "w" / "evil.png").exists()


# ---- 2. prepare never writes into or over its source -----------------------------------------


def test_cli_prepare_over_its_own_source_is_refused(tmp_path):
    src = write_folder(tmp_path / "D", {0: 4, 1: 4})
    before = _files(src)
    res = run_cli("prepare", "--source", src, "--out", src, "--overwrite", env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and f"output `{src}` is the source `{src}` itself" in res.stderr
    assert _files(src) == before and sorted(p.name for p in tmp_path.iterdir()) == ["D"]


@pytest.mark.parametrize("out,where", [
    ("D", "is the source `.*D` itself"),
    ("D/./", "is the source `.*D` itself"),
    ("D/prepared", "lies inside the source `.*D`"),
    ("D/images/x", "lies inside the source `.*D`"),
    (".", "contains the source `.*D`"),
    ("link", "is the source `.*D` itself"),  # a symlink to the source
])
def test_output_that_is_contains_or_lies_inside_the_source(tmp_path, out, where):
    src = write_folder(tmp_path / "D", {0: 4, 1: 4})
    (tmp_path / "link").symlink_to(src)
    before = _files(tmp_path)
    with pytest.raises(ConfigError, match=rf"output `.*` {where}; prepare never writes into or over its source"):
        prepare(PrepareConfig(source=str(src), out=tmp_path / out, overwrite=True))
    assert _files(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["D", "link"]


def test_check_out_apart(tmp_path):
    from augment.data.sources import check_out_apart

    (tmp_path / "src").mkdir()
    check_out_apart("phantom", tmp_path)
    check_out_apart(str(tmp_path / "src"), tmp_path / "out")  # a sibling is fine
    check_out_apart(str(tmp_path / "src"), tmp_path / "src2")  # a shared name prefix is not "inside"
    for out in (tmp_path / "src", tmp_path / "src" / "out", tmp_path, tmp_path / "src" / ".." / "src"):
        with pytest.raises(ConfigError, match=r"output `.*` (is|contains|lies inside) the source `.*src`"):
            check_out_apart(str(tmp_path / "src"), out)


def test_npz_source_inside_the_output_is_refused(tmp_path):
    np.savez(tmp_path / "x.npz", train_images=np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(ConfigError, match="contains the source"):
        prepare(PrepareConfig(source=str(tmp_path / "x.npz"), out=tmp_path, overwrite=True))
    assert (tmp_path / "x.npz").is_file()


# ---- 3a. a val/test row moved to train after prepare ----------------------------------------


def _moved(phantom_dir: Path, tmp_path: Path, split: str) -> tuple[Path, str]:
    d = _copy(phantom_dir, tmp_path)
    df = read_manifest(d)
    i = int(np.flatnonzero(df["split"] == split)[0])
    _edit(d, split={i: "train"})
    return d, df["id"][i]


@pytest.mark.parametrize("split", ["val", "test"])
def test_heldout_row_moved_to_train_is_refused_by_training(phantom_dir, tmp_path, split):
    from augment.api import train
    from augment.generators import TrainConfig

    d, rid = _moved(phantom_dir, tmp_path, split)
    needle = rf"{rid}: split is `train` but row {rid} was `{split}` at prepare time \(recorded in run.json\)"
    with pytest.raises(DataError, match=needle):
        load_training_set(d, None, 0)
    cfg = validate(TrainConfig, {"data": d, "out": tmp_path / "run", "budget": 24, "seed": 0, "generator": TINY_CVAE,
                                 "train": {"max_steps": 2, "batch_size": 8}}, "train")
    with pytest.raises(DataError, match=needle):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_heldout_row_moved_to_train_is_refused_by_evaluation(phantom_dir, tmp_path):
    from augment.api import evaluate
    from augment.evaluate import EvaluateConfig

    d, rid = _moved(phantom_dir, tmp_path, "test")
    cfg = validate(EvaluateConfig, {"data": d, "out": tmp_path / "ev", "arms": ["real"], "seeds": [0]}, "evaluate")
    with pytest.raises(DataError, match=rf"{rid}: split is `train` but row {rid} was `test` at prepare time"):
        evaluate(cfg, echo=lambda *_: None)
    assert not (tmp_path / "ev").exists()
    with pytest.raises(DataError, match=rf"{rid}: split is `train`"):
        validate_data(d)


def test_prepare_records_heldout_ids(phantom_dir):
    run = json.loads((phantom_dir / "run.json").read_text())
    df = read_manifest(phantom_dir)
    for split in ("val", "test"):
        assert run["heldout_ids"][split] == sorted(df.loc[df["split"] == split, "id"])


def test_prepared_set_without_the_record_is_refused(phantom_dir, tmp_path):
    d = _copy(phantom_dir, tmp_path)
    run = json.loads((d / "run.json").read_text())
    del run["heldout_ids"]
    (d / "run.json").write_text(json.dumps(run))
    with pytest.raises(DataError, match=r"does not record which rows were val/test .*; re-run prepare"):
        load_data(d)


# ---- 3b. a re-encoded copy of a val/test image in a train file -------------------------------


def test_reencoded_heldout_image_in_a_train_file_is_refused(phantom_dir, tmp_path):
    d = _copy(phantom_dir, tmp_path)
    df = read_manifest(d)
    test_row = df[df["split"] == "test"].iloc[0]
    i = int(np.flatnonzero(df["split"] == "train")[0])
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "re-saved")
    target = d / df["image"][i]
    with Image.open(d / test_row["image"]) as im:
        im.save(target, compress_level=0, pnginfo=info)  # same pixels, other bytes
    assert target.read_bytes() != (d / test_row["image"]).read_bytes()
    _edit(d, sha256={i: sha256_file(target)})  # as if prepared that way
    with pytest.raises(DataError, match=rf"training image {df['id'][i]} is pixel-identical to \(a re-encoded copy of\) "
                                        rf"test image {test_row['id']}; a generator must never see val or test images"):
        load_training_set(d, None, 0)


def test_byte_identical_heldout_image_in_a_train_file_is_refused(phantom_dir, tmp_path):
    d = _copy(phantom_dir, tmp_path)
    df = read_manifest(d)
    val_row = df[df["split"] == "val"].iloc[0]
    i = int(np.flatnonzero(df["split"] == "train")[0])
    shutil.copyfile(d / val_row["image"], d / df["image"][i])
    _edit(d, sha256={i: val_row["sha256"]})
    with pytest.raises(DataError, match=rf"training image {df['id'][i]} is byte-identical to val image {val_row['id']}"):
        load_training_set(d, None, 0)


# ---- 3c. mask values above the number of classes ---------------------------------------------


def test_mask_value_above_the_class_count_is_refused_by_training(phantom_dir, tmp_path):
    d = _copy(phantom_dir, tmp_path)
    df = read_manifest(d)
    i = int(np.flatnonzero(df["split"] == "train")[0])
    Image.fromarray(np.full((16, 16), 4, np.uint8)).save(d / df["mask"][i])
    msg = rf"mask `{df['mask'][i]}` .*has value 4; with 3 class\(es\) in classes.csv masks hold 0..3 \(0 = background\)"
    with pytest.raises(DataError, match=msg):
        load_training_set(d, None, 0)
    with pytest.raises(DataError, match=rf"{df['id'][i]}: {msg}"):
        validate_data(d)


# ---- 4. a synthetic set holds its own files; rows read as pixels stay inside their folder -----


def _synthetic(phantom_dir: Path, tmp_path: Path) -> tuple[Path, Path, pd.DataFrame]:
    """DATA (a copy of the phantom set) and SYN beside it: a set made as ``augment sample`` makes
    one (images/, masks/, manifest.csv with provenance columns, classes.csv, run.json)."""
    from augment.data.manifest import write_manifest

    data = _copy(phantom_dir, tmp_path)
    syn = tmp_path / "syn"
    (syn / "images").mkdir(parents=True)
    (syn / "masks").mkdir()
    rows = read_manifest(data)
    rows = rows[rows["split"] == "train"].head(4).reset_index(drop=True)
    for i, row in rows.iterrows():
        shutil.copyfile(data / row["image"], syn / "images" / f"syn_{i:03d}.png")
        shutil.copyfile(data / row["mask"], syn / "masks" / f"syn_{i:03d}.png")
    rows["id"] = [f"syn_{i:03d}" for i in range(len(rows))]
    rows["image"], rows["mask"] = [f"images/{r}.png" for r in rows["id"]], [f"masks/{r}.png" for r in rows["id"]]
    rows = rows.assign(group=rows["id"], source="synthetic", generator="cvae", generator_sha256="0" * 64, seed=range(len(rows)), sampler="")
    write_manifest(rows, syn / "manifest.csv")
    shutil.copyfile(data / "classes.csv", syn / "classes.csv")
    (syn / "run.json").write_text(json.dumps({"stage": "sample", "generator_run": "run", "generator_sha256": "0" * 64,
                                              "generator_trained_on_sha256": []}))
    return data, syn, rows


def _point_outside(syn: Path, rows: pd.DataFrame, how: str, target: Path) -> str:
    """Make row 0 of SYN read ``target`` (a test image of DATA) and return its manifest path. The
    manifest is written by the package's own writer, which records the outside path in
    references.json: a hostile set looks exactly like a legitimate combined manifest."""
    from augment.data.manifest import write_manifest

    rows = rows.copy()
    if how == "relative":
        rows.loc[0, "image"] = os.path.relpath(target, syn)
    elif how == "absolute":
        rows.loc[0, "image"] = str(target)
    else:  # a symlink inside the folder that leads out of it
        (syn / rows["image"][0]).unlink()
        (syn / rows["image"][0]).symlink_to(target)
    write_manifest(rows, syn / "manifest.csv")
    return rows["image"][0]


@pytest.mark.parametrize("how", ["relative", "absolute", "symlink"])
def test_synthetic_rows_pointing_outside_the_set_are_refused(phantom_dir, tmp_path, capsys, how):
    from augment.data.manifest import load_synthetic

    data, syn, rows = _synthetic(phantom_dir, tmp_path)
    real, classes = load_data(data)
    assert len(load_synthetic(syn, data, classes)) == 4
    test_image = data / real.loc[real["split"] == "test", "image"].iloc[0]
    path = _point_outside(syn, rows, how, test_image)
    if how == "relative":
        assert path.startswith("../data/images/") and path in json.loads((syn / REFERENCES).read_text())["references"]
    what = "is an absolute path" if how == "absolute" else rf"resolves to `{re.escape(str(test_image.resolve()))}`, outside"
    needle = rf"syn_000: image `{re.escape(path)}` {what}"
    with pytest.raises(DataError, match=needle):
        load_synthetic(syn, data, classes)
    assert main(["validate", str(syn)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and re.search(needle, err) and "synthetic set" in err


def test_rows_read_as_pixels_never_leave_their_folder(phantom_dir, tmp_path):
    from augment.data.dataset import PairDataset, load_pairs, read_rows

    d = _copy(phantom_dir, tmp_path / "w")
    secret = _secret(tmp_path)
    df = read_manifest(d)
    assert len(read_rows(df.head(3), d)) == 3
    for image in ["../../secret.png", str(secret)]:
        bad = df.head(3).copy()
        bad.loc[1, "image"] = image
        needle = rf"row {bad['id'][1]}: image `{re.escape(image)}` (is an absolute path|resolves to `.*secret.png`, outside)"
        for read in (lambda: read_rows(bad, d), lambda: load_pairs(bad, d), lambda: PairDataset(bad, d)):
            with pytest.raises(DataError, match=needle):
                read()
    (d / df["mask"][2]).unlink()
    (d / df["mask"][2]).symlink_to(secret)
    with pytest.raises(DataError, match=rf"row {df['id'][2]}: mask `{df['mask'][2]}` resolves to `.*secret.png`, outside"):
        read_rows(df.head(3), d)


def test_in_place_references_are_read_as_pixels(tmp_path):
    from augment.data.dataset import read_rows

    src = write_folder(tmp_path / "src", {0: 4, 1: 4})
    out = prepare(PrepareConfig(source=str(src), out=tmp_path / "d")).out
    df = read_manifest(out)
    assert df["image"].str.startswith("../src/").all()
    assert len(read_rows(df, out)) == len(df)


# ---- 3c'. a near-copy (flipped, JPEG) of a val/test image in a train file ---------------------


def test_near_copy_of_a_heldout_image_in_a_train_file_is_refused_by_training(phantom_dir, tmp_path):
    d = _copy(phantom_dir, tmp_path)
    df = read_manifest(d)
    test_row = df[df["split"] == "test"].iloc[0]
    i = int(np.flatnonzero(df["split"] == "train")[0])
    target = d / df["image"][i]
    Image.fromarray(np.asarray(Image.open(d / test_row["image"]))[:, ::-1].copy()).save(target)  # mirrored
    _edit(d, sha256={i: sha256_file(target)})  # as if prepared that way
    with pytest.raises(DataError, match=rf"1 near-duplicate pair\(s\) across splits: training image `{df['id'][i]}` is a "
                                        rf"near-duplicate of test image `{test_row['id']}` \(score 1.000 >= 0.975, flipped "
                                        r"horizontally\).*`augment prepare --set allow_near_duplicates=true`"):
        load_training_set(d, None, 0)


def test_near_duplicates_accepted_at_prepare_are_accepted_by_training(tmp_path):
    src = write_folder(tmp_path / "src", {0: 4, 1: 4}, size=16)
    test_image = np.asarray(Image.open(src / "images" / "c1_003.png"))
    Image.fromarray(test_image[::-1].copy()).save(src / "images" / "c1_000.png")  # train c1_000 = test c1_003, flipped
    with pytest.raises(DataError, match="training image|train image `c1_000` is a near-duplicate of test image `c1_003`"):
        prepare(PrepareConfig(source=str(src), out=tmp_path / "d"))
    out = prepare(PrepareConfig(source=str(src), out=tmp_path / "d", allow_near_duplicates=True)).out
    assert {r["id"] for r in load_training_set(out, None, 0).trained_on} >= {"c1_000"}
    run = json.loads((out / "run.json").read_text())
    run["near_duplicates"]["pairs"] = []  # the acceptance is what was recorded, nothing else
    (out / "run.json").write_text(json.dumps(run))
    with pytest.raises(DataError, match="training image `c1_000` is a near-duplicate of test image `c1_003`"):
        load_training_set(out, None, 0)
