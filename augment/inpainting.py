"""Scenes: a lesion shape placed on a real budget background, for the ``inpaint`` mode of every
family and for the copy-paste arm. Built from the placement prior of :mod:`augment.placement`
and the seeded jitter of :mod:`augment.masks`; everything is a pure function of the budget and
the seeds, so a pair is made again exactly from its provenance.

Inpaint mode: sample ``k`` of class ``c`` takes its class's real mask (:func:`augment.sampling.source_mask`)
as the lesion shape, jittered; a class whose masks are empty (normal scans) takes the shape of a
budget lesion of any class (:func:`lesion_shape`) and gives the generator an empty mask, so its
region is filled with lesion-free tissue. The background (one the pair's class may take:
``placement.backgrounds``) and the placement come from :func:`augment.placement.arrange`. The
generator fills the region; :func:`finish` puts the real background back outside it with a
feathered seam and unites the masks.

Copy-paste (:func:`paste`): a budget lesion image and its mask, jittered together, the region
around the lesion cut out and placed on another budget image the source's class may take, the same
way, with the same seam.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from augment.errors import DataError
from augment.masks import JitterConfig, jitter_mask, jitter_pair
from augment.placement import (Backgrounds, Placement, PlacementConfig, alpha_of, arrange, composite, crop, margin_px, place,
                               region_of, union)
from augment.seeding import mix_seed


@dataclass(frozen=True)
class Scene:
    """One placed lesion on one background: ``given`` is the mask the generator is given (the
    placed lesion, or empty for a lesion-free class), ``region`` (H, W) bool where it generates."""

    background: int  # index into the Backgrounds
    shape_id: str
    lesion: bool
    placement: Placement
    given: np.ndarray
    region: np.ndarray

    def record(self, backgrounds: Backgrounds) -> dict:
        return {**self.placement.record(), "shape": self.shape_id, "lesion": self.lesion,
                "background": backgrounds.ids[self.background]}


def lesion_shape(pool: dict[int, list[tuple[str, np.ndarray]]], seed: int) -> tuple[str, np.ndarray]:
    """A budget lesion of any class (seeded), for the region of a class without lesions."""
    lesions = [(i, m) for label in sorted(pool) for i, m in pool[label] if (m > 0).any()]
    if not lesions:
        raise DataError("the generator's budget has no image with a lesion mask, so inpaint mode cannot place a lesion")
    return lesions[int(np.random.default_rng(seed).integers(len(lesions)))]


def jittered_shape(mask: np.ndarray, jitter: JitterConfig, seed: int) -> np.ndarray:
    """The cropped lesion of ``mask`` after the seeded jitter (the unjittered lesion when the
    jitter moved it out of the frame)."""
    moved = jitter_mask(mask, jitter, seed)
    return crop(moved if (moved > 0).any() else mask)


def scene(backgrounds: Backgrounds, label: int, shape_id: str, shape: np.ndarray, lesion: bool, cfg: PlacementConfig,
          seed: int, what: str) -> Scene:
    """Place the cropped ``shape`` of a class-``label`` pair on a background chosen by the prior
    (seeded) among those the class may take."""
    b, placement = arrange(shape, backgrounds, cfg, seed, what, among=backgrounds.allowed(label, lesion, cfg))
    return build(backgrounds, b, shape_id, shape, lesion, placement, cfg)


def build(backgrounds: Backgrounds, b: int, shape_id: str, shape: np.ndarray, lesion: bool, placement: Placement,
          cfg: PlacementConfig) -> Scene:
    """The scene of a known placement (as recorded in a pair's provenance)."""
    size = backgrounds.masks[b].shape
    placed = place(shape, size, placement.centre, placement.scale)
    region = region_of(placed, margin_px(cfg, min(size)))
    given = placed if lesion else np.zeros_like(placed)
    return Scene(b, shape_id, lesion, placement, given, region)


def finish(backgrounds: Backgrounds, s: Scene, inside: np.ndarray, cfg: PlacementConfig) -> tuple[np.ndarray, np.ndarray]:
    """The output pair: the background outside the region, ``inside`` (H, W[, C]) within it,
    feathered; the background's mask with the given lesion on top."""
    alpha = alpha_of(s.region, s.given, cfg)
    image = composite(backgrounds.images[s.background], inside, alpha)
    return image, union(backgrounds.masks[s.background], s.given)


def paste(backgrounds: Backgrounds, source: int, jitter: JitterConfig, cfg: PlacementConfig, seed: int,
          what: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """Copy-paste: the lesion of budget image ``source`` (and the tissue within the region's margin
    around it), jittered, placed on another budget image its class may take (itself when there is
    no other). Returns (image, mask, record)."""
    image, mask = jitter_pair(backgrounds.images[source], backgrounds.masks[source], jitter, mix_seed(seed, 0x717E))
    if not (mask > 0).any():
        image, mask = backgrounds.images[source], backgrounds.masks[source]
    on = np.argwhere(mask > 0)
    (y0, x0), (y1, x1) = on.min(0), on.max(0) + 1
    shape = mask[y0:y1, x0:x1]
    others = [i for i in backgrounds.allowed(backgrounds.labels[source], True, cfg) if i != source] or [source]
    pool = backgrounds.subset(others)
    b, placement = arrange(shape, pool, cfg, mix_seed(seed, 0x9A5E), what)
    size = pool.masks[b].shape
    # The whole source image moves with its lesion (the lesion box's centre to the placement
    # centre), so the region's margin around the lesion is the source's own tissue.
    h, w = mask.shape
    centre = (placement.centre[0] + ((h - 1) / 2.0 - (y0 + y1 - 1) / 2.0) * placement.scale,
              placement.centre[1] + ((w - 1) / 2.0 - (x0 + x1 - 1) / 2.0) * placement.scale)
    pixels = place(image, size, centre, placement.scale, order=1)
    placed = place(shape, size, placement.centre, placement.scale)
    region = region_of(placed, margin_px(cfg, min(size)))
    alpha = alpha_of(region, placed, cfg)
    out = composite(pool.images[b], pixels, alpha)
    record = {**placement.record(), "shape": backgrounds.ids[source], "lesion": True, "background": pool.ids[b]}
    return out, union(pool.masks[b], placed), record
