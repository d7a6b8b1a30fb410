"""PairDataset: the torch view with its tensor contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from augment.data.dataset import PairDataset
from augment.data.images import read_image
from augment.data.manifest import load_data
from augment.errors import DataError


def test_items_follow_the_contract(phantom_dir):
    df, _ = load_data(phantom_dir)
    ds = PairDataset(df, phantom_dir)
    assert len(ds) == len(df)
    item = ds[0]
    assert item["image"].shape == (1, 16, 16) and item["image"].dtype == torch.float32
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["mask"].shape == (16, 16) and item["mask"].dtype == torch.int64
    assert item["label"].dtype == torch.int64 and int(item["label"]) == df["label"].iloc[0]
    raw = read_image(phantom_dir / df["image"].iloc[0])
    np.testing.assert_allclose(item["image"][0].numpy() * 255, raw, atol=1e-4)
    for i in range(len(ds)):
        it = ds[i]
        assert bool(it["mask"].any()) == (int(it["label"]) != 0)


def test_batches_collate(phantom_dir):
    df, _ = load_data(phantom_dir)
    batch = next(iter(DataLoader(PairDataset(df, phantom_dir), batch_size=4)))
    assert batch["image"].shape == (4, 1, 16, 16) and batch["mask"].shape == (4, 16, 16)
    assert batch["label"].shape == (4,) and len(batch["id"]) == 4


def test_rgb_channels_first(tmp_path):
    from augment.api import prepare
    from augment.config import PrepareConfig

    out = prepare(PrepareConfig(source="phantom", out=tmp_path / "rgb", image_size=8, count=6, rgb=True)).out
    df, _ = load_data(out)
    item = PairDataset(df, out)[0]
    raw = read_image(out / df["image"].iloc[0])
    assert item["image"].shape == (3, 8, 8)
    np.testing.assert_allclose(item["image"].permute(1, 2, 0).numpy() * 255, raw, atol=1e-4)


def test_transform_applies_to_image_and_mask(phantom_dir):
    df, _ = load_data(phantom_dir)
    ds = PairDataset(df, phantom_dir, transform=lambda im, m: (im[:, ::-1], m[:, ::-1]))
    plain = PairDataset(df, phantom_dir)
    assert torch.equal(ds[1]["image"], plain[1]["image"].flip(-1))
    assert torch.equal(ds[1]["mask"], plain[1]["mask"].flip(-1))


def test_rows_without_masks(tmp_path):
    df, _ = load_data(_npz_data(tmp_path))
    with pytest.raises(DataError, match=r"row\(s\) have no mask .*masks=False"):
        PairDataset(df, tmp_path / "out")
    item = PairDataset(df, tmp_path / "out", masks=False)[0]
    assert "mask" not in item and item["image"].shape == (3, 8, 8)


def _npz_data(tmp_path):
    from augment.api import prepare
    from augment.config import PrepareConfig

    arrays = {}
    for split in ("train", "val", "test"):
        arrays[f"{split}_images"] = np.full((3, 8, 8, 3), 100, np.uint8)
        arrays[f"{split}_labels"] = np.array([[0], [1], [1]])
    np.savez(tmp_path / "x.npz", **arrays)
    return prepare(PrepareConfig(source=str(tmp_path / "x.npz"), out=tmp_path / "out")).out
