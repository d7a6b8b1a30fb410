"""PNG reading and writing: the one place where pixels enter or leave the package.

Arrays here are numpy ``uint8``: images ``(H, W)`` grayscale or ``(H, W, 3)`` RGB, masks
``(H, W)`` class indices (0 = background). Conversion to float tensors happens in
:mod:`augment.data.dataset`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from augment.errors import DataError

#: Largest mask value accepted: masks hold small class indices, not intensities.
MAX_MASK_VALUE = 31
IMAGE_MODES = ("L", "RGB")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pixel_sha256(array: np.ndarray) -> str:
    """sha256 of decoded pixels (dtype, shape and bytes): equal for a re-encoded copy of an image
    (other PNG compression, metadata or format) whose file bytes, and so :func:`sha256_file`, differ."""
    h = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def mask_class_problem(mask: np.ndarray, what: str, n_classes: int) -> str | None:
    """Why ``mask`` cannot belong to a dataset of ``n_classes`` label classes (None when it can):
    its values must be ``0..n_classes`` (0 = background, at most one value per class)."""
    hi = int(mask.max()) if mask.size else 0
    if hi <= n_classes:
        return None
    return (f"{what} has value {hi}; with {n_classes} class(es) in classes.csv masks hold 0..{n_classes} "
            "(0 = background)")


def open_image(path: Path, what: str) -> Image.Image:
    if not path.is_file():
        raise DataError(f"{what} `{path}` does not exist")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{what} `{path}` is not a readable image ({type(exc).__name__}: {exc})") from None


def read_image(path: str | Path) -> np.ndarray:
    """Read an 8-bit grayscale or RGB image: ``(H, W)`` or ``(H, W, 3)`` uint8."""
    p = Path(path)
    im = open_image(p, "image")
    if im.mode not in IMAGE_MODES:
        raise DataError(
            f"image `{p}` has PIL mode {im.mode}; allowed: 8-bit grayscale (L) or RGB "
            "(convert palette, alpha or 16-bit images first)"
        )
    return np.array(im, dtype=np.uint8)  # a writable copy (torch.from_numpy needs one)


def read_mask(path: str | Path, binary: bool = False) -> np.ndarray:
    """Read a mask of class indices: ``(H, W)`` uint8 with values in ``0..MAX_MASK_VALUE``.

    ``binary=True`` maps every non-zero value to 1, for the common 0/255 lesion masks; without
    it such a mask is an error rather than a silent coercion.
    """
    p = Path(path)
    im = open_image(p, "mask")
    if im.mode not in ("1", "L", "P", "I", "I;16"):
        raise DataError(f"mask `{p}` has PIL mode {im.mode}; masks must be single-channel class indices (L, P, I or 1)")
    arr = np.array(im)
    if im.mode == "1":
        arr = arr.astype(np.uint8)
    if binary:
        return (arr != 0).astype(np.uint8)
    if arr.min() < 0 or arr.max() > MAX_MASK_VALUE:
        raise DataError(
            f"mask `{p}` has values {int(arr.min())}..{int(arr.max())}; masks must be class indices "
            f"0..{MAX_MASK_VALUE} (0 = background); for 0/255 lesion masks use --set binary_masks=true"
        )
    return arr.astype(np.uint8)


def write_png(array: np.ndarray, path: str | Path) -> None:
    """Write a uint8 array as PNG atomically: a temporary name in the same folder, then rename."""
    p = Path(path)
    if array.dtype != np.uint8:
        raise TypeError(f"write_png needs uint8, got {array.dtype}")
    from augment.output import atomic_path

    with atomic_path(p) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def resize_image(array: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of an image to ``size x size`` (aspect ratio not kept, as in BUSI)."""
    if array.shape[:2] == (size, size):
        return array
    return np.asarray(Image.fromarray(array).resize((size, size), Image.BILINEAR), dtype=np.uint8)


def resize_mask(array: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of a mask: class indices are never blended."""
    if array.shape[:2] == (size, size):
        return array
    return np.asarray(Image.fromarray(array).resize((size, size), Image.NEAREST), dtype=np.uint8)
