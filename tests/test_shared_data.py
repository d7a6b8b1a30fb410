"""Realistic checks on the staged real datasets (skipped, with the reason, when absent)."""

from __future__ import annotations

import numpy as np

from augment.api import prepare
from augment.config import PrepareConfig
from augment.data.dataset import PairDataset
from augment.data.manifest import load_data
from augment.data.splits import select_budget
from tests.conftest import shared


def test_busi_keeps_source_splits_and_resizes(tmp_path):
    src = shared("busi")
    out = prepare(PrepareConfig(source=str(src), out=tmp_path / "busi", image_size=64)).out
    df, classes = load_data(out, check_files=True)
    assert classes == {0: "normal", 1: "benign", 2: "malignant"}
    counts = df.groupby(["split", "label"]).size().unstack().to_dict("index")
    assert counts["train"] == {0: 93, 1: 306, 2: 147}
    assert counts["test"] == {0: 27, 1: 87, 2: 42}
    item = PairDataset(df, out)[int(np.flatnonzero(df["label"] == 2)[0])]
    assert item["image"].shape == (1, 64, 64) and set(item["mask"].unique().tolist()) == {0, 1}
    budget = select_budget(df, 64, seed=0)
    assert budget["label"].value_counts().to_dict() == {1: 36, 2: 17, 0: 11}
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
