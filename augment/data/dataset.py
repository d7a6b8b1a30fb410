"""A torch view of a manifest: the one place where uint8 pixels become float tensors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from augment.data.images import read_image, read_mask
from augment.data.manifest import row_paths
from augment.errors import DataError


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W)`` or ``(H, W, 3)`` uint8 -> ``(C, H, W)`` float32 in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(image))
    t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)
    return t.float().div_(255.0)


def read_rows(df: pd.DataFrame, root: str | Path, masks: bool = True) -> list[tuple[np.ndarray, np.ndarray | None, int]]:
    """The one way manifest rows become pixels: per row (image uint8 (H, W) or (H, W, 3), mask
    uint8 (H, W) class indices or None (without ``masks``, or for a row without one), label).
    Paths are relative to ``root`` and never leave it, except recorded in-place references
    (:func:`augment.data.manifest.row_paths`: checked for every row before any is read)."""
    paths = row_paths(df, root, masks)
    return [(read_image(image), read_mask(mask) if mask is not None else None, int(label))
            for (image, mask), label in zip(paths, df["label"])]


def load_tensors(df: pd.DataFrame, root: str | Path, masks: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The rows' images (N, C, H, W) float32 in [0, 1] and, with ``masks``, their masks (N, H, W) int64."""
    rows = read_rows(df, root, masks)
    images = torch.stack([to_tensor(image) for image, _, _ in rows])
    if not masks:
        return images, None
    return images, torch.stack([torch.from_numpy(mask).to(torch.int64) for _, mask, _ in rows])


def load_pairs(df: pd.DataFrame, root: str | Path, size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The rows' (images (N, C, H, W) float32 in [0, 1], masks (N, H, W) int64, labels (N,) int64);
    with ``size``, rows whose image is not ``size`` x ``size`` are left out (N may be 0). Every row
    needs a mask."""
    pairs = [p for p in read_rows(df, root) if size is None or p[0].shape[:2] == (size, size)]
    labels = torch.tensor([label for _, _, label in pairs], dtype=torch.int64)
    if not pairs:
        return torch.zeros(0, 1, size or 1, size or 1), torch.zeros(0, size or 1, size or 1, dtype=torch.int64), labels
    images = torch.stack([to_tensor(image) for image, _, _ in pairs])
    return images, torch.stack([torch.from_numpy(mask).to(torch.int64) for _, mask, _ in pairs]), labels


class PairDataset(Dataset):
    """Image/mask/label triples from a manifest.

    Items are dicts: ``image`` (C, H, W) float32 in [0, 1]; ``mask`` (H, W) int64 class indices
    (only when ``masks=True``); ``label`` () int64; ``id`` str. ``transform``, if given, receives
    and returns the uint8 arrays ``(image, mask)`` before conversion (classic augmentation hooks
    in here). Rows without a mask are an error when ``masks=True``.
    """

    def __init__(
        self,
        manifest: pd.DataFrame,
        root: str | Path,
        masks: bool = True,
        transform: Callable[[np.ndarray, np.ndarray | None], tuple[np.ndarray, np.ndarray | None]] | None = None,
    ) -> None:
        self.root = Path(root)
        self.rows = manifest.reset_index(drop=True)
        self.masks = masks
        self.transform = transform
        if masks:
            missing = self.rows.loc[self.rows["mask"] == "", "id"].tolist()
            if missing:
                raise DataError(
                    f"{len(missing)} row(s) have no mask (e.g. {', '.join(missing[:5])}); "
                    "use masks=False for a classification-only set"
                )
        self.paths = row_paths(self.rows, self.root, masks)  # checked once, before any item is read

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows.iloc[index]
        image_path, mask_path = self.paths[index]
        image = read_image(image_path)
        mask = read_mask(mask_path) if mask_path is not None else None
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        item: dict[str, Any] = {
            "image": to_tensor(image),
            "label": torch.tensor(int(row["label"]), dtype=torch.int64),
            "id": row["id"],
        }
        if mask is not None:
            item["mask"] = torch.from_numpy(np.ascontiguousarray(mask)).to(torch.int64)
        return item
