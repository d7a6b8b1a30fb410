"""Shared by the sampling benchmarks: the audit's feature space with its real-vs-real Fréchet
baseline, balanced conditions for N draws, and a timed draw (ms per sample after a warm-up batch)."""

from __future__ import annotations

import time

import torch

from augment.audit import AuditConfig, _features, domain_encoder
from augment.data.dataset import load_tensors
from augment.data.manifest import load_data
from augment.metrics import frechet_distance
from augment.seeding import mix_seed


class Reference:
    """The audit's domain encoder (a SmallCNN label classifier on the real train split, cached in
    the user cache, augment.audit.cache_root) with the real train features and the real test-vs-train Fréchet baseline."""

    def __init__(self, data, encoder_steps: int = 300) -> None:
        manifest, self.classes = load_data(data)
        train_df = manifest[manifest["split"] == "train"].reset_index(drop=True)
        test_df = manifest[manifest["split"] == "test"].reset_index(drop=True)
        train_x, _ = load_tensors(train_df, data, masks=False)
        test_x, _ = load_tensors(test_df, data, masks=False)
        self.encoder, _ = domain_encoder(data, train_x, torch.tensor(train_df["label"].to_numpy()), max(self.classes) + 1,
                                         AuditConfig(data=data, synthetic=data, out=data, encoder_steps=encoder_steps))
        self.train_features = _features(self.encoder, train_x)
        self.baseline = frechet_distance(_features(self.encoder, test_x), self.train_features)

    def frechet(self, images: torch.Tensor) -> float:
        return frechet_distance(_features(self.encoder, images), self.train_features)


def conditions(gen, n: int, classes) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``n`` labels cycling over the classes and, for a mask-conditioned generator, its own budget
    masks of each label in turn (unjittered)."""
    labels = torch.tensor([sorted(classes)[i % len(classes)] for i in range(n)])
    if not gen.model.mask_conditioned:
        return labels, None
    _, budget_masks = load_tensors(gen.info.rows, gen.info.data_dir)
    by_class = {c: budget_masks[torch.tensor((gen.info.rows["label"] == c).to_numpy())] for c in classes}
    return labels, torch.stack([by_class[int(c)][i % len(by_class[int(c)])] for i, c in enumerate(labels.tolist())])


def context(gen, masks: torch.Tensor):
    """For an inpainting generator: budget images as backgrounds (in turn) and each mask's lesion
    dilated by 8 % of the side as its region (the placement prior is not timed); None otherwise."""
    if not getattr(gen.model, "inpaints", False):
        return None
    from augment.generators.base import Context, disk_dilate

    images, _ = load_tensors(gen.info.rows, gen.info.data_dir, masks=False)
    backgrounds = images[torch.arange(len(masks)) % len(images)]
    return Context(backgrounds, disk_dilate(masks > 0, round(0.08 * masks.shape[-1])))


def timed_draw(model, labels, masks, settings, batch_size: int, ctx=None) -> tuple[torch.Tensor, float]:
    """All images for ``labels`` (pair i drawn with seed mix_seed(0, i)) and the milliseconds per
    sample, amortised over the batches after the first (which warms up allocators and kernels);
    ``ctx``: an inpainting generator's backgrounds and regions (:func:`context`)."""
    from augment.generators.base import Context

    n, images, seconds, timed = len(labels), [], 0.0, 0
    for b, start in enumerate(range(0, n, batch_size)):
        idx = list(range(start, min(start + batch_size, n)))
        gens = [torch.Generator().manual_seed(mix_seed(0, i)) for i in idx]
        extra = {} if ctx is None else {"context": Context(ctx.images[idx], ctx.regions[idx])}
        t = time.perf_counter()
        out = model.sample(labels[idx], gens, None if masks is None else masks[idx], settings, **extra)
        if b > 0 or n <= batch_size:
            seconds, timed = seconds + time.perf_counter() - t, timed + len(idx)
        images.append(out.images)
    return torch.cat(images), 1000 * seconds / timed
