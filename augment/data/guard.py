"""The generator's training set, and the proof that it holds no val or test image.

Only the label-budget subset of the train split is ever loaded for a generator. Every image is
re-hashed from disk (the manifest is not trusted) and compared with every val and test image,
both by file bytes and by decoded pixels (a re-encoded copy has other bytes but the same
pixels); one match stops the run. Rows that were val or test when the set was prepared cannot
have become train rows (checked by :func:`augment.data.manifest.load_data`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from augment.data.dataset import to_tensor
from augment.data.images import mask_class_problem, pixel_sha256, read_image, read_mask, sha256_file
from augment.data.manifest import MANIFEST, load_data
from augment.data.splits import select_budget
from augment.errors import DataError


@dataclass
class TrainingSet:
    images: torch.Tensor  # (N, C, H, W) float32 in [0, 1]
    masks: torch.Tensor  # (N, H, W) int64
    labels: torch.Tensor  # (N,) int64
    rows: pd.DataFrame  # the budget rows, in manifest order
    classes: dict[int, str]
    manifest_sha256: str
    trained_on: list[dict[str, str]]  # [{"id", "sha256"}] re-hashed from disk


def assert_no_heldout(train_rows: pd.DataFrame, manifest: pd.DataFrame, root: Path) -> list[dict[str, str]]:
    """Hash every training image and every val/test image from disk, as file bytes and as decoded
    pixels; raise on any overlap or on a training file that no longer matches its manifest hash.
    Returns ``[{"id", "sha256"}]`` (file hashes)."""
    by_bytes, by_pixels = {}, {}
    for row in manifest[manifest["split"].isin(["val", "test"])].itertuples():
        by_bytes.setdefault(sha256_file(root / row.image), (row.id, row.split))
        by_pixels.setdefault(pixel_sha256(read_image(root / row.image)), (row.id, row.split))
    trained = []
    for row in train_rows.itertuples():
        sha = sha256_file(root / row.image)
        if sha != row.sha256:
            raise DataError(f"image `{row.image}` ({row.id}) changed since prepare: its sha256 no longer matches the manifest")
        same = "byte-identical to" if sha in by_bytes else "pixel-identical to (a re-encoded copy of)"
        hit = by_bytes.get(sha) or by_pixels.get(pixel_sha256(read_image(root / row.image)))
        if hit is not None:
            other, split = hit
            raise DataError(
                f"training image {row.id} is {same} {split} image {other}; "
                "a generator must never see val or test images (fix the split or drop one of them)"
            )
        trained.append({"id": row.id, "sha256": sha})
    return trained


def check_trained_on(trained_sha256: list[str], manifest: pd.DataFrame, root: Path, what: str) -> None:
    """Every image a generator trained on (by recorded sha256) must be a train-split image of the
    dataset at ``root`` (files re-hashed from disk); ``what`` names the synthetic set in errors."""
    split_of = {sha256_file(root / p): s for p, s in zip(manifest["image"], manifest["split"])}
    foreign = [h for h in trained_sha256 if h not in split_of]
    heldout = [h for h in trained_sha256 if split_of.get(h) in ("val", "test")]
    if heldout:
        raise DataError(f"{what} comes from a generator that saw {len(heldout)} val/test image(s) of `{root}`; "
                        "it cannot be evaluated on that data")
    if foreign:
        raise DataError(f"{what} comes from a generator trained on {len(foreign)} image(s) that are not in `{root}`; "
                        "use it with its own data")


def load_training_set(data_dir: str | Path, budget: int | None, seed: int) -> TrainingSet:
    root = Path(data_dir)
    manifest, classes = load_data(root)
    rows = select_budget(manifest, budget, seed)
    no_mask = rows.loc[rows["mask"] == "", "id"].tolist()
    if no_mask:
        raise DataError(
            f"`{root}` has no mask for {len(no_mask)} training image(s) (e.g. {no_mask[0]}); "
            "generators make image+mask pairs and need a mask for every image"
        )
    trained_on = assert_no_heldout(rows, manifest, root)
    images, masks = [], []
    for row in rows.itertuples():
        image = read_image(root / row.image)
        if images and image.shape != images[0].shape:
            raise DataError(
                f"image {row.id} is {image.shape[1]}x{image.shape[0]} (x{image.shape[2] if image.ndim == 3 else 1} channels) "
                f"but {rows['id'].iloc[0]} is {images[0].shape[1]}x{images[0].shape[0]}; re-run prepare with --image-size"
            )
        images.append(image)
        masks.append(read_mask(root / row.mask))
        if (bad := mask_class_problem(masks[-1], f"mask `{row.mask}` ({row.id})", len(classes))) is not None:
            raise DataError(bad)
    if images[0].shape[0] != images[0].shape[1]:
        raise DataError(f"images are {images[0].shape[1]}x{images[0].shape[0]}; generators need square images (prepare --image-size N)")
    return TrainingSet(
        images=torch.stack([to_tensor(i) for i in images]),
        masks=torch.from_numpy(np.stack(masks)).to(torch.int64),
        labels=torch.tensor(rows["label"].to_numpy(), dtype=torch.int64),
        rows=rows,
        classes=classes,
        manifest_sha256=sha256_file(root / MANIFEST),
        trained_on=trained_on,
    )
