"""Where a lesion goes on a real background: the field of view, the placement prior, the
inpainting region and the feathered seam. Pure functions over numpy arrays and seeds; used by
the ``inpaint`` mode of every family (:mod:`augment.sampling`) and by the copy-paste arm
(:mod:`augment.copypaste`), so both place lesions the same way.

A placement takes a lesion *shape* (a real budget mask, moved by the seeded jitter of
:mod:`augment.masks`, cropped to its box) and puts it on a background at a centre and a scale:

* the **scale** makes the placed lesion's area that of a budget lesion drawn at random (times a
  small log-normal spread), clipped to ``[min_scale, max_scale]``;
* the **centre** is that budget lesion's centre plus Gaussian noise (``position_sigma`` of the
  side); after half the tries, anywhere in the field of view;
* it is accepted when the **region** (the placed lesion dilated by ``margin`` of the side) lies
  inside the background's **field of view** (no lesion on a black border, outside an ultrasound
  sector or an endoscope circle) and clear of the background's own lesion (also dilated).

The **backgrounds** a pair may take (``backgrounds``): with ``matching`` (the default) a pair of a
lesion class goes on a lesion-free budget image or one of its own class, and a pair of a
lesion-free class (normal scans) only on a lesion-free one, so the pair's image never shows a
lesion of another class than its label says (its mask is the union, so it would show it). With
``any`` every budget image is a background, as before the setting existed.

The field of view is the convex hull of the largest bright connected component of the smoothed
image (a scan's view is a rectangle, a sector or a circle: dark tissue inside it, or touching its
edge, is inside the view), eroded by one pixel. The composite
is ``background * (1 - alpha) + inside * alpha``, with ``alpha`` 0 outside the region, 1 on the
lesion and on the region's core, and a Gaussian ramp (``feather`` of the side) at its edge, so
everything outside the region is the background's own pixels, byte for byte.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np
from pydantic import Field

from augment.config import Strict
from augment.errors import DataError


class PlacementConfig(Strict):
    """How lesions are placed on backgrounds (inpaint mode and the copy-paste arm)."""

    margin: float = Field(0.08, ge=0, le=0.5, description="region = placed lesion dilated by this fraction of the side")
    feather: float = Field(0.03, ge=0, le=0.5, description="Gaussian sigma of the seam, fraction of the side (0: a hard edge)")
    position_sigma: float = Field(0.1, ge=0, le=1, description="spread of the centre around a budget lesion's centre, fraction of the side")
    scale_spread: float = Field(0.2, ge=0, le=2, description="log-normal spread of the target lesion area")
    min_scale: float = Field(0.5, gt=0, le=1)
    max_scale: float = Field(2.0, ge=1, le=10)
    tries: int = Field(64, ge=2, le=10_000, description="placements tried per background before the next one is tried")
    fov_threshold: int = Field(12, ge=0, le=254, description="grey level (0-255) of the smoothed image above which a pixel is in view")
    backgrounds: Literal["matching", "any"] = Field(
        "matching", description="matching: a lesion class's pairs go on lesion-free budget images or its own class's, a "
        "lesion-free class's on lesion-free ones only (the label agrees with the image); any: every budget image")


@dataclass(frozen=True)
class Placement:
    """Where a lesion shape went: its centre (y, x) in pixels, its scale, and the region's box
    ``(y0, x0, y1, x1)`` (end-exclusive)."""

    centre: tuple[float, float]
    scale: float
    box: tuple[int, int, int, int]

    def record(self) -> dict:
        # full floats (JSON keeps a double exactly): a rounded centre could move a boundary pixel on regeneration
        return {"centre": [self.centre[0], self.centre[1]], "scale": self.scale, "region": list(self.box)}

    @classmethod
    def from_record(cls, record: dict) -> "Placement":
        return cls((float(record["centre"][0]), float(record["centre"][1])), float(record["scale"]),
                   tuple(int(v) for v in record["region"]))


@dataclass(frozen=True)
class LesionStats:
    """Where the budget's own lesions lie: centres (n, 2) in fractions of the side and areas (n,) as
    fractions of the image."""

    centres: np.ndarray
    areas: np.ndarray


def grey(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) uint8 -> (H, W) float: the brightest channel."""
    return image.astype(np.float64) if image.ndim == 2 else image.max(axis=2).astype(np.float64)


def field_of_view(image: np.ndarray, threshold: int = 12) -> np.ndarray:
    """(H, W) bool: where the scan is. The whole image when no part of it is bright enough (a
    blank frame has no border to avoid)."""
    from scipy import ndimage

    h, w = image.shape[:2]
    smooth = ndimage.gaussian_filter(grey(image), max(1.0, 0.02 * min(h, w)))
    bright = smooth > threshold
    labels, n = ndimage.label(bright)
    if n == 0:
        return np.ones((h, w), bool)
    largest = 1 + int(np.argmax(ndimage.sum(bright, labels, range(1, n + 1))))
    # the hull of the component's own bright pixels (not of the smoothed mask, which bleeds a pixel outwards)
    fov = ndimage.binary_erosion(_hull((labels == largest) & (grey(image) > threshold)), iterations=1)
    return fov if fov.mean() >= 0.1 else np.ones((h, w), bool)


def _hull(region: np.ndarray) -> np.ndarray:
    """The convex hull of a (H, W) bool region, filled (a scan's view is convex: a rectangle, a
    sector, a circle; dark tissue touching its edge is still inside)."""
    from scipy.spatial import ConvexHull, Delaunay, QhullError

    points = np.argwhere(region).astype(np.float64)
    try:
        corners = points[ConvexHull(points).vertices]
        inside = Delaunay(corners).find_simplex(np.argwhere(np.ones(region.shape, bool)).astype(np.float64)) >= 0
    except (QhullError, ValueError):  # a line or a point: no area to hull
        return region
    return inside.reshape(region.shape) | region


def disk(radius: int) -> np.ndarray:
    r = int(radius)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return yy**2 + xx**2 <= r * r


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """(H, W) bool dilated by a disk of ``radius`` px (radius 0: unchanged)."""
    from scipy import ndimage

    m = np.asarray(mask, bool)
    return ndimage.binary_dilation(m, structure=disk(radius)) if radius > 0 and m.any() else m.copy()


def margin_px(cfg: PlacementConfig, side: int) -> int:
    return int(round(cfg.margin * side))


def lesion_stats(masks: list[np.ndarray]) -> LesionStats:
    """Centres and areas of the non-empty masks in ``masks`` (DataError when there are none)."""
    centres, areas = [], []
    for m in masks:
        on = np.argwhere(m > 0)
        if len(on):
            centres.append(on.mean(axis=0) / np.array(m.shape, float))
            areas.append(len(on) / m.size)
    if not centres:
        raise DataError("the budget has no image with a lesion mask, so lesions cannot be placed (inpaint mode and "
                        "copy-paste need at least one lesion in the budget)")
    return LesionStats(np.array(centres), np.array(areas))


def crop(mask: np.ndarray) -> np.ndarray:
    """A mask cropped to the box of its non-zero pixels (DataError when it has none)."""
    on = np.argwhere(mask > 0)
    if not len(on):
        raise DataError("an empty lesion mask cannot be placed")
    (y0, x0), (y1, x1) = on.min(0), on.max(0) + 1
    return mask[y0:y1, x0:x1]


def _coords(shape: tuple[int, int], size: tuple[int, int], centre: tuple[float, float], scale: float) -> np.ndarray:
    """Source coordinates in a (h, w) patch of every output pixel of a (H, W) frame, for the patch
    centred at ``centre`` and zoomed by ``scale`` (inverse mapping)."""
    h, w = shape
    yy, xx = np.meshgrid(np.arange(size[0], dtype=np.float64), np.arange(size[1], dtype=np.float64), indexing="ij")
    return np.stack([(yy - centre[0]) / scale + (h - 1) / 2.0, (xx - centre[1]) / scale + (w - 1) / 2.0])


def place(patch: np.ndarray, size: tuple[int, int], centre: tuple[float, float], scale: float, order: int = 0) -> np.ndarray:
    """``patch`` (h, w[, C]) put into an empty (H, W[, C]) frame centred at ``centre`` (pixels)
    and zoomed by ``scale``: nearest-neighbour (``order=0``, class indices stay indices, zero
    outside the patch) or bilinear (``order=1``, images, edge pixels extended; float output)."""
    from scipy.ndimage import map_coordinates

    coords = _coords(patch.shape[:2], size, centre, scale)
    if patch.ndim == 2:
        # images extend their edge pixels (no black rim where a region reaches past the patch)
        out = map_coordinates(patch.astype(np.float64) if order else patch, coords, order=order,
                              mode="nearest" if order else "constant", cval=0)
        return out if order else out.astype(patch.dtype)
    return np.stack([place(patch[..., c], size, centre, scale, order) for c in range(patch.shape[2])], axis=-1)


def region_of(placed: np.ndarray, radius: int) -> np.ndarray:
    """The region a placed lesion is generated (or pasted) in: the lesion dilated by ``radius`` px."""
    return dilate(placed > 0, radius)


def box_of(region: np.ndarray) -> tuple[int, int, int, int]:
    on = np.argwhere(region)
    (y0, x0), (y1, x1) = on.min(0), on.max(0) + 1
    return int(y0), int(x0), int(y1), int(x1)


def choose(shape: np.ndarray, background_mask: np.ndarray, fov: np.ndarray, stats: LesionStats, cfg: PlacementConfig,
           rng: np.random.Generator) -> Placement | None:
    """A placement of the cropped lesion ``shape`` on a background (its lesion mask and field of
    view given), drawn from the prior; None after ``cfg.tries`` refused tries."""
    size = background_mask.shape
    side = min(size)
    radius = margin_px(cfg, side)
    area = float((shape > 0).sum())
    blocked = dilate(background_mask > 0, radius) | ~fov
    inside = np.argwhere(fov)
    for t in range(cfg.tries):
        j = int(rng.integers(len(stats.areas)))
        target = stats.areas[j] * size[0] * size[1] * math.exp(rng.normal(0.0, cfg.scale_spread))
        scale = float(np.clip(math.sqrt(target / area), cfg.min_scale, cfg.max_scale))
        if t < cfg.tries // 2:
            centre = stats.centres[j] * np.array(size, float) + rng.normal(0.0, cfg.position_sigma * side, 2)
        else:
            centre = inside[int(rng.integers(len(inside)))] + rng.uniform(-0.5, 0.5, 2)
        centre = (float(centre[0]), float(centre[1]))
        placed = place(shape, size, centre, scale)
        if not (placed > 0).any() or (placed > 0).sum() < 0.5 * area * scale**2:  # cut by the frame
            continue
        region = region_of(placed, radius)
        if (region & blocked).any():
            continue
        return Placement(centre, scale, box_of(region))
    return None


def fits(shape: np.ndarray, size: tuple[int, int], cfg: PlacementConfig) -> bool:
    """Whether the lesion shape at its smallest scale, with its margin, fits a (H, W) background."""
    radius = margin_px(cfg, min(size))
    h, w = shape.shape[:2]
    return h * cfg.min_scale + 2 * radius <= size[0] and w * cfg.min_scale + 2 * radius <= size[1]


def alpha_of(region: np.ndarray, lesion: np.ndarray, cfg: PlacementConfig) -> np.ndarray:
    """(H, W) float in [0, 1]: 0 outside ``region``, 1 on ``lesion``, a Gaussian ramp inside the
    region's edge."""
    from scipy import ndimage

    r = np.asarray(region, float)
    sigma = cfg.feather * min(region.shape)
    a = np.clip(2.0 * ndimage.gaussian_filter(r, sigma) - 1.0, 0.0, 1.0) if sigma > 0 else r
    return np.maximum(a, np.asarray(lesion > 0, float)) * r


def composite(background: np.ndarray, inside: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """uint8 ``background`` outside, ``inside`` (uint8 or float 0-255) where ``alpha`` is 1;
    pixels where ``alpha`` is 0 stay the background's bytes."""
    a = alpha if background.ndim == 2 else alpha[..., None]
    mixed = background.astype(np.float64) * (1.0 - a) + np.asarray(inside, np.float64) * a
    out = np.clip(np.round(mixed), 0, 255).astype(np.uint8)
    return np.where(a > 0, out, background)


def union(background_mask: np.ndarray, placed: np.ndarray) -> np.ndarray:
    """The output mask: the background's own lesion plus the placed one."""
    return np.where(placed > 0, placed, background_mask).astype(np.uint8)


@dataclass(frozen=True)
class Backgrounds:
    """The budget's images as backgrounds: ids, images (H, W[, C]) uint8, masks (H, W) uint8, their
    class labels, their fields of view, and where the budget's lesions lie."""

    ids: list[str]
    images: list[np.ndarray]
    masks: list[np.ndarray]
    labels: list[int]
    fovs: list[np.ndarray]
    stats: LesionStats

    @classmethod
    def of(cls, ids: list[str], images: list[np.ndarray], masks: list[np.ndarray], labels: list[int],
           cfg: PlacementConfig) -> "Backgrounds":
        return cls(list(ids), list(images), list(masks), [int(v) for v in labels],
                   [field_of_view(im, cfg.fov_threshold) for im in images], lesion_stats(masks))

    def subset(self, keep: list[int]) -> "Backgrounds":
        """These backgrounds (indices) only; the lesion statistics stay the whole budget's."""
        return Backgrounds([self.ids[i] for i in keep], [self.images[i] for i in keep], [self.masks[i] for i in keep],
                           [self.labels[i] for i in keep], [self.fovs[i] for i in keep], self.stats)

    def allowed(self, label: int, lesion: bool, cfg: PlacementConfig) -> list[int]:
        """The indices a pair of class ``label`` may take as its background (``cfg.backgrounds``):
        every one (``any``), or the lesion-free ones and, for a pair with a lesion, its own class's."""
        if cfg.backgrounds == "any":
            return list(range(len(self.ids)))
        return [i for i, (free, c) in enumerate(zip(self.lesion_free, self.labels)) if free or (lesion and c == label)]

    @cached_property
    def lesion_free(self) -> list[bool]:
        """Per background, whether its mask is empty (worked out once, not per pair)."""
        return [not (m > 0).any() for m in self.masks]

    def index(self, background_id: str) -> int:
        if background_id not in self.ids:
            raise DataError(f"background `{background_id}` is not an image of the budget")
        return self.ids.index(background_id)


def arrange(shape: np.ndarray, backgrounds: Backgrounds, cfg: PlacementConfig, seed: int, what: str,
            among: list[int] | None = None) -> tuple[int, Placement]:
    """A background (index) and a placement for the cropped lesion ``shape``: the backgrounds
    ``among`` (default: all) are tried in a seeded order, each with ``cfg.tries`` placements from
    the prior. DataError (naming ``what``) when there is none to try, when the shape fits none, or
    when it can be placed on none."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(backgrounds.ids))  # over all, then filtered: ``any`` draws as before the setting existed
    if among is not None:
        keep = set(among)
        order = [b for b in order if int(b) in keep]
    if not len(order):
        raise DataError(f"{what}: no budget image may be its background (placement.backgrounds is `{cfg.backgrounds}`: a "
                        "lesion-free image, or one of the pair's own class for a lesion); set placement.backgrounds: any "
                        "or add such images to the budget")
    fitting = 0
    for b in order:
        b = int(b)
        if not fits(shape, backgrounds.masks[b].shape, cfg):
            continue
        fitting += 1
        found = choose(shape, backgrounds.masks[b], backgrounds.fovs[b], backgrounds.stats, cfg, rng)
        if found is not None:
            return b, found
    h, w = backgrounds.masks[0].shape
    if not fitting:
        radius = margin_px(cfg, min(h, w))
        raise DataError(f"{what}: the lesion ({shape.shape[0]}x{shape.shape[1]} px, {cfg.min_scale:g}x at the smallest, plus a "
                        f"{radius} px margin) is larger than every background ({h}x{w} px); lower placement.margin or min_scale")
    raise DataError(f"{what}: the lesion could not be placed inside the field of view, clear of the existing lesion, of any of "
                    f"{fitting} budget images it may take after {cfg.tries} tries each; lower placement.margin or min_scale")


def region_boxes(rows, size: tuple[int, int]) -> np.ndarray:
    """(N, H, W) int64 0/1 for the rows of a synthetic manifest: an inpainted row's region box (its
    ``placement``), the whole image for any other row. What the audit's mask-consistency check
    and the segmenter filter judge a pair on: the placed lesion, not its background's own."""
    out = np.ones((len(rows), *size), np.int64)
    records = rows["placement"] if "placement" in rows.columns else [""] * len(rows)
    for k, text in enumerate(records):
        if isinstance(text, str) and text:
            y0, x0, y1, x1 = json.loads(text)["region"]
            out[k] = 0
            out[k, y0:y1, x0:x1] = 1
    return out
