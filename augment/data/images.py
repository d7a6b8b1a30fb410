"""PNG reading and writing: the one place where pixels enter or leave the package.

Arrays here are numpy ``uint8``: images ``(H, W)`` grayscale or ``(H, W, 3)`` RGB, masks
``(H, W)`` class indices (0 = background). Conversion to float tensors happens in
:mod:`augment.data.dataset`.

Every file is opened by :func:`open_image`, which refuses an image whose header claims more than
PIL's ``Image.MAX_IMAGE_PIXELS`` (a decompression bomb: a few bytes that would decode to
gigabytes) before decoding it.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
import warnings
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


def _claimed_size(head: bytes, exc: Exception) -> str:
    """The size a refused image claims: ``WxH px (N pixels)`` from a PNG header (``head``: the
    file's first 24 bytes; the IHDR chunk comes first), else the pixel count PIL's message gives."""
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        return f"{width}x{height} px ({width * height:,} pixels)"
    found = re.search(r"\((\d+) pixels\)", str(exc))
    return f"{int(found[1]):,} pixels" if found else "a size PIL refuses"


def _decoded(source: Path | io.BytesIO, name: str, what: str) -> Image.Image:
    """``source`` decoded, or a DataError naming it (``what`` `name`): unreadable, or claiming more
    pixels than PIL's decompression-bomb limit (refused from the header, before decoding)."""
    try:
        with warnings.catch_warnings():
            # PIL only warns between 1x and 2x its limit; past it, decoding would still allocate it all
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                im.load()
                return im.copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        if isinstance(source, io.BytesIO):
            head = source.getvalue()[:24]
        else:
            with open(source, "rb") as fh:
                head = fh.read(24)
        raise DataError(f"{what} `{name}` claims {_claimed_size(head, exc)}, more than the {Image.MAX_IMAGE_PIXELS:,} pixels "
                        "an image may have (PIL's decompression-bomb limit); it is not decoded") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{what} `{name}` is not a readable image ({type(exc).__name__}: {exc})") from None


def open_image(path: Path, what: str) -> Image.Image:
    """The decoded image at ``path`` (any mode); ``what`` ("image", "mask") names it in errors. A
    missing, unreadable or oversized file is a DataError naming it."""
    if not path.is_file():
        raise DataError(f"{what} `{path}` does not exist")
    return _decoded(path, str(path), what)


def decode_image(data: bytes, name: str, what: str = "image") -> Image.Image:
    """Encoded image bytes (e.g. a Hugging Face ``Image(decode=False)`` cell) decoded, with the
    checks of :func:`open_image`; ``name`` says where they came from in errors."""
    return _decoded(io.BytesIO(data), name, what)


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
