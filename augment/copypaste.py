"""The copy-paste arm (``real+copypaste+classic``): real lesions pasted into other budget images,
the baseline every generator must beat (TumorCP, Yang et al. 2021; CarveMix; Soft-CP). It needs no
generator, so it is a shared arm like ``real+classic``: trained once per (budget, seed).

For each of ``ratio x n`` pasted pairs, a budget image with a lesion is chosen (a seeded
permutation per pass, so every lesion is pasted equally often), jittered together with its mask
(the same jitter as ``mask_source: real``), and its lesion, with the tissue within the region's
margin, is placed on another budget image by the same placement prior and feathered seam as the
inpaint mode (:mod:`augment.placement`). The pasted pair's label is the source's; with
``placement.backgrounds: matching`` (the default) its background is lesion-free or of the source's
class, so the image agrees with that label (``any``: every other budget image). The model then
trains as the ``frac50`` recipe does: ``synthetic_fraction`` of every batch pasted, classic
augmentation on every pair. Each pasted pair's source, background and
placement are written beside the results (``EVAL/copypaste/seed<s>.csv``).
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
from pydantic import Field

from augment.config import Strict, in_range
from augment.errors import DataError
from augment.masks import JitterConfig
from augment.placement import Backgrounds, PlacementConfig
from augment.seeding import mix_seed


class CopyPasteConfig(Strict):
    """How the copy-paste arm makes and uses its pasted pairs."""

    ratio: in_range(0, 100, lo_open=True) = Field(4.0, description="pasted pairs per real budget image, in (0, 100]")
    synthetic_fraction: in_range(0, 1, lo_open=True, hi_open=True) = Field(
        0.5, description="share of every batch that is pasted, in (0, 1) (as the frac50 recipe)")
    jitter: JitterConfig = Field(default_factory=JitterConfig)
    placement: PlacementConfig = Field(default_factory=PlacementConfig)


def pasted(real, cfg: CopyPasteConfig, seed: int):
    """``real`` (a :class:`augment.downstream.Split` with masks) -> (a Split of pasted pairs, their
    provenance frame). DataError when the budget has no lesion to paste."""
    from augment.inpainting import paste

    if real.masks is None:
        raise DataError("the copy-paste arm needs masks; this data set has none")
    backgrounds = Backgrounds.of([str(i) for i in real.ids], list(real.images), list(real.masks), list(real.labels),
                                 cfg.placement)
    lesions = [i for i, m in enumerate(real.masks) if (m > 0).any()]
    n = max(1, int(round(cfg.ratio * len(real))))
    images, masks, labels, records = [], [], [], []
    for k in range(n):
        order = np.random.default_rng(mix_seed(seed, 0xC0B7, k // len(lesions))).permutation(len(lesions))
        source = lesions[int(order[k % len(lesions)])]
        image, mask, record = paste(backgrounds, source, cfg.jitter, cfg.placement, mix_seed(seed, 0xC0B7, k),
                                    f"copy-paste pair {k}")
        images.append(image)
        masks.append(mask)
        labels.append(int(real.labels[source]))
        records.append({"id": f"cp_{k:05d}", "label": labels[-1], **record})
    out = copy.copy(real)
    out.ids = [r["id"] for r in records]
    out.images, out.masks, out.labels = np.stack(images), np.stack(masks), np.array(labels, np.int64)
    return out, pd.DataFrame(records)
