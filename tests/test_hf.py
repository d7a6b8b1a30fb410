"""Export to a Hugging Face dataset and back through `prepare` keeps pixels, labels, splits."""

from __future__ import annotations

import datasets
import numpy as np
import pandas as pd
import pytest

from augment.api import prepare
from augment.config import PrepareConfig
from augment.data.hf import save_hf, to_hf_dataset
from augment.data.images import read_image, read_mask
from augment.data.manifest import load_data


def test_features(phantom_dir):
    df, classes = load_data(phantom_dir)
    ds = to_hf_dataset(df, phantom_dir, classes)
    assert isinstance(ds.features["image"], datasets.Image)
    assert isinstance(ds.features["mask"], datasets.Image)
    assert ds.features["label"].names == ["normal", "round", "irregular"]
    assert len(ds) == len(df)
    np.testing.assert_array_equal(np.asarray(ds[0]["image"]), read_image(phantom_dir / df["image"][0]))


def test_round_trip(phantom_dir, tmp_path):
    save_hf(phantom_dir, tmp_path / "hf")
    # The saved dataset must stand alone: it holds the PNG bytes, not paths back to our files.
    back = prepare(PrepareConfig(source=str(tmp_path / "hf"), out=tmp_path / "back")).out
    a, ca = load_data(phantom_dir)
    b, cb = load_data(back, check_files=True)
    assert ca == cb
    cols = ["id", "label", "split", "group"]
    pd.testing.assert_frame_equal(a[cols].reset_index(drop=True), b[cols].reset_index(drop=True))
    for ra, rb in zip(a.itertuples(), b.itertuples()):
        np.testing.assert_array_equal(read_image(phantom_dir / ra.image), read_image(back / rb.image))
        np.testing.assert_array_equal(read_mask(phantom_dir / ra.mask), read_mask(back / rb.mask))


def test_dataset_dict_source_with_validation_split(tmp_path):
    rng = np.random.default_rng(0)
    def part(n):
        return datasets.Dataset.from_dict(
            {"img": [rng.integers(0, 256, (8, 8), dtype=np.uint8) for _ in range(n)], "y": [i % 2 for i in range(n)]},
            features=datasets.Features({"img": datasets.Image(), "y": datasets.ClassLabel(names=["neg", "pos"])}),
        )
    datasets.DatasetDict({"train": part(6), "validation": part(2), "test": part(3)}).save_to_disk(str(tmp_path / "hf"))
    out = prepare(PrepareConfig(source=str(tmp_path / "hf"), out=tmp_path / "out", image_column="img", label_column="y")).out
    df, classes = load_data(out, check_files=True)
    assert classes == {0: "neg", 1: "pos"}
    assert df["split"].value_counts().to_dict() == {"train": 6, "test": 3, "val": 2}
    assert (df["mask"] == "").all()


def test_hf_source_missing_column(phantom_dir, tmp_path):
    from augment.errors import DataError

    save_hf(phantom_dir, tmp_path / "hf")
    with pytest.raises(DataError, match=r"has no column `picture` .*set image_column"):
        prepare(PrepareConfig(source=str(tmp_path / "hf"), out=tmp_path / "o", image_column="picture"))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("column", ["img", "mask"])
def test_an_hf_image_claiming_a_huge_size_is_one_line(tmp_path, capsys, column):
    """datasets decodes Image cells with PIL itself; prepare decodes them through our checks instead."""
    import io

    from PIL import Image

    from augment.cli import main
    from tests.conftest import forged_png

    def png(side: int, value: int) -> dict:
        buf = io.BytesIO()
        Image.new("L", (side, side), value).save(buf, "PNG")
        return {"bytes": buf.getvalue(), "path": None}

    cells = {"img": [png(8, 90 + i) for i in range(6)], "mask": [png(8, 0) for _ in range(6)], "y": [i % 2 for i in range(6)]}
    cells[column][3] = {"bytes": forged_png(), "path": None}
    features = datasets.Features({"img": datasets.Image(), "mask": datasets.Image(), "y": datasets.ClassLabel(names=["a", "b"])})
    datasets.Dataset.from_dict(cells, features=features).save_to_disk(str(tmp_path / "hf"))
    capsys.readouterr()
    assert main(["prepare", "--source", str(tmp_path / "hf"), "--out", str(tmp_path / "out"), "--set", "image_column=img",
                 "--set", "label_column=y"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "item_00003" in err[0] and "20000x20000" in err[0], err
    assert not (tmp_path / "out").exists()
