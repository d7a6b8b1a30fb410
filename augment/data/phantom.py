"""Seeded phantom breast-ultrasound-style image + lesion-mask pairs (numpy and scipy only).

For when real data is absent (tests, demos, smoke runs): B-mode-like scans, so models and metrics
meet realistic statistics, fully reproducible. Classes as in BUSI: 0 "normal" (no lesion), 1 "round"
(circumscribed oval, benign-like), 2 "irregular" (spiculated / lobulated, malignant-like).
The scan is built in dB, as a scanner shows it after log compression, so tissue, speckle, depth
attenuation, lesion and posterior effect simply add up. Geometry is in fractions of the image size,
so 16 px and 128 px images look alike.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from scipy import ndimage

PHANTOM_CLASSES: dict[int, str] = {0: "normal", 1: "round", 2: "irregular"}
DEFAULT_PRIORS: tuple[float, float, float] = (0.5, 0.35, 0.15)

_MIN_SIZE = 8
_MIN_LESION_PX = 4  # a lesion must stay visible (and learnable) even at 8 px


def _check_int(name: str, value: object, minimum: int) -> int:
    """`value` as an int >= minimum, else a ValueError naming `name` (bools are not ints here)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def _check_priors(priors: Sequence[float]) -> np.ndarray:
    """Return priors as a normalised (3,) float64 array, or raise ValueError naming `priors`."""
    try:
        p = np.asarray(priors, dtype=np.float64)
    except (TypeError, ValueError):
        p = np.empty(0)
    if p.shape != (len(PHANTOM_CLASSES),):
        raise ValueError(f"priors must be {len(PHANTOM_CLASSES)} numbers (one per class), got {priors!r}")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError(f"priors must be finite and non-negative, got {priors!r}")
    if p.sum() <= 0:
        raise ValueError(f"priors must have a positive sum, got {priors!r}")
    return p / p.sum()


def phantom_labels(count: int, seed: int = 0, priors: Sequence[float] = DEFAULT_PRIORS) -> np.ndarray:
    """(count,) int64 class labels drawn from `priors` (normalised) with a generator seeded by `seed`.

    Every class with a positive prior is present whenever count >= the number of such classes:
    after the i.i.d. draw, each missing class takes a random slot of the currently most common
    class (which must hold >= 2 slots), so imbalance is kept but no class silently vanishes.
    """
    count = _check_int("count", count, 1)
    seed = _check_int("seed", seed, 0)
    p = _check_priors(priors)
    # A child stream: default_rng(seed) itself would equal pair 0's stream, SeedSequence([seed, 0]).
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
    labels = rng.choice(len(p), size=count, p=p).astype(np.int64)
    wanted = np.flatnonzero(p > 0)
    if count >= wanted.size:
        for cls in wanted:
            if not np.any(labels == cls):
                most = np.bincount(labels, minlength=len(p)).argmax()
                labels[rng.choice(np.flatnonzero(labels == most))] = cls
    return labels


def _noise(rng: np.random.Generator, n: int, *sigmas: tuple[float, float]) -> np.ndarray:
    """(len(sigmas), n, n) Gaussian-smoothed white noise, each field zero mean and unit std.

    sigmas are (sigma_y, sigma_x) in fractions of n. Filtering all fields with one FFT is several
    times faster than spatial filtering; the periodic wrap it implies is invisible in texture.
    """
    fy, fx = np.fft.fftfreq(n)[:, None], np.fft.rfftfreq(n)[None, :]  # cycles per pixel
    s = np.asarray(sigmas, dtype=np.float64)[:, :, None, None] * n
    gain = np.exp(-2 * np.pi**2 * ((s[:, 0] * fy) ** 2 + (s[:, 1] * fx) ** 2))
    field = np.fft.irfft2(np.fft.rfft2(rng.standard_normal((len(s), n, n))) * gain, s=(n, n))
    field -= field.mean(axis=(1, 2), keepdims=True)
    return field / (field.std(axis=(1, 2), keepdims=True) + 1e-12)


def _wavy(rng: np.random.Generator, x: np.ndarray, base: float, amp: float) -> np.ndarray:
    """A gently wavy horizontal boundary: depth (fraction) as a function of x (fraction)."""
    k = rng.uniform(0.5, 2.5, (2, 1, 1))  # cycles across the width
    phase, a = rng.uniform(0, 2 * np.pi, (2, 1, 1)), rng.uniform(0.3, 1.0, (2, 1, 1))
    return base + amp * np.sum(a * np.sin(2 * np.pi * k * x + phase), axis=0)


def _tissue_db(rng: np.random.Generator, n: int, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(n, n) echogenicity in dB: skin line, fat, glandular tissue, muscle, plus fine structure.

    y, x: (n, n) pixel-centre coordinates in fractions of n (y is depth).
    """
    row = x[:1]  # boundaries depend on x only: compute them on one (1, n) row, then broadcast
    skin = _wavy(rng, row, rng.uniform(0.03, 0.07), 0.01)
    fat = _wavy(rng, row, rng.uniform(0.15, 0.35), 0.05)
    gland = _wavy(rng, row, rng.uniform(0.6, 0.85), 0.06)
    # Per layer (gel above skin, fat, glandular, muscle): mean level in dB (fat is hypoechoic,
    # gland bright), strength of bright septa, and how much of them are lobular vs fibrous.
    level = np.array([-6.0, -14.0, -8.0, -12.0]) + rng.normal(0.0, 2.0, size=4)
    septa = np.array([4.0, 11.0, 12.0, 12.0]) * rng.uniform(0.6, 1.3, size=4)
    lobular = np.array([0.0, 1.0, 0.5, 0.0])
    lvl, sep, lob = (np.full(y.shape, v[0]) for v in (level, septa, lobular))
    for i, b in enumerate((skin, fat, gland)):
        step = 1 / (1 + np.exp(-(y - b) / 0.02))  # soft: real interfaces are blurred by the beam
        lvl += (level[i + 1] - level[i]) * step
        sep += (septa[i + 1] - septa[i]) * step
        lob += (lobular[i + 1] - lobular[i]) * step
    # Zero-crossings of isotropic smoothed noise form a network of thin curved lines, like fat
    # lobules and their septa; the ridges of noise much wider than tall are long, sparse,
    # near-horizontal bright strands (Cooper ligaments, fascia, muscle fibres).
    strand_len = rng.uniform(0.1, 0.2)
    cells, strands, fading, flecks, patches, grain = _noise(
        rng, n, (0.04, 0.06), (0.025, strand_len), (0.05, 0.12), (0.012, 0.04), (0.08, 0.12), (0.01, 0.02))
    cells = np.exp(-((cells / rng.uniform(0.25, 0.45)) ** 2))
    # Saturate (1 - exp) so a rare extreme ridge cannot outshine the whole scan.
    strands = 1 - np.exp(-2 * np.maximum(strands - rng.uniform(0.5, 1.0), 0.0))
    # Lines fade in and out along their length, as echoes from tilted interfaces do.
    lines = (lob * cells + (1 - lob) * strands) * (0.15 + 0.85 / (1 + np.exp(-2.5 * fading)))
    # The upper tail of fine elongated noise: bright flecks of glandular parenchyma.
    flecks = (1 - np.exp(-np.maximum(flecks - 0.5, 0.0))) * rng.uniform(3, 7)
    patches *= rng.uniform(1.5, 3.5)  # slow gland / fat patchiness
    grain *= rng.uniform(1.0, 2.5)  # granular parenchyma
    skin_line = rng.uniform(6, 12) * np.exp(-(((y - skin) / 0.012) ** 2))
    return lvl + sep * lines + (1 - lob) * flecks + patches + grain + skin_line


def _lesion(rng: np.random.Generator, n: int, y: np.ndarray, x: np.ndarray, label: int) -> np.ndarray:
    """(n, n) signed distance to the lesion edge in pixels, negative inside; y, x as in _tissue_db."""
    irregular = label == 2
    # Radius in fractions of the width; irregular ones are bigger on average, as in BUSI.
    r = rng.uniform(0.13, 0.26) if irregular else rng.uniform(0.09, 0.24)
    r = max(r, 1.6 / n)  # at tiny sizes keep a few whole pixels inside
    if irregular:  # roughly isotropic, any orientation ("not parallel" to the skin)
        aspect, theta = rng.uniform(0.75, 1.3), rng.uniform(-np.pi / 2, np.pi / 2)
    else:  # benign masses tend to be wider than tall, parallel to the skin
        aspect, theta = rng.uniform(1.0, 1.7), rng.uniform(-0.5, 0.5)
    a, b = r * np.sqrt(aspect), r / np.sqrt(aspect)
    cx = 0.5 + rng.uniform(-1, 1) * max(0.0, 0.42 - a)
    cy = 0.5 + rng.uniform(-1, 1) * max(0.0, 0.38 - b)
    dx, dy = x - cx, y - cy
    u = (np.cos(theta) * dx + np.sin(theta) * dy) / a
    v = (-np.sin(theta) * dx + np.cos(theta) * dy) / b
    rho, phi = np.hypot(u, v), np.arctan2(v, u)
    # Boundary radius R(phi): a faint wobble for round ones; for irregular ones lobulation from
    # random harmonics plus thin spikes (spiculation). Tabulated over angles, then interpolated.
    table = np.linspace(-np.pi, np.pi, 1025)
    harmonics = np.arange(2, 9 if irregular else 4)
    amp = (0.16 if irregular else 0.03) * rng.uniform(0.3, 1.0, harmonics.size) / harmonics**0.6
    phase = rng.uniform(0, 2 * np.pi, harmonics.size)
    R = 1.0 + np.sum(amp[:, None] * np.cos(harmonics[:, None] * table + phase[:, None]), axis=0)
    if irregular:
        for _ in range(rng.integers(3, 10)):
            d = (table - rng.uniform(-np.pi, np.pi) + np.pi) % (2 * np.pi) - np.pi  # wrapped angle
            R += rng.uniform(0.15, 0.6) * np.exp(-((d / rng.uniform(0.03, 0.08)) ** 2))
    R = np.interp(phi, table, R)
    return (rho - R) * r * n  # approximately pixels, since |grad rho| ~ 1 / (r n) near the edge


def phantom_pair(index: int, label: int, image_size: int = 64, seed: int = 0,
                 rgb: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One phantom scan and its lesion mask.

    Returns (image, mask): image (H, W) uint8 grayscale, or (H, W, 3) uint8 when `rgb`;
    mask (H, W) uint8 in {0, 1}, 1 = lesion, H = W = image_size. Class 0 has an all-zero mask;
    classes 1 and 2 have at least a few lesion pixels at any size >= 8. All randomness comes
    from np.random.default_rng(np.random.SeedSequence([seed, index])) and the label, so equal
    arguments give identical arrays and any pair can be regenerated alone.
    """
    index = _check_int("index", index, 0)
    seed = _check_int("seed", seed, 0)
    n = _check_int("image_size", image_size, _MIN_SIZE)
    if isinstance(label, bool) or label not in PHANTOM_CLASSES:
        raise ValueError(f"label must be one of {sorted(PHANTOM_CLASSES)}, got {label!r}")
    label = int(label)
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    y, x = (np.mgrid[0:n, 0:n] + 0.5) / n  # pixel centres in fractions of the size (y = depth)

    db = _tissue_db(rng, n, y, x)
    mask = np.zeros((n, n), dtype=np.uint8)
    if label:
        dist = _lesion(rng, n, y, x, label)
        inside = dist <= 0
        if inside.sum() < _MIN_LESION_PX:  # lesion fell between pixel centres: take the nearest
            inside.flat[np.argpartition(dist.ravel(), _MIN_LESION_PX)[:_MIN_LESION_PX]] = True
        # Soft (antialiased, partly blurred) edge in the image; the mask stays hard at alpha 0.5.
        edge = max(0.6, rng.uniform(0.01, 0.025 if label == 1 else 0.04) * n)
        alpha = np.clip(0.5 - dist / edge, 0.0, 1.0)
        alpha[inside] = np.maximum(alpha[inside], 0.5)
        mask = inside.astype(np.uint8)
        # Hypoechoic: a low level well below typical tissue, with a faint internal texture
        # (round: near-anechoic and homogeneous; irregular: brighter and heterogeneous).
        ref = np.percentile(db, 35)
        contrast = rng.uniform(9, 20) if label == 1 else rng.uniform(7, 14)
        texture = rng.uniform(0.5, 2.0) if label == 1 else rng.uniform(2.0, 4.0)
        inner = ref - contrast + texture * _noise(rng, n, (0.03, 0.04))[0]
        db = db * (1 - alpha) + inner * alpha
        # Posterior effect, in each column below the lesion and fading with depth: cysts barely
        # attenuate (enhancement, brighter); dense malignant tissue absorbs (shadow, darker).
        below = np.maximum.accumulate(alpha, axis=0) * (1 - alpha)
        below = ndimage.gaussian_filter1d(below, max(0.5, 0.015 * n), axis=1)
        depth_below = np.cumsum(below, axis=0) / n
        fade = np.exp(-depth_below / rng.uniform(0.2, 0.6))
        if label == 1:
            gain = rng.uniform(3, 9) if rng.random() < 0.7 else 0.0
        else:
            gain = -rng.uniform(6, 16) if rng.random() < 0.75 else 0.0
            # Malignant masses often wear a thin echogenic halo just outside the edge.
            if rng.random() < 0.5:
                halo = np.exp(-((dist / max(1.0, 0.03 * n)) ** 2)) * (dist > 0)
                db += rng.uniform(2, 5) * halo
        db += gain * below * fade

    # Speckle: the envelope of a complex Gaussian field blurred by the beam's point-spread function
    # (wider than tall; grains ~1-2 px at 64 px), i.e. fully developed Rayleigh speckle. Scaling
    # its dB by < 1 mimics the smoother look of compounding scanners.
    field = _noise(rng, n, (0.008, 0.016), (0.008, 0.016))
    speckle = field[0] ** 2 + field[1] ** 2
    # The offset fills the deepest nulls (a noise floor), which would read as dark cracks.
    speckle = speckle / speckle.mean() + rng.uniform(0.2, 0.6)
    db += rng.uniform(0.4, 0.7) * 10 * np.log10(speckle / speckle.mean())
    db -= rng.uniform(4, 14) * y  # depth attenuation not fully undone by the scanner's TGC
    db -= rng.uniform(0, 6) * np.abs(2 * x - 1) ** 4  # mild lateral vignette of the probe

    # Display mapping like a scanner's: per-image gain puts the brightest echoes near white and
    # a dynamic range of 28-40 dB sets black; the gamma keeps the dark look of real scans.
    hi, dyn = np.percentile(db, rng.uniform(99.0, 99.8)), rng.uniform(28, 40)
    grey = np.clip((db - hi + dyn) / dyn, 0.0, 1.0) ** rng.uniform(1.3, 1.7)
    if rgb:  # a screen capture: one grey scan with a faint colour cast, not three noises
        tint = 1.0 + rng.uniform(-0.04, 0.04, size=3)
        image = np.clip(grey[..., None] * tint * 255 + rng.uniform(-3, 3, size=3), 0, 255)
    else:
        image = grey * 255
    return np.round(image).astype(np.uint8), mask


def phantom_pairs(count: int, image_size: int = 64, seed: int = 0, rgb: bool = False,
                  priors: Sequence[float] = DEFAULT_PRIORS) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """Yield (image, mask, label) for index 0..count-1; labels from phantom_labels(count, seed, priors).

    image and mask are as in :func:`phantom_pair`; label is a Python int in {0, 1, 2}.
    Arguments are validated eagerly (at the call, not at the first ``next``).
    """
    labels = phantom_labels(count, seed, priors)
    _check_int("image_size", image_size, _MIN_SIZE)

    def generate() -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
        for index, label in enumerate(labels):
            image, mask = phantom_pair(index, int(label), image_size, seed, rgb)
            yield image, mask, int(label)

    return generate()
