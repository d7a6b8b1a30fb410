"""Classic paired augmentation (the `real+classic` arms): the only module that imports
albumentations (pinned at 2.0.8, archived upstream).

Geometric transforms move the image and its mask together (masks nearest-neighbour); photometric
ones touch the image only. No vertical flips by default: ultrasound has a physical top (the
transducer), and flipping it makes anatomy that does not exist.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
from pydantic import Field

from augment.config import Strict

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

Transform = Callable[[np.ndarray, np.ndarray | None], tuple[np.ndarray, np.ndarray | None]]


class ClassicConfig(Strict):
    horizontal_flip: float = Field(0.5, ge=0, le=1)
    vertical_flip: float = Field(0.0, ge=0, le=1)
    affine: float = Field(0.7, ge=0, le=1, description="probability of a small rotation/scale/shift")
    rotate: float = Field(15.0, ge=0, le=180, description="max degrees, 0 to 180")
    scale: float = Field(0.1, ge=0, lt=1, description="max relative zoom in or out")
    translate: float = Field(0.06, ge=0, lt=1, description="max shift, fraction of the side")
    elastic: float = Field(0.2, ge=0, le=1)
    brightness_contrast: float = Field(0.5, ge=0, le=1)
    noise: float = Field(0.2, ge=0, le=1)


def classic_transform(cfg: ClassicConfig | None = None, seed: int = 0) -> Transform:
    """A seeded paired transform over uint8 arrays: ``(image (H, W[, C]), mask (H, W) | None)``
    -> the same shapes. The same seed gives the same sequence of augmentations."""
    import albumentations as A

    cfg = cfg or ClassicConfig()
    pipeline = A.Compose([
        A.HorizontalFlip(p=cfg.horizontal_flip),
        A.VerticalFlip(p=cfg.vertical_flip),
        A.Affine(scale=(1 - cfg.scale, 1 + cfg.scale), rotate=(-cfg.rotate, cfg.rotate),
                 translate_percent=(-cfg.translate, cfg.translate), border_mode=0, p=cfg.affine),
        A.ElasticTransform(alpha=20, sigma=5, border_mode=0, p=cfg.elastic),
        A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=cfg.brightness_contrast),
        A.GaussNoise(std_range=(0.02, 0.06), p=cfg.noise),
    ], seed=seed)

    def apply(image: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        if mask is None:
            return pipeline(image=image)["image"], None
        out = pipeline(image=image, mask=mask)
        return out["image"], out["mask"]

    return apply
