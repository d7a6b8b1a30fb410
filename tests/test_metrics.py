"""Quality metrics on known cases."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from augment.metrics import (
    HELDOUT_BATCH, SSIMIndex, codebook_usage, copy_thresholds, dice_per_image, frechet_distance, generator_heldout, kid,
    mean_pairwise_similarity, ms_ssim_pairs, nearest_distance, nearest_ssim, psnr_pairs, ssim_pairs, structural_measure,
)


def test_identical_sets_have_zero_distance():
    f = torch.randn(300, 8, generator=torch.Generator().manual_seed(0))
    assert frechet_distance(f, f) == pytest.approx(0.0, abs=1e-6)
    # Unbiased MMD of a set with itself is ~0: only the O(1/m) diagonal terms remain, small next to a shift.
    same, spread = kid(f, f, subsets=10, subset_size=300)
    shifted, _ = kid(f, f + 0.5, subsets=10, subset_size=300)
    assert abs(same) < 0.1 * shifted and spread == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_matches_the_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, -1.0, 2.5])
    a1 = rng.normal(size=(3, 3))
    s1, s2 = a1 @ a1.T + np.eye(3), np.diag([0.5, 2.0, 1.0])
    x = rng.multivariate_normal(mu1, s1, size=40000)
    y = rng.multivariate_normal(mu2, s2, size=40000)
    m1, m2, c1, c2 = x.mean(0), y.mean(0), np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    closed = np.sum((m1 - m2) ** 2) + np.trace(c1 + c2 - 2 * scipy.linalg.sqrtm(c1 @ c2).real)
    assert frechet_distance(torch.tensor(x), torch.tensor(y)) == pytest.approx(closed, rel=1e-6)
    population = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(torch.tensor(x), torch.tensor(y)) == pytest.approx(population, rel=0.05)


def test_kid_grows_with_a_shift():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(400, 16, generator=g), torch.randn(400, 16, generator=g)
    near, _ = kid(a, b, subsets=20, subset_size=100)
    far, _ = kid(a, b + 1.0, subsets=20, subset_size=100)
    assert far > 10 * abs(near) and far > 0


def test_diversity_of_identical_images_is_one_and_of_noise_is_low():
    img = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    assert mean_pairwise_similarity(img.expand(5, -1, -1, -1).clone()) == pytest.approx(1.0, abs=1e-5)
    noise = torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    assert mean_pairwise_similarity(noise) < 0.2
    assert mean_pairwise_similarity(noise[:1]) is None
    assert structural_measure(64) == "ssim" and structural_measure(256) == "ms_ssim"


def test_ms_ssim_used_on_large_images():
    img = torch.rand(1, 1, 192, 192, generator=torch.Generator().manual_seed(0))
    assert mean_pairwise_similarity(img.expand(3, -1, -1, -1).clone()) == pytest.approx(1.0, abs=1e-5)


def test_nearest_neighbours_find_the_planted_copy():
    g = torch.Generator().manual_seed(2)
    refs = torch.rand(10, 1, 16, 16, generator=g)
    queries = torch.cat([torch.rand(3, 1, 16, 16, generator=g), refs[7:8]])
    best, idx = nearest_ssim(queries, refs)
    assert idx[3] == 7 and best[3] == pytest.approx(1.0, abs=1e-5) and (best[:3] < 0.5).all()
    feats = refs.flatten(1)
    dist, didx = nearest_distance(queries.flatten(1), feats)
    assert didx[3] == 7 and dist[3] == pytest.approx(0.0, abs=1e-4)
    self_best, self_idx = nearest_ssim(refs, refs, exclude_self=True)
    assert (self_idx != torch.arange(10)).all() and (self_best < 0.99).all()


def test_copy_thresholds_are_percentiles():
    ssim = torch.linspace(0, 1, 101)
    dist = torch.linspace(0, 100, 101)
    t_ssim, t_dist = copy_thresholds(ssim, dist, percentile=1.0)
    assert t_ssim == pytest.approx(0.99) and t_dist == pytest.approx(1.0)


@pytest.mark.parametrize("channels,size", [(1, 16), (3, 24), (1, 64), (1, (20, 32))])
def test_ssim_index_matches_torchmetrics(channels, size):
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    h, w = size if isinstance(size, tuple) else (size, size)  # not square: the two banded filters differ
    g = torch.Generator().manual_seed(h * w)
    refs = torch.rand(7, channels, h, w, generator=g)
    refs[3] = refs[0] * 0.8 + 0.1  # a related pair, so values are not all near 0
    query = refs[0]
    expected = ssim(query.expand(7, -1, -1, -1), refs, data_range=1.0, reduction="none")
    assert torch.allclose(SSIMIndex(refs)(query), expected, atol=1e-5)


def test_dice_per_image_known_values_and_the_downstream_figures_use_it():
    from augment.downstream import seg_metrics

    target = torch.zeros(4, 4, 4, dtype=torch.int64)
    target[0, :2, :2] = 1  # 4 px
    target[1, :2, :2] = 2  # any class > 0 is foreground
    target[2, 0, 0] = 1
    pred = torch.zeros_like(target)
    pred[0, :2, :1] = 1  # 2 px inside: 2 * 2 / (2 + 4)
    pred[1, :2, :2] = 1  # the same foreground, another class: 1
    pred[3, 3, 3] = 1  # a lesion where there is none: 0; image 2 misses its lesion: 0
    assert dice_per_image(pred, target).tolist() == pytest.approx([2 / 3, 1.0, 0.0, 0.0])
    assert dice_per_image(target[3:], target[3:]).tolist() == [1.0]  # both empty
    got = seg_metrics(pred, target)
    assert got["dice"] == pytest.approx((2 / 3 + 1 + 0) / 3) and got["fpr"] == 1.0
    assert got["dice_all"] == pytest.approx((2 / 3 + 1) / 4)


def test_psnr_and_codebook_usage_known_values():
    x = torch.zeros(2, 1, 4, 4)
    y = torch.stack([torch.full((1, 4, 4), 0.1), torch.zeros(1, 4, 4)])
    assert psnr_pairs(x, y).tolist() == pytest.approx([20.0, 100.0])  # MSE 0.01; identical: floored at 1e-10
    assert codebook_usage(torch.tensor([[0, 0], [1, 1]]), 4) == pytest.approx((0.5, 2.0))
    assert codebook_usage(torch.tensor([3, 3, 3]), 4) == pytest.approx((0.25, 1.0))


class _Parts(torch.nn.Module):
    """A duck-typed generator: the identity round trip, fixed code maps and a prior that scores
    one position per pair with uniform logits over 4 codes, the label as the true code."""

    def __init__(self, give_mask: bool = True) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.give_mask, self.calls = give_mask, []
        self.codebook_sizes = {"top": 4}

    def reconstruct(self, images, masks):
        self.calls.append(len(images))
        return images.clone(), masks.clone() if self.give_mask else None

    def codes(self, images, masks):
        return {"top": torch.arange(len(images))[:, None, None] % 2}

    def prior_logits(self, images, masks, labels, generator):
        return {"top": (torch.zeros(len(images), 4), labels.clone())}


def test_heldout_of_an_identity_round_trip_is_perfect_and_flat():
    g = torch.Generator().manual_seed(0)
    n = HELDOUT_BATCH + 6
    images = torch.rand(n, 1, 8, 8, generator=g)
    masks = torch.zeros(n, 8, 8, dtype=torch.int64)
    masks[::2, 2:5, 2:5] = 1
    labels = torch.tensor([0, 1, 2, 3] * (n // 4) + [0, 1][: n % 4])
    model = _Parts()
    got = generator_heldout(model, images, masks, labels, train=(images[:4], masks[:4], torch.tensor([0, 0, 0, 1])))
    assert model.calls == [HELDOUT_BATCH, 6]  # measured in chunks
    assert all(type(v) is float for v in got.values())
    assert got == pytest.approx({
        "autoencoder_psnr": 100.0, "autoencoder_ssim": 1.0, "autoencoder_mask_dice": 1.0,
        "top_codebook_usage": 0.5, "top_perplexity": 2.0,
        "prior_top_nll_val": float(np.log(4)), "prior_top_accuracy_val": float((labels == 0).float().mean()),
        "prior_top_nll_train": float(np.log(4)), "prior_top_accuracy_train": 0.75, "n_pairs": float(n),
    }, abs=1e-6)


def test_heldout_leaves_out_what_it_cannot_measure():
    images, masks = torch.rand(3, 1, 8, 8), torch.zeros(3, 8, 8, dtype=torch.int64)
    assert "autoencoder_mask_dice" not in generator_heldout(_Parts(), images, masks)  # no lesion among the pairs
    masks[0, 2:4, 2:4] = 1
    assert "autoencoder_mask_dice" not in generator_heldout(_Parts(give_mask=False), images, masks)  # the mask is given
    got = generator_heldout(_Parts(), images, masks)
    assert got["autoencoder_mask_dice"] == 1.0 and not any(k.startswith("prior_") for k in got)  # no labels, no train


def test_heldout_of_a_family_that_exposes_nothing_is_empty():
    from augment.generators import DataSpec, build
    from augment.generators.cvae import CVAEConfig

    model = build(CVAEConfig(), DataSpec(image_size=16, channels=1, num_classes=2, mask_classes=2)).eval()
    assert generator_heldout(model, torch.rand(2, 1, 16, 16), torch.zeros(2, 16, 16, dtype=torch.int64), torch.tensor([0, 1])) == {}


# ---- inputs a metric cannot use: one DataError saying what is needed and what was given ----

F8 = torch.zeros(8, 4)
IMG = torch.zeros(3, 1, 16, 16)


@pytest.mark.parametrize("call,match", [
    (lambda: frechet_distance(F8[:1], F8, names=("synthetic set", "real set")),
     r"^the Fréchet distance needs at least 2 images per set; the synthetic set has 1$"),
    (lambda: frechet_distance(F8, F8[:0]), r"^the Fréchet distance needs at least 2 images per set; the second set has 0$"),
    (lambda: frechet_distance(F8, torch.zeros(8, 3)), r"^the Fréchet distance needs features of one dimension; the first set has 4, the second set 3$"),
    (lambda: frechet_distance(torch.zeros(8), F8), r"^the Fréchet distance needs \(N, D\) feature matrices; the first set has shape \(8\)$"),
    (lambda: kid(F8[:1], F8[:1]), r"^KID needs at least 2 images per set; the first set has 1 and the second set has 1$"),
    (lambda: kid(F8, torch.zeros(8, 5)), r"^KID needs features of one dimension; the first set has 4, the second set 5$"),
    (lambda: kid(F8, F8, subsets=0), r"^KID needs at least 1 subset; subsets is 0$"),
    (lambda: kid(F8, F8, subset_size=1), r"^KID needs subsets of at least 2 images \(the unbiased MMD\); subset_size is 1$"),
    (lambda: ssim_pairs(IMG, IMG[:2]), r"^SSIM compares images pair by pair and needs two batches of one shape; got \(3, 1, 16, 16\) and \(2, 1, 16, 16\)$"),
    (lambda: ssim_pairs(IMG[0], IMG[0]), r"^SSIM needs images as \(N, C, H, W\); the first images have shape \(1, 16, 16\)$"),
    (lambda: ssim_pairs(IMG[..., :5, :5], IMG[..., :5, :5]), r"^SSIM needs images of at least 6x6 px; the first images are 5x5$"),
    (lambda: ms_ssim_pairs(IMG, IMG), r"^MS-SSIM needs images of at least 176x176 px; the first images are 16x16$"),
    (lambda: mean_pairwise_similarity(IMG[..., :4], max_pairs=5), r"^the diversity measure needs images of at least 6x6 px; the images are 4x16$"),
    (lambda: mean_pairwise_similarity(IMG, max_pairs=0), r"^the diversity measure needs max_pairs of at least 1; max_pairs is 0$"),
    (lambda: SSIMIndex(IMG[:, 0]), r"^the SSIM index needs images as \(N, C, H, W\); the references have shape \(3, 16, 16\)$"),
    (lambda: SSIMIndex(IMG[..., :5]), r"^the SSIM index needs images of at least 6x6 px; the references are 5x16$"),
    (lambda: SSIMIndex(IMG)(IMG[0, :, :8]), r"^the SSIM index needs a query of the references' \(C, H, W\) = \(1, 16, 16\); got \(1, 8, 16\)$"),
    (lambda: nearest_ssim(IMG, IMG[:0]), r"^nearest-neighbour SSIM needs at least 1 reference image; got none$"),
    (lambda: nearest_ssim(IMG, torch.zeros(3, 3, 16, 16)),
     r"^nearest-neighbour SSIM needs queries of the references' \(C, H, W\) = \(3, 16, 16\); got \(1, 16, 16\)$"),
    (lambda: nearest_ssim(IMG[:1], IMG[:1], exclude_self=True),
     r"^nearest-neighbour SSIM with exclude_self needs one set of at least 2 images as queries and references; got 1 queries and 1 references$"),
    (lambda: nearest_distance(F8, F8[:0]), r"^the nearest-neighbour distance needs at least 1 reference image; got none$"),
    (lambda: nearest_distance(F8, torch.zeros(2, 3)),
     r"^the nearest-neighbour distance needs features of one dimension; the query set has 4, the reference set 3$"),
    (lambda: nearest_distance(F8[:2], F8, exclude_self=True), r"with exclude_self needs one set .*; got 2 queries and 8 references$"),
    (lambda: copy_thresholds(torch.zeros(0), torch.zeros(0)),
     r"^copy thresholds need at least 1 real nearest-neighbour value; got 0 SSIM and 0 distance values$"),
    (lambda: copy_thresholds(torch.zeros(3), torch.zeros(3), percentile=101), r"^copy thresholds need a percentile in 0\.\.100; percentile is 101$"),
    (lambda: psnr_pairs(IMG, IMG[:2]), r"^PSNR compares images pair by pair and needs two batches of one shape; got \(3, 1, 16, 16\) and \(2, 1, 16, 16\)$"),
    (lambda: generator_heldout(_Parts(), IMG[:, 0], IMG[:, 0].long()),
     r"^the held-out measures need held-out images as \(N, C, H, W\); they have shape \(3, 16, 16\)$"),
    (lambda: generator_heldout(_Parts(), IMG[:0], IMG[:0, 0].long()), r"^the held-out measures need at least 1 pair; the held-out pairs are none$"),
    (lambda: generator_heldout(_Parts(), IMG, IMG[:2, 0].long()),
     r"^the held-out measures need held-out masks as \(N, H, W\) = \(3, 16, 16\) for images \(3, 1, 16, 16\); the masks have shape \(2, 16, 16\)$"),
    (lambda: generator_heldout(_Parts(), IMG, IMG[:, 0].long(), train=(IMG, IMG[:, 0].long(), torch.zeros(2, dtype=torch.int64))),
     r"^the held-out measures need one training label per image, \(3,\); the labels have shape \(2\)$"),
])
def test_unusable_inputs_raise_one_clear_data_error(call, match):
    from augment.errors import DataError

    with pytest.raises(DataError, match=match):
        call()


# ---- edge cases: the MS-SSIM size limit, 1-d features, constant features, the SSIM index's borders ----

@pytest.mark.parametrize("side", [160, 170, 175, 176, 192])
def test_ms_ssim_is_chosen_exactly_where_torchmetrics_accepts_it(side):
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as tm_ms_ssim

    g = torch.Generator().manual_seed(side)
    images = torch.rand(3, 1, side, side, generator=g)
    images[1] = images[0] * 0.7 + 0.15  # a related pair, so the value is not near 0
    try:
        expected = tm_ms_ssim(images[[0, 0, 1]], images[[1, 2, 2]], data_range=1.0, reduction="none").mean()
    except ValueError:
        expected = None  # torchmetrics refuses this size: the diversity measure must fall back to SSIM
    assert structural_measure(side) == ("ssim" if expected is None else "ms_ssim")
    got = mean_pairwise_similarity(images, max_pairs=10)  # must not crash at any size
    if expected is not None:
        assert got == pytest.approx(float(expected), abs=1e-5)
    else:
        assert got == pytest.approx(float(ssim_pairs(images[[0, 0, 1]], images[[1, 2, 2]]).mean()), abs=1e-5)


def test_ms_ssim_on_non_square_images_looks_at_the_shorter_side():
    images = torch.rand(2, 1, 170, 200, generator=torch.Generator().manual_seed(0))
    assert mean_pairwise_similarity(images) == pytest.approx(float(ssim_pairs(images[:1], images[1:]).mean()), abs=1e-6)
    from augment.errors import DataError

    with pytest.raises(DataError, match=r"^MS-SSIM needs images of at least 176x176 px; the first images are 200x170$"):
        ms_ssim_pairs(images[:1], images[1:])


def _frechet_scipy(x: np.ndarray, y: np.ndarray) -> float:
    """The FID formula with numpy / scipy: covariances with N - 1, scipy's sqrtm (real part)."""
    c1, c2 = np.atleast_2d(np.cov(x, rowvar=False)), np.atleast_2d(np.cov(y, rowvar=False))
    root = scipy.linalg.sqrtm(c1 @ c2)
    return float(np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(c1) + np.trace(c2) - 2 * np.trace(np.real(root)))


@pytest.mark.parametrize("n_a,n_b", [(2, 2), (2, 7), (50, 40)])
def test_frechet_distance_of_one_dimensional_features_matches_scipy(n_a, n_b):
    g = torch.Generator().manual_seed(n_a * 100 + n_b)
    a, b = torch.randn(n_a, 1, generator=g, dtype=torch.float64), 2 * torch.randn(n_b, 1, generator=g, dtype=torch.float64) + 1
    x, y = a.numpy(), b.numpy()
    closed = float((x.mean() - y.mean()) ** 2 + x.var(ddof=1) + y.var(ddof=1) - 2 * np.sqrt(x.var(ddof=1) * y.var(ddof=1)))
    assert frechet_distance(a, b) == pytest.approx(closed, rel=1e-9, abs=1e-12)
    assert frechet_distance(a, b) == pytest.approx(_frechet_scipy(x, y), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("n,d", [(2, 3), (3, 8), (5, 64)])
def test_frechet_distance_with_fewer_samples_than_dimensions_matches_scipy(n, d):
    g = torch.Generator().manual_seed(n * d)
    a, b = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n + 1, d, generator=g, dtype=torch.float64) + 0.3
    got = frechet_distance(a, b)
    assert np.isfinite(got) and got == pytest.approx(_frechet_scipy(a.numpy(), b.numpy()), rel=1e-5)


def test_frechet_distance_of_constant_features_is_the_squared_mean_gap():
    assert frechet_distance(torch.zeros(4, 3), torch.zeros(5, 3)) == 0.0
    assert frechet_distance(torch.zeros(4, 3), torch.ones(5, 3)) == pytest.approx(3.0)
    assert frechet_distance(torch.zeros(4, 1), torch.full((2, 1), 2.0)) == pytest.approx(4.0)


def test_frechet_distance_of_one_sample_is_a_clear_error():
    from augment.errors import DataError

    with pytest.raises(DataError, match=r"^the Fréchet distance needs at least 2 images per set; the first set has 1$"):
        frechet_distance(torch.zeros(1, 1), torch.zeros(3, 1))
    with pytest.raises(DataError, match=r"^the Fréchet distance needs features of at least 1 dimension; the first set has 0$"):
        frechet_distance(torch.zeros(3, 0), torch.zeros(3, 0))


def test_ssim_index_averages_the_whole_reflect_padded_map_as_its_docstring_says():
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    g = torch.Generator().manual_seed(5)
    refs = torch.rand(4, 1, 20, 20, generator=g)
    _, full = ssim(refs[:1].expand(4, -1, -1, -1), refs, data_range=1.0, reduction="none", return_full_image=True)
    got = SSIMIndex(refs)(refs[0])
    assert torch.allclose(got, full.flatten(1).mean(1), atol=1e-5)  # every pixel of the map, borders included
    assert not torch.allclose(got[1:], full[1:, :, 5:-5, 5:-5].flatten(1).mean(1), atol=1e-3)  # not a cropped map
    doc = " ".join(SSIMIndex.__doc__.split())
    assert "reflection-padded" in doc and "crop" not in doc.replace("no border is cropped", "")


def test_off_gamut_fraction_counts_the_pixels_in_colours_the_reference_never_has():
    from augment.errors import DataError
    from augment.metrics import GAMUT_MASS, off_gamut_fraction

    g = torch.Generator().manual_seed(0)
    red = torch.stack([0.6 + 0.3 * torch.rand(4000, generator=g), 0.1 + 0.2 * torch.rand(4000, generator=g),
                       0.1 + 0.2 * torch.rand(4000, generator=g)], 1)  # red-dominant lesion pixels
    assert off_gamut_fraction(red, red) <= 1 - GAMUT_MASS
    fringe = red.clone()
    fringe[::4] = torch.tensor([0.1, 0.45, 0.8])  # a quarter of the pixels blue-green
    assert off_gamut_fraction(red, fringe) == pytest.approx(0.25, abs=1 - GAMUT_MASS)
    assert off_gamut_fraction(red, 1 - red) == 1.0
    grey = red[:, :1]
    assert off_gamut_fraction(grey, torch.ones_like(grey)) == 1.0  # white, where the lesions are mid-grey
    with pytest.raises(DataError, match="synthetic lesions have none"):
        off_gamut_fraction(red, red[:0], names=("real lesions", "synthetic lesions"))
    with pytest.raises(DataError, match="3 channel"):
        off_gamut_fraction(red, grey)
    with pytest.raises(DataError, match=r"1 or 3 channels"):
        off_gamut_fraction(red[:, :2], red[:, :2])
