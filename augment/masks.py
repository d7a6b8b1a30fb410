"""Seeded geometric jitter of real masks, for sampling images *for* a given mask.

A mask-conditioned generator (``mask_conditioned``) is fed masks drawn from its own label-budget
subset (never val or test) and moved a little, so a synthetic pair is a new image for a new but
plausible lesion shape rather than a redraw of a training pair. Published low-data ablations find
this beats generating image and mask together. One pure function of (mask, settings, seed):
horizontal flip, a small affine (rotation, zoom, shift) and a smooth elastic warp, all resampled
nearest-neighbour so class indices stay class indices. No vertical flips by default (ultrasound
has a physical top, see :mod:`augment.classic`).
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import Field

from augment.config import Strict


class JitterConfig(Strict):
    """How much a real mask is moved before an image is generated for it (all off: ``p=0``)."""

    horizontal_flip: float = Field(0.5, ge=0, le=1, description="probability of a left-right flip")
    vertical_flip: float = Field(0.0, ge=0, le=1, description="probability of an up-down flip (off for ultrasound)")
    affine: float = Field(0.8, ge=0, le=1, description="probability of a small rotation/zoom/shift")
    rotate: float = Field(15.0, ge=0, le=180, description="max degrees")
    scale: float = Field(0.15, ge=0, lt=1, description="max relative zoom in or out")
    translate: float = Field(0.08, ge=0, lt=1, description="max shift, fraction of the side")
    elastic: float = Field(0.5, ge=0, le=1, description="probability of a smooth elastic warp")
    elastic_magnitude: float = Field(0.04, ge=0, lt=1, description="max elastic displacement, fraction of the side")
    elastic_smoothness: float = Field(0.12, gt=0, lt=1, description="Gaussian sigma of the warp field, fraction of the side")


def jitter_mask(mask: np.ndarray, cfg: JitterConfig, seed: int) -> np.ndarray:
    """``mask`` (H, W) uint8 class indices -> the jittered mask, same shape and dtype.

    Every random number is drawn whether or not its transform fires, so changing one
    probability does not reshuffle the others; the same (mask, cfg, seed) gives the same output.
    """
    from scipy.ndimage import map_coordinates

    out = map_coordinates(mask, jitter_coords(mask.shape, cfg, seed), order=0, mode="constant", cval=0)
    return out.astype(mask.dtype)


def jitter_pair(image: np.ndarray, mask: np.ndarray, cfg: JitterConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An image (H, W[, C]) uint8 and its mask moved by the same jitter as :func:`jitter_mask`
    (the mask exactly as ``jitter_mask`` moves it; the image bilinear, black outside the frame)."""
    from scipy.ndimage import map_coordinates

    coords = jitter_coords(mask.shape, cfg, seed)
    planes = image[..., None] if image.ndim == 2 else image
    moved = np.stack([map_coordinates(planes[..., c].astype(np.float64), coords, order=1, mode="constant", cval=0)
                      for c in range(planes.shape[-1])], axis=-1)
    moved = np.clip(np.round(moved), 0, 255).astype(np.uint8)
    return (moved[..., 0] if image.ndim == 2 else moved), jitter_mask(mask, cfg, seed)


def jitter_coords(shape: tuple[int, int], cfg: JitterConfig, seed: int) -> np.ndarray:
    """(2, H, W): the input coordinates every output pixel reads (the inverse mapping of the jitter)."""
    from scipy.ndimage import gaussian_filter

    h, w = shape
    rng = np.random.default_rng(seed)
    fire = rng.random(4)  # hflip, vflip, affine, elastic
    angle, zoom, shift_y, shift_x = rng.uniform(-1.0, 1.0, 4)
    field = rng.uniform(-1.0, 1.0, (2, h, w))

    # Output pixel (y, x) reads the input at A @ (y - cy, x - cx) + c + shift (inverse mapping).
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    y, x = yy - cy, xx - cx
    if fire[2] < cfg.affine:
        theta = math.radians(angle * cfg.rotate)
        s = 1.0 + zoom * cfg.scale
        cos, sin = math.cos(theta) / s, math.sin(theta) / s
        y, x = cos * y - sin * x - shift_y * cfg.translate * h, sin * y + cos * x - shift_x * cfg.translate * w
    if fire[3] < cfg.elastic and cfg.elastic_magnitude > 0:
        smooth = np.stack([gaussian_filter(f, cfg.elastic_smoothness * min(h, w), mode="reflect") for f in field])
        peak = float(np.abs(smooth).max()) or 1.0
        y = y + smooth[0] / peak * cfg.elastic_magnitude * h
        x = x + smooth[1] / peak * cfg.elastic_magnitude * w
    y, x = y + cy, x + cx
    if fire[0] < cfg.horizontal_flip:
        x = (w - 1) - x
    if fire[1] < cfg.vertical_flip:
        y = (h - 1) - y
    return np.stack([y, x])
