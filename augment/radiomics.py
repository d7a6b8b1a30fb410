"""Radiomic features of images, the inputs of the Fréchet Radiomics Distance (FRD; Konz, Osuala
et al., "Fréchet Radiomic Distance", Medical Image Analysis 2026), through the ``frd-score``
package (Apache-2.0) and the pyradiomics it drives. The only module that imports either.

frd-score's public entry point, ``compute_frd``, takes image files or folders, fans the
extraction out over a ``multiprocessing`` pool and prints its result; this module instead runs
the package's own per-image step (``frd_score.frd.process_image_mask_pair`` with the FRDv1 2-D
extractor of ``get_feature_extractor``) in this process, on PNG files it writes into a temporary
folder that is removed afterwards, so each image is read and preprocessed exactly as the package
reads an image file of the same pixels. Nothing is downloaded: the extractor's settings are a
YAML file inside the package, and neither package holds weights. The normalisation and the
distance itself (pure maths over the features) are :func:`augment.metrics.frd_from_features`.

Speed: mostly a fixed cost per image (13 filtered images x 5 feature classes in Python). On a
2-core machine busy with other work, 100 phantom images of 64x64 px took 22-32 s (0.2-0.3 s
each; 16-24 px images 0.08-0.22 s each), so the audit caches the real splits' features
(:func:`augment.audit.real_radiomics`). A pixel counts as 1 mm (PNG files carry no spacing).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import torch

from augment.errors import DataError
from augment.progress import track


def missing() -> str | None:
    """None when frd-score and pyradiomics import, else why not (the audit then records FRD as
    not computed, with this reason)."""
    try:
        import frd_score  # noqa: F401
        import radiomics  # noqa: F401
    except ImportError as exc:
        return (f"the Fréchet Radiomics Distance needs frd-score and pyradiomics ({exc.name} is not installed): "
                "pip install 'augment[radiomics]' (a C compiler builds pyradiomics)")
    return None


def versions() -> dict[str, str]:
    """The versions of the feature extractor's packages (a cache key, and the audit's record)."""
    import frd_score
    import radiomics

    return {"frd_score": frd_score.__version__, "pyradiomics": str(radiomics.__version__)}


def _extractor():
    """frd-score's FRDv1 2-D extractor (Original + Laplacian of Gaussian at sigma 2-5 mm +
    8 wavelet bands; firstorder, GLCM, GLRLM, GLSZM and NGTDM features; 2 mm resampling, bin
    width 5), with pyradiomics' log quietened to errors as ``compute_frd`` does."""
    from frd_score import frd

    frd._ensure_radiomics()
    frd.setVerbosity(60)
    logging.getLogger("radiomics").setLevel(logging.ERROR)
    return frd, frd.get_feature_extractor(frd_version=frd.FRD_VERSION_V1, image_dim=2)


def grey_uint8(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N, C, H, W) float in [0, 1] -> (N, H, W) uint8: channels averaged, then ``round(255 x)``
    (the 8-bit grey a dataset's PNG holds; frd-score reads images as one grey channel)."""
    x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if x.ndim != 4:
        raise DataError(f"radiomic features need images as (N, C, H, W); got shape {x.shape}")
    return np.round(np.clip(x.astype(np.float64).mean(1), 0.0, 1.0) * 255).astype(np.uint8)


def radiomic_features(images: torch.Tensor | np.ndarray, what: str = "images") -> np.ndarray:
    """frd-score's FRDv1 radiomic feature vector of each image: (N, C, H, W) float in [0, 1]
    (grey by :func:`grey_uint8`) -> (N, F) float64, F = 398 for 2-D images with frd-score 1.0.1
    (the package's features plus its numeric pyradiomics diagnostics, as its paper pipeline keeps).

    The whole image is the region of interest: frd-score's default without masks (every pixel
    but one corner, a pyradiomics workaround). A lesion mask would also be accepted by the
    package, but it skips images whose mask has at most one pixel, so lesion-free images (a
    "normal" class) would silently leave the set. ``what`` names the set in errors. A constant
    image has no texture and pyradiomics fails on it: a DataError naming the image, as for any
    image the package cannot measure."""
    import SimpleITK as sitk

    grey = grey_uint8(images)
    flat = [i for i, g in enumerate(grey) if g.min() == g.max()]
    if flat:
        raise DataError(f"radiomic features are undefined for a constant image (no texture); {len(flat)} of the {len(grey)} "
                        f"{what} are constant (first: #{flat[0]}, every pixel {int(grey[flat[0]].flat[0])})")
    # ITK's filters (resampling, LoG, wavelets) thread over every core by default; on images this
    # small that costs more than it gives: 1.25 s vs 0.36 s per 64x64 image on a busy 2-core machine
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        rows = _extract(grey, what)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    return np.asarray(rows, dtype=np.float64) if rows else np.zeros((0, 0))


def _extract(grey: np.ndarray, what: str) -> list[list[float]]:
    """The package's per-image step on each (H, W) uint8 image, written as a PNG into a
    temporary folder (removed afterwards) as the package expects a file."""
    from PIL import Image

    frd, extractor = _extractor()
    rows, names = [], None
    with tempfile.TemporaryDirectory(prefix="augment-frd-") as tmp:
        for i in track(range(len(grey)), len(grey), f"radiomic features of the {what}", "images"):
            path = Path(tmp) / f"{i}.png"
            Image.fromarray(grey[i]).save(path)
            try:
                out = frd.process_image_mask_pair((path, None), feature_extractor=extractor, frd_version=frd.FRD_VERSION_V1)
            except Exception as exc:  # pyradiomics raises ValueError, RuntimeError, ... for an image it cannot measure
                raise DataError(f"frd-score could not extract radiomic features of {what} #{i} ({type(exc).__name__}: {exc})") from None
            path.unlink()
            if out is None or (names is not None and list(out[1]) != names):
                raise DataError(f"frd-score gave no or different radiomic features for {what} #{i} ({grey.shape[-1]}x{grey.shape[-2]} px)")
            names = list(out[1])
            rows.append(out[0])
    return rows
