"""Quality metrics as plain functions over tensors: Fréchet distance and KID in a feature space,
SSIM / MS-SSIM, PSNR, mask Dice, nearest neighbours and the copy thresholds of the memorisation
audit, and :func:`generator_heldout`, which measures a generator's own parts (autoencoder round
trip, codebooks, token priors) on held-out pairs through the methods the families expose.

The maths comes from torchmetrics (polynomial-kernel MMD for KID, SSIM, MS-SSIM) and, for the
Fréchet distance, numpy's covariances and eigenvalues (:func:`frechet_distance` says why not
MONAI's); this module arranges inputs and sampling. The Fréchet Radiomics Distance
(:func:`frd`) is the same distance over radiomic features that :mod:`augment.radiomics` gets
from the ``frd-score`` package. Features: (N, D) float tensors.
Images: (N, C, H, W) float32 in [0, 1]. Inputs a metric cannot use (too few images, mismatched
shapes, images smaller than the window) raise :class:`~augment.errors.DataError` saying what is
needed and what was given; the maths itself is never changed to make them fit.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from augment.errors import DataError
from augment.progress import track

# 5 scales with an 11-px Gaussian window: torchmetrics needs side // 2**4 > 11 - 1, i.e. a side of
# at least 176 px (161-175 px pass "> (11 - 1) * 2**4" but fail its integer division)
MS_SSIM_MIN_SIDE = 176
SSIM_MIN_SIDE = 6  # the 11-px Gaussian window reflection-pads 5 px, which needs more than 5 px


def _shape(x: torch.Tensor) -> str:
    return "(" + ", ".join(str(d) for d in x.shape) + ")"


def _feature_sets(what: str, a: torch.Tensor, b: torch.Tensor, names: tuple[str, str], at_least: int) -> None:
    """Two (N, D) feature sets of one D with at least ``at_least`` rows each, or a DataError."""
    for x, name in zip((a, b), names):
        if x.ndim != 2:
            raise DataError(f"{what} needs (N, D) feature matrices; the {name} has shape {_shape(x)}")
    if a.shape[1] != b.shape[1]:
        raise DataError(f"{what} needs features of one dimension; the {names[0]} has {a.shape[1]}, the {names[1]} {b.shape[1]}")
    if a.shape[1] == 0:
        raise DataError(f"{what} needs features of at least 1 dimension; the {names[0]} has 0")
    short = [f"the {name} has {len(x)}" for x, name in zip((a, b), names) if len(x) < at_least]
    if short:
        raise DataError(f"{what} needs at least {at_least} images per set; {' and '.join(short)}")


def _images(what: str, x: torch.Tensor, name: str, min_side: int = SSIM_MIN_SIDE) -> None:
    """(N, C, H, W) images with H and W at least ``min_side``, or a DataError."""
    if x.ndim != 4:
        raise DataError(f"{what} needs images as (N, C, H, W); the {name} have shape {_shape(x)}")
    if min(x.shape[-2:]) < min_side:
        raise DataError(
            f"{what} needs images of at least {min_side}x{min_side} px; the {name} are {x.shape[-1]}x{x.shape[-2]}"
        )


def frechet_distance(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str] = ("first set", "second set")) -> float:
    """Fréchet distance between Gaussians fitted to two (N, D) feature sets (the FID formula,
    Heusel et al. 2017): ``|mu_a - mu_b|² + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^½)``, covariances
    with N - 1. Any D >= 1 and N >= 2 per set; ``names`` only word the error for inputs it
    cannot use (e.g. ``("synthetic set", "real set")``).

    ``tr((S_a S_b)^½)`` is the sum of the square roots of the eigenvalues of ``S_a S_b``, which
    equal those of the symmetric PSD matrix ``S_a^½ S_b S_a^½``: computed that way (two ``eigh``)
    it is real and finite for singular covariances too (fewer samples than dimensions, constant
    features), where ``sqrtm(S_a S_b)`` (MONAI, pytorch-fid) needs an epsilon retry, can return
    complex values, and fails on 1-d features. With fewer samples than dimensions the value is
    still defined, biased upwards: the audit says so beside it."""
    _feature_sets("the Fréchet distance", a, b, names, at_least=2)
    x, y = a.detach().double().cpu().numpy(), b.detach().double().cpu().numpy()
    cov_a, cov_b = np.atleast_2d(np.cov(x, rowvar=False)), np.atleast_2d(np.cov(y, rowvar=False))
    w, v = np.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    tr_covmean = float(np.sqrt(np.clip(inner, 0, None)).sum())
    diff = x.mean(0) - y.mean(0)
    # a squared 2-Wasserstein distance, >= 0: a negative value is rounding (identical sets), not a result
    return max(0.0, float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * tr_covmean))


def colour_cells(pixels: torch.Tensor, bins: int) -> torch.Tensor:
    """(P, C) values in [0, 1] -> (P,) int64: the cell of each pixel's colour in a grid of ``bins``
    equal steps per channel (``bins ** C`` cells)."""
    q = (pixels.clamp(0, 1) * bins).long().clamp(max=bins - 1)
    cells = torch.zeros(len(q), dtype=torch.int64)
    for c in range(q.shape[1]):
        cells = cells * bins + q[:, c]
    return cells


#: colour steps per channel of :func:`off_gamut_fraction`: 32 grey levels, or 8 per colour channel (512 cells)
GAMUT_BINS = {1: 32, 3: 8}
#: the share of the reference pixels whose colour cells make the gamut
GAMUT_MASS = 0.995


def off_gamut_fraction(ref: torch.Tensor, other: torch.Tensor, mass: float = GAMUT_MASS,
                       names: tuple[str, str] = ("reference pixels", "other pixels")) -> float:
    """The fraction of ``other``'s pixels whose colour the reference pixels (almost) never have.

    ``ref`` and ``other`` are (P, C) pixel values in [0, 1], C of 1 or 3 (e.g. every lesion pixel of
    the real train images, and of a synthetic set). Colours are binned (:data:`GAMUT_BINS` steps per
    channel); the gamut is the smallest set of cells, fullest first, that holds ``mass`` of the
    reference pixels. ``ref`` against itself gives at most ``1 - mass``. It is a check on colour that
    whole-image features miss when the region is small: off-hue fringes, saturated or black blotches
    inside a generated lesion."""
    for name, x in zip(names, (ref, other)):
        if x.ndim != 2 or x.shape[1] not in GAMUT_BINS:
            raise DataError(f"the colour gamut needs (pixels, 1 or 3 channels); the {name} are {_shape(x)}")
        if len(x) == 0:
            raise DataError(f"the colour gamut needs pixels; the {name} have none")
    if ref.shape[1] != other.shape[1]:
        raise DataError(f"the {names[0]} have {ref.shape[1]} channel(s) but the {names[1]} {other.shape[1]}")
    bins = GAMUT_BINS[ref.shape[1]]
    counts = torch.bincount(colour_cells(ref, bins), minlength=bins ** ref.shape[1])
    order = torch.sort(counts, descending=True, stable=True).indices
    # cells until the one that reaches ``mass`` (inclusive): the fewest cells that hold it
    held = int(torch.searchsorted(counts[order].cumsum(0).double(), mass * len(ref))) + 1
    inside = torch.zeros_like(counts, dtype=torch.bool)
    inside[order[:held]] = True
    return float(1.0 - inside[colour_cells(other, bins)].double().mean())


def kid(a: torch.Tensor, b: torch.Tensor, subsets: int = 50, subset_size: int = 100, seed: int = 0,
        names: tuple[str, str] = ("first set", "second set")) -> tuple[float, float]:
    """Kernel Inception Distance (Bińkowski et al. 2018): unbiased MMD² with the cubic polynomial
    kernel, averaged over random subsets; returns (mean, standard deviation over subsets).
    Subsets hold ``min(subset_size, len(a), len(b))`` vectors of each set."""
    from torchmetrics.image.kid import poly_mmd

    if subsets < 1:
        raise DataError(f"KID needs at least 1 subset; subsets is {subsets}")
    if subset_size < 2:
        raise DataError(f"KID needs subsets of at least 2 images (the unbiased MMD); subset_size is {subset_size}")
    _feature_sets("KID", a, b, names, at_least=2)
    m = min(subset_size, len(a), len(b))
    g = torch.Generator().manual_seed(seed)
    vals = []
    for _ in range(subsets):
        ia, ib = torch.randperm(len(a), generator=g)[:m], torch.randperm(len(b), generator=g)[:m]
        vals.append(float(poly_mmd(a[ia].double(), b[ib].double())))
    return float(np.mean(vals)), float(np.std(vals))


def _pairs(what: str, x: torch.Tensor, y: torch.Tensor, min_side: int) -> None:
    _images(what, x, "first images", min_side)
    if x.shape != y.shape:
        raise DataError(f"{what} compares images pair by pair and needs two batches of one shape; got {_shape(x)} and {_shape(y)}")


def ssim_pairs(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM of each pair (x[i], y[i]): (N,) values."""
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    _pairs("SSIM", x, y, SSIM_MIN_SIDE)
    return ssim(x, y, data_range=1.0, reduction="none")


def ms_ssim_pairs(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MS-SSIM (5 scales) of each pair (x[i], y[i]): (N,) values; images of at least 176 px
    (:data:`MS_SSIM_MIN_SIDE`) on both sides."""
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as ms_ssim

    _pairs("MS-SSIM", x, y, MS_SSIM_MIN_SIDE)
    return ms_ssim(x, y, data_range=1.0, reduction="none")


def structural_measure(side: int) -> str:
    """``ms_ssim`` when images whose shorter side is ``side`` px are large enough for 5-scale
    MS-SSIM (:data:`MS_SSIM_MIN_SIDE`), otherwise ``ssim``."""
    return "ms_ssim" if side >= MS_SSIM_MIN_SIDE else "ssim"


def mean_pairwise_similarity(images: torch.Tensor, max_pairs: int = 200, seed: int = 0) -> float | None:
    """Mean (MS-)SSIM over distinct pairs of ``images`` (all pairs, or ``max_pairs`` random ones).
    1.0 for identical images; lower means more diverse. None with fewer than 2 images."""
    if max_pairs < 1:
        raise DataError(f"the diversity measure needs max_pairs of at least 1; max_pairs is {max_pairs}")
    _images("the diversity measure", images, "images")
    n = len(images)
    if n < 2:
        return None
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    if len(pairs) > max_pairs:
        rng = np.random.default_rng(seed)
        pairs = [pairs[k] for k in rng.choice(len(pairs), max_pairs, replace=False)]
    i, j = (torch.tensor(v) for v in zip(*pairs))
    fn = ms_ssim_pairs if structural_measure(min(images.shape[-2:])) == "ms_ssim" else ssim_pairs
    return float(fn(images[i], images[j]).mean())


class SSIMIndex:
    """SSIM of one query image against many references at once (nearest-neighbour search).

    The same index as torchmetrics' ``structural_similarity_index_measure`` (Gaussian window,
    sigma 1.5, 11 px, K1 0.01, K2 0.03, data range 1; images reflection-padded by 5 px so the SSIM
    map is H x W, and every pixel of it averaged: no border is cropped), but the
    references' local means and variances are filtered once and each query costs one separable
    filtering of (reference x query) products, instead of five per pair. The separable Gaussian
    is applied as two matrix products with banded matrices (the "valid" part of the filter):
    on a CPU a 1-channel convolution is several times slower than the equivalent GEMM (BUSI 64
    px, 546 references: 145 ms per query as convolutions, 36 ms as matmuls). Checked against
    torchmetrics in the tests.
    """

    def __init__(self, refs: torch.Tensor, sigma: float = 1.5) -> None:
        import torch.nn.functional as F

        self.F = F
        size = int(3.5 * sigma + 0.5) * 2 + 1
        self.pad = (size - 1) // 2
        _images("the SSIM index", refs, "references", min_side=self.pad + 1)
        self.shape = tuple(refs.shape[1:])
        x = torch.arange(size, dtype=torch.float32) - self.pad
        g = torch.exp(-(x**2) / (2 * sigma**2))
        self.g = g / g.sum()
        self.c1, self.c2 = 0.01**2, 0.03**2
        _, h, w = self.shape
        self.rows, self.cols = self._band(h).t().contiguous(), self._band(w)
        self.refs = self._padded(refs.float())
        self.mu_r = self._filter(self.refs)
        var_r = self._filter(self.refs * self.refs) - self.mu_r**2
        # The per-reference parts of SSIM's denominator, computed once.
        self.mu_r2_c1, self.var_r_c2 = self.mu_r**2 + self.c1, var_r + self.c2

    def _band(self, side: int) -> torch.Tensor:
        """(side + 2 pad, side): column j holds the Gaussian taps at rows j .. j + 2 pad."""
        taps = len(self.g)
        band = torch.zeros(side + taps - 1, side)
        for j in range(side):
            band[j:j + taps, j] = self.g
        return band

    def _padded(self, x: torch.Tensor) -> torch.Tensor:
        return self.F.pad(x, (self.pad,) * 4, mode="reflect")

    def _filter(self, x: torch.Tensor) -> torch.Tensor:
        """Padded (N, C, H + 2 pad, W + 2 pad) -> Gaussian-filtered (N, C, H, W)."""
        return self.rows @ x @ self.cols

    def __call__(self, query: torch.Tensor) -> torch.Tensor:
        """(C, H, W) -> SSIM against every reference, (M,)."""
        if tuple(query.shape) != self.shape:
            raise DataError(f"the SSIM index needs a query of the references' (C, H, W) = {self.shape}; got {tuple(query.shape)}")
        q = self._padded(query.float()[None])
        mu_q = self._filter(q)
        var_q = self._filter(q * q) - mu_q**2
        cov = self._filter(self.refs * q) - mu_q * self.mu_r
        num = (2 * mu_q * self.mu_r + self.c1) * (2 * cov + self.c2)
        den = (self.mu_r2_c1 + mu_q**2) * (self.var_r_c2 + var_q)
        return (num / den).flatten(1).mean(1)


def nearest_ssim(queries: torch.Tensor, refs: torch.Tensor, exclude_self: bool = False,
                 exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query image, the reference with the highest SSIM: (best ssim (Q,), index (Q,)).
    ``exclude_self`` skips the same index (queries and refs the same set); ``exclude`` (Q,) int64
    skips one reference per query (-1: none), e.g. the real background an inpainted image keeps."""
    for x, name in ((queries, "queries"), (refs, "references")):
        _images("nearest-neighbour SSIM", x, name)
    if queries.shape[1:] != refs.shape[1:]:
        raise DataError(
            f"nearest-neighbour SSIM needs queries of the references' (C, H, W) = {tuple(refs.shape[1:])}; "
            f"got {tuple(queries.shape[1:])}"
        )
    _neighbours("nearest-neighbour SSIM", queries, refs, exclude_self)
    index = SSIMIndex(refs)
    best, arg = torch.empty(len(queries)), torch.empty(len(queries), dtype=torch.int64)
    for q in track(range(len(queries)), len(queries), "nearest-neighbour SSIM", "images"):
        vals = index(queries[q])
        if exclude_self:
            vals[q] = -2.0
        if exclude is not None and int(exclude[q]) >= 0:
            vals[int(exclude[q])] = -2.0
        best[q], arg[q] = vals.max(0)
    return best, arg


def _neighbours(what: str, queries: torch.Tensor, refs: torch.Tensor, exclude_self: bool) -> None:
    if len(refs) == 0:
        raise DataError(f"{what} needs at least 1 reference image; got none")
    if exclude_self and (len(queries) != len(refs) or len(refs) < 2):
        raise DataError(
            f"{what} with exclude_self needs one set of at least 2 images as queries and references; "
            f"got {len(queries)} queries and {len(refs)} references"
        )


def nearest_distance(queries: torch.Tensor, refs: torch.Tensor, exclude_self: bool = False,
                     exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean nearest neighbour in feature space: (distance (Q,), index (Q,)); ``exclude`` as
    in :func:`nearest_ssim`."""
    _feature_sets("the nearest-neighbour distance", queries, refs, ("query set", "reference set"), at_least=0)
    _neighbours("the nearest-neighbour distance", queries, refs, exclude_self)
    d = torch.cdist(queries.double(), refs.double())
    if exclude_self:
        d.fill_diagonal_(float("inf"))
    if exclude is not None:
        rows = torch.nonzero(exclude >= 0).flatten()
        d[rows, exclude[rows]] = float("inf")
    dist, arg = d.min(1)
    return dist.float(), arg


def copy_thresholds(real_nn_ssim: torch.Tensor, real_nn_dist: torch.Tensor, percentile: float = 1.0) -> tuple[float, float]:
    """Thresholds from real-to-real nearest neighbours of the train split: a synthetic image is a
    copy when it is closer to a training image than all but ``percentile`` % of real images are
    to their own nearest other training image (SSIM above the (100 - p)th percentile, or feature
    distance below the p-th percentile)."""
    if not 0 <= percentile <= 100:
        raise DataError(f"copy thresholds need a percentile in 0..100; percentile is {percentile}")
    if len(real_nn_ssim) == 0 or len(real_nn_dist) == 0:
        raise DataError(
            f"copy thresholds need at least 1 real nearest-neighbour value; got {len(real_nn_ssim)} SSIM and {len(real_nn_dist)} distance values"
        )
    return (float(np.percentile(real_nn_ssim.numpy(), 100 - percentile)),
            float(np.percentile(real_nn_dist.numpy(), percentile)))


# ---- a generator's own parts on held-out pairs ----

HELDOUT_BATCH = 64  # pairs per model call, which bounds the memory of 256 val pairs at 256 px


def dice_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Foreground Dice of each mask pair: ``pred`` and ``target`` (N, H, W) class indices,
    foreground = any class > 0 -> (N,) float32; 1.0 when both masks are empty."""
    p, t = (pred > 0).flatten(1).float(), (target > 0).flatten(1).float()
    inter, total = (p * t).sum(1), p.sum(1) + t.sum(1)
    return torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))


def psnr_pairs(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of each pair (x[i], y[i]), images (N, C, H, W) in [0, 1] (data range 1): (N,)
    values. The MSE is floored at 1e-10, so identical images give 100 dB, not infinity."""
    _pairs("PSNR", x, y, min_side=1)
    mse = (x - y).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(1 / mse)


def codebook_usage(codes: torch.Tensor, size: int) -> tuple[float, float]:
    """Share of a codebook's ``size`` codes that ``codes`` (int64 indices, any shape) use, and
    the perplexity of their frequencies (exp of the entropy in nats: 1 when one code takes all,
    ``size`` when all are used equally)."""
    counts = torch.bincount(codes.flatten(), minlength=size).float()
    p = counts / counts.sum()
    return float((counts > 0).float().mean()), float(torch.exp(-(p * p.clamp_min(1e-12).log()).sum()))


def _heldout_pairs(what: str, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor | None) -> None:
    if images.ndim != 4:
        raise DataError(f"the held-out measures need {what} images as (N, C, H, W); they have shape {_shape(images)}")
    n = len(images)
    if n == 0:
        raise DataError(f"the held-out measures need at least 1 pair; the {what} pairs are none")
    if tuple(masks.shape) != (n, *images.shape[2:]):
        raise DataError(f"the held-out measures need {what} masks as (N, H, W) = ({n}, {images.shape[2]}, {images.shape[3]}) "
                        f"for images {_shape(images)}; the masks have shape {_shape(masks)}")
    if labels is not None and tuple(labels.shape) != (n,):
        raise DataError(f"the held-out measures need one {what} label per image, ({n},); the labels have shape {_shape(labels)}")


def _chunks(n: int) -> list[slice]:
    return [slice(i, i + HELDOUT_BATCH) for i in range(0, n, HELDOUT_BATCH)]


def _prior_scores(model, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """``{prior_{level}_nll: nats per token, prior_{level}_accuracy: share}`` over chunks of
    HELDOUT_BATCH pairs (each chunk's mean over its scored tokens, weighted by its pairs), with
    one masking draw seeded 0 (a generator on the model's device) so two sets are measured alike."""
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(0)
    sums: dict[str, float] = {}
    for s in _chunks(len(images)):
        n = len(images[s])
        for level, (logits, target) in model.prior_logits(images[s], masks[s], labels[s], g).items():
            nll = torch.nn.functional.cross_entropy(logits, target)
            acc = (logits.argmax(-1) == target).float().mean()
            for name, value in ((f"prior_{level}_nll", nll), (f"prior_{level}_accuracy", acc)):
                sums[name] = sums.get(name, 0.0) + float(value) * n
    return {k: v / len(images) for k, v in sums.items()}


@torch.no_grad()
def generator_heldout(model, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor | None = None,
                      train: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> dict[str, float]:
    """What a trained generator's own parts do on held-out pairs, as one flat ``{name: float}``.

    ``images`` (N, C, H, W) float32 in [0, 1], ``masks`` (N, H, W) int64 class indices, ``labels``
    (N,) int64, on the CPU; ``train`` = (images, masks, labels) of the generator's training pairs,
    alike. The model (in eval mode, as training leaves it and loading returns it) is duck-typed;
    each part is measured when the model exposes it, in chunks of ``HELDOUT_BATCH`` pairs:

    * ``reconstruct(images, masks)`` (a two-stage family's autoencoder): ``autoencoder_psnr`` (dB)
      and ``autoencoder_ssim``, means over the pairs, and ``autoencoder_mask_dice``, the mean
      :func:`dice_per_image` of the decoded masks over pairs with a lesion (absent when the
      decoder is given the mask, or no pair has a lesion);
    * ``codes(images, masks)`` with ``codebook_sizes``: per level (e.g. ``top``),
      ``{level}_codebook_usage`` and ``{level}_perplexity`` (:func:`codebook_usage`) of the codes
      the pairs use;
    * ``prior_logits(images, masks, labels, generator)`` (token priors): per level,
      ``prior_{level}_nll_val`` (nats per token) and ``prior_{level}_accuracy_val`` when ``labels``
      are given, and ``prior_{level}_nll_train`` / ``prior_{level}_accuracy_train`` on ``train``
      when it is given, measured alike (one masking draw seeded 0 each): a wide gap means the
      priors memorise their few training code maps.

    ``n_pairs`` (N, as a float) comes with any of them; a model that exposes none (cvae) gives {}.
    Nothing is rounded.
    """
    _heldout_pairs("held-out", images, masks, labels)
    if train is not None:
        _heldout_pairs("training", *train)
    out: dict[str, float] = {}
    if hasattr(model, "reconstruct"):
        parts = [model.reconstruct(images[s], masks[s]) for s in _chunks(len(images))]
        rec = torch.cat([r for r, _ in parts])
        out["autoencoder_psnr"] = float(psnr_pairs(rec, images).mean())
        out["autoencoder_ssim"] = float(ssim_pairs(rec, images).mean())
        if parts[0][1] is not None:  # None: the decoder is given the mask, there is none to score
            lesion = masks.flatten(1).gt(0).any(1)
            if bool(lesion.any()):
                out["autoencoder_mask_dice"] = float(dice_per_image(torch.cat([m for _, m in parts]), masks)[lesion].mean())
    if hasattr(model, "codes"):
        parts = [model.codes(images[s], masks[s]) for s in _chunks(len(images))]
        for level, size in model.codebook_sizes.items():
            usage, perplexity = codebook_usage(torch.cat([p[level] for p in parts]), size)
            out[f"{level}_codebook_usage"], out[f"{level}_perplexity"] = usage, perplexity
    if hasattr(model, "prior_logits"):
        sets = ([("val", (images, masks, labels))] if labels is not None else []) + ([("train", train)] if train is not None else [])
        for split, pairs in sets:
            out.update({f"{k}_{split}": v for k, v in _prior_scores(model, *pairs).items()})
    if out:
        out["n_pairs"] = float(len(images))
    return out


def prdc(real: torch.Tensor, fake: torch.Tensor, k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage of Naeem et al. 2020 ("Reliable Fidelity and
    Diversity Metrics for Generative Models", ICML; reference implementation: clovaai's ``prdc``).

    ``real``: (N, D), ``fake``: (M, D) finite float features, N > k and M > k, one D; distances are
    Euclidean, from ``torch.cdist`` in float64. Each real point i has a ball of radius r_i, the
    distance to its k-th nearest neighbour among the *other* real points (itself excluded by
    index, so a duplicate counts as a neighbour at distance 0); fake radii come the same way from
    fake-fake distances. "Inside a ball" is strict, ``d < r``, as in the reference (a duplicate
    k-th neighbour gives an empty ball).

    - precision: share of fake points inside at least one real ball;
    - recall: share of real points inside at least one fake ball;
    - density: ``(1 / (k M)) * sum over fake j of #{real i : d(i, j) < r_i}``; unbounded above,
      about 1 when fake and real come from one distribution;
    - coverage: share of real points i whose nearest fake point lies within r_i.

    Returns ``{"precision", "recall", "density", "coverage"}`` as floats; nothing is rounded.
    """
    what = f"precision/recall/density/coverage with k={k}"
    if k < 1:
        raise DataError(f"precision/recall/density/coverage needs k >= 1 nearest neighbours; k is {k}")
    _feature_sets(what, real, fake, ("real set", "fake set"), at_least=0)
    short = [f"the {name} has {len(x)}" for x, name in ((real, "real set"), (fake, "fake set")) if len(x) <= k]
    if short:
        raise DataError(f"{what} needs more than k={k} points per set (a k-th neighbour besides itself); {' and '.join(short)}")
    bad = [name for x, name in ((real, "real set"), (fake, "fake set")) if not bool(torch.isfinite(x).all())]
    if bad:
        raise DataError(f"{what} needs finite features; the {' and the '.join(bad)} {'contain' if len(bad) > 1 else 'contains'} NaN or infinity")
    x, y = real.detach().double().cpu(), fake.detach().double().cpu()
    # direct differences, not the |a|² + |b|² - 2ab matrix product: that one rounds the distance of
    # a point to itself or a near-duplicate to ~1e-8 instead of 0, which can flip a "d < r" test
    mode = "donot_use_mm_for_euclid_dist"

    def radii(z: torch.Tensor) -> torch.Tensor:
        d = torch.cdist(z, z, compute_mode=mode)
        d.fill_diagonal_(float("inf"))
        return d.kthvalue(k, dim=1).values

    r_real, r_fake = radii(x), radii(y)
    d = torch.cdist(x, y, compute_mode=mode)  # (N, M): real i to fake j
    in_real = d < r_real[:, None]  # fake j inside real ball i
    return {
        "precision": float(in_real.any(0).double().mean()),
        "recall": float((d < r_fake[None, :]).any(1).double().mean()),
        "density": float(in_real.sum(0).double().mean() / k),
        "coverage": float((d.min(1).values < r_real).double().mean()),
    }


# ---- the Fréchet Radiomics Distance ----

def frd_from_features(ref: np.ndarray, other: np.ndarray, names: tuple[str, str] = ("reference set", "other set"),
                      log: bool = False) -> float:
    """The Fréchet Radiomics Distance (FRDv1 of Konz, Osuala et al. 2026, as frd-score 1.0.1
    computes it) between two radiomic feature sets: ``ref`` (N, F) and ``other`` (M, F), each
    row one image (:func:`augment.radiomics.radiomic_features`). Not symmetric: ``ref`` is the
    package's first set (D1), the one the features are normalised by (the real train split in
    the audit, for the value and for its real-vs-real baseline alike).

    The package's steps: features cast to float32; per set, images with a NaN feature dropped;
    both sets z-scored by ``ref``'s mean and standard deviation (population, ddof 0); feature
    columns that are NaN or infinite in either set afterwards dropped (e.g. a feature constant
    in ``ref``); then the Fréchet distance between Gaussians fitted to the two sets
    (:func:`frechet_distance`: the package's own formula, computed without ``sqrtm``; they
    agree to about 1e-7 relative). Returns that squared distance, >= 0; with ``log`` its
    natural log, the number frd-score's FRDv1 reports (``-inf`` for 0, as there).
    A set with fewer than 2 usable images, or no usable feature, is a DataError."""
    sets = []
    for x, name in zip((ref, other), names):
        x = np.asarray(x)
        if x.ndim != 2:
            raise DataError(f"the FRD needs (N, F) radiomic feature matrices; the {name} has shape {x.shape}")
        sets.append(x.astype(np.float32))
    if sets[0].shape[1] != sets[1].shape[1]:
        raise DataError(f"the FRD needs radiomic features of one length; the {names[0]} has {sets[0].shape[1]}, the {names[1]} {sets[1].shape[1]}")
    sets = [x[~np.isnan(x).any(1)] for x in sets]
    short = [f"the {name} has {len(x)}" for x, name in zip(sets, names) if len(x) < 2]
    if short:
        raise DataError(f"the FRD needs at least 2 images per set with finite radiomic features; {' and '.join(short)}")
    mean, std = sets[0].mean(0), sets[0].std(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = [(x - mean) / std for x in sets]
    keep = np.isfinite(z[0]).all(0) & np.isfinite(z[1]).all(0)
    if not keep.any():
        raise DataError(f"the FRD has no radiomic feature left: every one is constant in the {names[0]} or not finite")
    d = frechet_distance(*(torch.from_numpy(x[:, keep].astype(np.float64)) for x in z), names=names)
    return (math.log(d) if d > 0 else float("-inf")) if log else d


def frd(real_images, fake_images, log: bool = False) -> float:
    """The Fréchet Radiomics Distance of ``fake_images`` to ``real_images`` (the reference the
    features are normalised by): images (N, C, H, W) float in [0, 1], a tensor or an array, at
    their working size, grey (channels averaged), the whole image as the region of interest
    (:func:`augment.radiomics.radiomic_features`; 0.1-0.3 s per image). ``log``: as
    :func:`frd_from_features`."""
    from augment.radiomics import radiomic_features

    return frd_from_features(radiomic_features(real_images, "real images"), radiomic_features(fake_images, "fake images"),
                             ("real set", "fake set"), log=log)
