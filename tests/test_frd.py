"""The Fréchet Radiomics Distance (frd-score's FRDv1) on phantom scans: real vs real is small and
finite, a visibly different set is far, and the number is the package's own."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from augment.data.phantom import phantom_pairs
from augment.errors import DataError
from augment.metrics import frd, frd_from_features
from augment.radiomics import radiomic_features

SIZE, N = 24, 10  # 50 images of 24 px: ~6 s of extraction on a busy core


def _scans(seed: int, n: int = N, size: int = SIZE) -> np.ndarray:
    """(n, 1, size, size) float32 in [0, 1]: phantom scans of one seed."""
    return np.stack([im for im, _, _ in phantom_pairs(n, size, seed=seed)])[:, None].astype(np.float32) / 255


def _corrupted(images: np.ndarray, how: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    if how == "blurred":
        return np.stack([ndimage.gaussian_filter(x, (0, 2, 2)) for x in images])
    if how == "shuffled":  # the same grey levels, the texture destroyed
        return np.stack([rng.permutation(x.ravel()).reshape(x.shape) for x in images])
    return rng.random(images.shape).astype(np.float32)  # uniform noise


@pytest.fixture(scope="module")
def features() -> dict[str, np.ndarray]:
    test = _scans(seed=1)
    sets = {"train": _scans(seed=0), "test": test, **{how: _corrupted(test, how) for how in ("blurred", "shuffled", "noise")}}
    return {name: radiomic_features(x, name) for name, x in sets.items()}


def test_features_are_one_finite_row_per_image(features):
    f = features["train"]
    assert f.shape[0] == N and f.shape[1] > 300 and np.isfinite(f).all()


def test_real_vs_real_is_finite_and_far_below_any_corrupted_set(features):
    real = frd_from_features(features["train"], features["test"])
    assert math.isfinite(real) and real >= 0
    # with 10 images and ~400 features the real-vs-real value is mostly covariance noise (600-950
    # over four seed pairs); shuffled pixels and noise came out 11-37x above it, blurring 1,400x+
    for how, factor in (("blurred", 100), ("shuffled", 5), ("noise", 5)):
        assert frd_from_features(features["train"], features[how]) > factor * real, how
    assert frd_from_features(features["train"], features["train"]) == pytest.approx(0.0, abs=1e-6)


def test_log_is_the_number_frd_score_reports(features):
    plain = frd_from_features(features["train"], features["test"])
    assert frd_from_features(features["train"], features["test"], log=True) == pytest.approx(math.log(plain))


def test_it_equals_frd_scores_own_compute_frd(tmp_path):
    from frd_score import compute_frd

    a, b = _scans(seed=0, n=4, size=16), _scans(seed=1, n=4, size=16)
    for name, images in (("a", a), ("b", b)):
        (tmp_path / name).mkdir()
        for i, x in enumerate(images):
            Image.fromarray(np.round(x[0] * 255).astype(np.uint8)).save(tmp_path / name / f"{i}.png")
    theirs = compute_frd([str(tmp_path / "a"), str(tmp_path / "b")], num_workers=1)
    assert frd(a, b, log=True) == pytest.approx(float(theirs), rel=1e-4)


def test_a_constant_image_is_named(features):
    images = _scans(seed=2, n=3, size=16)
    images[1] = 0.5
    with pytest.raises(DataError, match=r"constant image .*1 of the 3 synthetic set are constant \(first: #1, every pixel 128\)"):
        radiomic_features(images, "synthetic set")


def test_inputs_it_cannot_use_say_why(features):
    f = features["train"]
    with pytest.raises(DataError, match=r"at least 2 images per set .*the other set has 1"):
        frd_from_features(f, f[:1])
    f_nan = features["test"].copy()
    f_nan[1:, 0] = np.nan  # every image but one has a NaN feature: dropped, as frd-score drops them
    with pytest.raises(DataError, match=r"the other set has 1"):
        frd_from_features(f, f_nan)
    with pytest.raises(DataError, match=r"one length; the reference set has \d+, the other set 3"):
        frd_from_features(f, f[:, :3])
    with pytest.raises(DataError, match=r"no radiomic feature left"):
        frd_from_features(np.ones((4, 3)), np.zeros((4, 3)))
    with pytest.raises(DataError, match=r"\(N, C, H, W\)"):
        radiomic_features(np.zeros((2, 16, 16)))


def test_without_the_radiomics_extra_the_audit_says_frd_was_not_computed(monkeypatch):
    import sys

    from augment.radiomics import missing
    from augment.report import radiomics_note

    assert missing() is None  # the dev install has the extra
    monkeypatch.setitem(sys.modules, "frd_score", None)  # import now raises ImportError
    why = missing()
    assert why is not None and "frd_score is not installed" in why and "augment[radiomics]" in why
    note = radiomics_note({"radiomics": [{"computed": True}, {"computed": False, "reason": why}]})
    assert note.startswith("Fréchet Radiomics Distance not computed in 1 audit(s): the Fréchet Radiomics Distance needs")
    assert radiomics_note({"radiomics": [{"computed": True}]}) == ""
