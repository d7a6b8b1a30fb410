"""Colour of the placed lesions in inpaint-mode synthetic sets, against the real lesions they imitate.

    python bench/region_colour.py SYN_DIR [SYN_DIR ...]

For each set, the pixels of the placed lesions (the output mask minus the background's own mask);
and, once, the lesion pixels of every real train image in the prepared data folder that the first
set's generator was trained from. Prints per set:

* ``off-hue``: the fraction of pixels whose blue or green channel exceeds the red one. Endoscopy
  and dermoscopy lesions are red-dominant (CVC-ClinicDB's real polyps: about 0.2 %), so a
  generator that makes blue-green fringes shows here; grayscale sets print ``-``.
* ``clipped``: the fraction of pixels with a channel at 250 or above, or every channel at 5 or
  below: saturated whites and blacks.
* ``off-gamut``: the audit's lesion-colour measure (:func:`augment.metrics.off_gamut_fraction`),
  the fraction of pixels in colours that the real train lesions almost never have.
* the mean and spread of each channel.

The audit's whole-image checks (Fréchet distance, FRD) can pass a set whose small regions carry
such colours; this measures the region alone.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from augment.data.images import read_image, read_mask
from augment.data.manifest import load_data, read_manifest
from augment.metrics import off_gamut_fraction
from inpaint_grid import from_synthetic  # bench/inpaint_grid.py: the pairs with their backgrounds


def colour(pixels: np.ndarray) -> dict:
    """Summary of ``(N, C)`` uint8 pixels (C is 1 or 3)."""
    px = pixels.astype(int)
    rgb = px.shape[1] == 3
    return {"pixels": len(px),
            "off_hue": float(((px[:, 1] > px[:, 0]) | (px[:, 2] > px[:, 0])).mean()) if rgb else None,
            "clipped": float(((px >= 250).any(1) | (px <= 5).all(1)).mean()),
            "mean": px.mean(0).round(1).tolist(), "std": px.std(0).round(1).tolist()}


def _pixels(image: np.ndarray, where: np.ndarray) -> np.ndarray:
    return image[where] if image.ndim == 3 else image[where][:, None]


def real_lesions(data_dir: Path) -> np.ndarray:
    rows, _ = load_data(data_dir)  # validated: every path stays inside the folder
    chunks = [_pixels(read_image(data_dir / r.image), read_mask(data_dir / r.mask, binary=True) > 0)
              for r in rows[rows["split"] == "train"].itertuples()]
    return np.concatenate(chunks)


def placed_lesions(syn: Path) -> tuple[np.ndarray, Path]:
    from augment.generators.artifact import load_run

    pairs = from_synthetic(syn, len(read_manifest(syn)))
    if not pairs:
        raise SystemExit(f"{syn}: no inpainted pairs (no background_id in its manifest)")
    placed = [_pixels(p["image"], (p["mask"] > 0) & ~(p["bmask"] > 0)) for p in pairs]
    return np.concatenate(placed), load_run(json.loads((syn / "run.json").read_text())["generator_run"]).data_dir


def _line(name: str, s: dict, gamut: float) -> str:
    hue = "-" if s["off_hue"] is None else f"{s['off_hue']:.4f}"
    return (f"{name}: off-hue {hue}  clipped {s['clipped']:.4f}  off-gamut {gamut:.4f}  mean {s['mean']}  std {s['std']}  "
            f"({s['pixels']} px)")


def off_gamut(real: np.ndarray, pixels: np.ndarray) -> float:
    return off_gamut_fraction(torch.from_numpy(real / 255.0), torch.from_numpy(pixels / 255.0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("synthetic", nargs="+")
    args = ap.parse_args()
    sets = [(Path(s), *placed_lesions(Path(s))) for s in args.synthetic]
    real = real_lesions(sets[0][2])
    print(_line(f"real train lesions ({sets[0][2]})", colour(real), off_gamut(real, real)))
    for syn, pixels, _ in sets:
        print(_line(f"placed lesions ({syn})", colour(pixels), off_gamut(real, pixels)))


if __name__ == "__main__":
    main()
