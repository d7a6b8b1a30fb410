"""Realistic checks on the staged real datasets (skipped, with the reason, when absent)."""

from __future__ import annotations

import numpy as np
import pytest

from augment.api import prepare
from augment.config import PrepareConfig
from augment.data.dataset import PairDataset
from augment.data.manifest import load_data
from augment.data.splits import select_budget
from augment.errors import DataError
from tests.conftest import shared


def test_busi_keeps_source_splits_and_resizes(tmp_path):
    src = shared("busi")
    # BUSI's train split holds near-copies of val/test frames: refused by default, naming a pair ...
    with pytest.raises(DataError, match=r"59 near-duplicate pair\(s\) across splits: train image `\w+` is a near-duplicate of"):
        prepare(PrepareConfig(source=str(src), out=tmp_path / "refused", image_size=64))
    assert not (tmp_path / "refused").exists()
    # ... and left out of train on request (the val/test splits are the source's, untouched)
    out = prepare(PrepareConfig(source=str(src), out=tmp_path / "busi", image_size=64, drop_near_duplicates=True)).out
    df, classes = load_data(out, check_files=True)
    assert classes == {0: "normal", 1: "benign", 2: "malignant"}
    counts = df.groupby(["split", "label"]).size().unstack().to_dict("index")
    assert counts["train"] == {0: 93 - 14, 1: 306 - 39, 2: 147 - 3}
    assert counts["test"] == {0: 27, 1: 87, 2: 42}
    item = PairDataset(df, out)[int(np.flatnonzero(df["label"] == 2)[0])]
    assert item["image"].shape == (1, 64, 64) and set(item["mask"].unique().tolist()) == {0, 1}
    budget = select_budget(df, 64, seed=0)
    assert budget["label"].value_counts().to_dict() == {1: 35, 2: 19, 0: 10}
    import json

    record = json.loads((out / "run.json").read_text())
    assert ["benign_433", "malignant_145"] in record["duplicate_images_across_splits"]


def test_retinamnist_npz(tmp_path):
    src = shared("medmnist/retinamnist.npz")
    out = prepare(PrepareConfig(source=str(src), out=tmp_path / "retina")).out
    df, classes = load_data(out)
    assert len(classes) == 5 and len(df) == 1600
    train = df[df["split"] == "train"]["label"].value_counts().sort_index().tolist()
    assert train == [486, 128, 206, 194, 66]
    assert (df["mask"] == "").all()
