"""Pixel conversion shared by the loaders of :mod:`augment.data.sources`: writing a converted
pair under the output folder, turning raw mask arrays into class indices, and raising every
collected row problem at once."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from augment.config import PrepareConfig
from augment.data.images import MAX_MASK_VALUE, mask_class_problem, resize_image, resize_mask, write_png
from augment.data.manifest import format_problems, id_problem
from augment.errors import DataError


def write_pair(
    out: Path, rid: str, image: np.ndarray, mask: np.ndarray | None, size: int | None
) -> tuple[str, str]:
    if (bad := id_problem(rid)) is not None:  # loaders check first; this guards the write itself
        raise DataError(bad)
    if size is not None:
        image = resize_image(image, size)
        mask = None if mask is None else resize_mask(mask, size)
    write_png(image, out / "images" / f"{rid}.png")
    if mask is None:
        return f"images/{rid}.png", ""
    write_png(mask, out / "masks" / f"{rid}.png")
    return f"images/{rid}.png", f"masks/{rid}.png"


def finish(problems: list[tuple[str, str]], where: str) -> None:
    if problems:
        raise DataError(format_problems(problems, where))


def mask_values(raw: np.ndarray, what: str, cfg: PrepareConfig, n_classes: int) -> tuple[np.ndarray, bool]:
    """A raw mask array ``(H, W)`` or ``(H, W, 3)`` as ``(H, W)`` uint8 class indices, and
    whether its values changed (RGB to one channel, ``mask_threshold``, ``binary_masks``).
    Values must be ``0..n_classes`` (0 = background; ``n_classes`` rows in classes.csv)."""
    changed = False
    if raw.ndim == 3 and raw.shape[2] == 3:
        if not ((raw[..., 0] == raw[..., 1]).all() and (raw[..., 0] == raw[..., 2]).all()):
            raise DataError(
                f"{what} is RGB with channels that differ; masks must be single-channel class indices "
                "(colour-coded masks are not supported: save them as grayscale class indices)"
            )
        raw, changed = raw[..., 0], True
    if raw.ndim != 2:
        raise DataError(f"{what} has shape {raw.shape}; masks must be single-channel class indices")
    if raw.dtype == bool:  # PIL mode "1": already 0/1
        return raw.astype(np.uint8), changed
    if cfg.mask_threshold is not None:
        return (raw >= cfg.mask_threshold).astype(np.uint8), True
    if cfg.binary_masks:
        return (raw != 0).astype(np.uint8), True
    lo, hi = int(raw.min()), int(raw.max())
    if lo < 0 or hi > MAX_MASK_VALUE:
        n = len(np.unique(raw))
        hint = ("for 0/255 lesion masks use --set binary_masks=true" if n <= 2 else
                f"it has {n} distinct values, as lossy (JPEG) or anti-aliased masks do: "
                "use --set mask_threshold=128 to make pixels >= 128 the lesion")
        raise DataError(f"{what} has values {lo}..{hi}; masks must be class indices 0..{MAX_MASK_VALUE} (0 = background); {hint}")
    if (bad := mask_class_problem(raw, what, n_classes)) is not None:
        raise DataError(bad)
    return raw.astype(np.uint8), changed
