"""The quality and memorisation audit of a synthetic set against the real data it came from.

* Feature-space distances (Fréchet, KID with its spread over subsets) between synthetic and real
  train images, each beside the real-vs-real baseline of the same metric (train vs test).
  Extractors: ``domain`` (a SmallCNN trained as the label classifier on the real train split)
  and ``inception`` (only with a user-supplied TorchScript file of the standard FID Inception
  network; never downloaded, never faked).
* Precision, recall, density and coverage (Naeem et al. 2020, k = 5) in the domain encoder's
  feature space, synthetic against real train, beside the same four of real test vs real train.
* The Fréchet Radiomics Distance (frd-score's FRDv1, :func:`~augment.metrics.frd_from_features`):
  radiomic texture features z-scored by the real train split, synthetic vs real train beside
  real test vs real train. Setting ``frd: false`` leaves it out (0.1-0.3 s per image of up to
  64 px on a CPU; the real splits' features are cached like the encoder).
* Diversity: mean MS-SSIM (SSIM below 176 px) over same-class pairs, synthetic and real.
* A measure its inputs cannot give (a Fréchet distance of one synthetic image, the diversity of
  a class with one) is written as ``value: null`` with the reason under ``undefined``; nothing
  non-finite is ever written as a value.
* Caches: the domain encoder and the real-to-real nearest SSIM are reused by every audit of the
  same real data, so they are cached, keyed by DATA's manifest sha256 and the settings they
  depend on, in a user cache folder (:func:`cache_root`), never in DATA: a dataset may be a
  shared, read-only copy, and an audit leaves it byte for byte as it was.
* Fidelity and memorisation: each synthetic image's nearest real train image by SSIM and by
  feature distance. It is a *copy* when it is closer than real images are to each other by both
  measures: SSIM above the 99th percentile and distance below the 1st percentile of real-to-real
  nearest-neighbour values in the train split (``copy_percentile``). Both, because SSIM alone
  flags blurry averages: on the quickstart phantom a 300-step cVAE had 13 of 16 samples above
  the SSIM threshold (speckle makes real scans dissimilar to each other, a smooth mean image is
  "closer") while none was near a training image in feature space.
* Mask-image consistency: Dice between each synthetic mask and a MONAI UNet's prediction on its
  image, the UNet trained on the generator's real budget subset; baseline: the same UNet on the
  real val images of that class.
* Lesion colours: the share of synthetic lesion pixels (an inpainted pair's placed lesion) whose
  colour real train lesions almost never have (:func:`~augment.metrics.off_gamut_fraction`),
  beside real test lesions' share. Whole-image features barely move when a small generated region
  carries off-hue fringes or saturated blotches; this looks at the region alone.
* Provenance: every synthetic row's weights hash and image hash, and the hashes of the images
  the generator trained on (all in DATA's train split, none in val or test).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pydantic import Field
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from augment.config import Seed, Strict
from augment.data.dataset import load_tensors
from augment.data.images import sha256_file
from augment.data.guard import check_trained_on
from augment.placement import region_boxes
from augment.data.manifest import CLASSES, MANIFEST, combine, load_data, load_synthetic, manifest_problems, write_classes, write_manifest
from augment.downstream import Shapes, SmallCNN, TaskConfig, dice_per_image, fit_tensors, predict_masks
from augment.errors import DataError
from augment.lock import locked
from augment.metrics import (
    GAMUT_MASS, MS_SSIM_MIN_SIDE, copy_thresholds, frd_from_features, frechet_distance, kid, mean_pairwise_similarity, nearest_distance,
    nearest_ssim, off_gamut_fraction, prdc, structural_measure,
)
from augment.output import atomic_path, read_json
from augment.progress import stage, track
from augment.runinfo import run_record, write_json
from augment.runs import read_run, read_synthetic_record


class AuditSettings(Strict):
    """How an audit measures: every option of ``augment audit`` except its inputs, output and
    seed (a pipeline's ``audit:`` section is these plus ``enabled``)."""

    inception_weights: Path | None = Field(
        None, description="a TorchScript Inception-v3 feature extractor file for Inception FID/KID beside the domain "
        "encoder's (never downloaded; without it only the domain encoder's are computed)")
    drop_copies: bool = False
    copy_percentile: float = Field(1.0, ge=0.01, lt=50, description="a synthetic image is a copy when it is nearer a train image "
                                   "than all but this % of train images are to their own nearest (0.01 <= p < 50)")
    encoder_steps: int = Field(300, ge=1)
    segmenter_steps: int = Field(300, ge=1)
    max_pairs: int = Field(200, ge=1, description="pairs per class for the diversity measure")
    kid_subsets: int = Field(50, ge=1)
    kid_subset_size: int = Field(100, ge=2)
    frd: bool = Field(True, description="the Fréchet Radiomics Distance (frd-score) beside the domain encoder's; "
                      "0.1-0.3 s of radiomic feature extraction per image of up to 64 px on a CPU")


#: nearest neighbours of precision / recall / density / coverage: Naeem et al. 2020's choice
PRDC_K = 5
#: seeded subsets a set larger than the other side is drawn down to, for PRDC at equal sizes
PRDC_DRAWS = 20


def prdc_at_size(real: torch.Tensor, fake: torch.Tensor, size: int, seed: int) -> dict[str, float]:
    """:func:`~augment.metrics.prdc` of ``fake`` against ``real`` with ``fake`` drawn down to
    ``size`` points: the mean over :data:`PRDC_DRAWS` seeded subsets when it has more, itself
    otherwise. Coverage rises with the number of fake points (more chances to land near a real
    one) and recall moves too (fewer fake points, wider fake balls), so 11 synthetic images against
    a baseline of 156 real test images would flag every small synthetic set on coverage; at one
    size the two are comparable."""
    if len(fake) <= size:
        return prdc(real, fake, k=PRDC_K)
    rng = np.random.default_rng(np.random.SeedSequence([seed, size, len(fake)]))
    draws = [prdc(real, fake[torch.from_numpy(rng.choice(len(fake), size, replace=False))], k=PRDC_K) for _ in range(PRDC_DRAWS)]
    return {key: float(np.mean([d[key] for d in draws])) for key in draws[0]}


class AuditConfig(AuditSettings):
    data: Path
    synthetic: Path
    out: Path
    seed: Seed = 0
    overwrite: bool = False


def check_provenance(data: Path, real: pd.DataFrame, syn_dir: Path, syn: pd.DataFrame, classes: dict[int, str]) -> dict:
    """Hash checks that tie every synthetic file to its generator and the generator to DATA."""
    info = {"checked_rows": len(syn), "problems": []}
    run = read_synthetic_record(syn_dir, syn)
    problems = [f"{i}: {m}" for i, m in manifest_problems(syn, syn_dir, classes, check_files=True, check_hashes=True)]
    bad = syn.loc[syn["generator_sha256"] != run["generator_sha256"], "id"].tolist()
    problems += [f"{i}: generator_sha256 differs from run.json" for i in bad]
    trained = run["generator_trained_on_sha256"]
    check_trained_on(trained, real, data, f"`{syn_dir}`")
    info.update(generator_sha256=run["generator_sha256"], generator_trained_on=len(trained),
                generator_saw_only_train=True, problems=problems, ok=not problems)
    return info


def cache_root() -> Path:
    """The user cache folder of augment: ``$AUGMENT_CACHE``, else ``$XDG_CACHE_HOME/augment``
    (an absolute XDG_CACHE_HOME only, as the XDG spec says), else ``~/.cache/augment``."""
    if os.environ.get("AUGMENT_CACHE"):
        return Path(os.environ["AUGMENT_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache") / "augment"


def audit_cache() -> Path:
    """``cache_root()/audit``, created, or a DataError naming it (checked before an audit starts
    measuring, so a cache it cannot write fails in a second, not after training the encoder)."""
    folder = cache_root() / "audit"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        writable = os.access(folder, os.W_OK | os.X_OK)
    except OSError as exc:
        raise DataError(f"the audit cache folder `{folder}` cannot be created ({exc.strerror or type(exc).__name__}); "
                        "set AUGMENT_CACHE to a writable folder") from None
    if not writable:
        raise DataError(f"the audit cache folder `{folder}` is not writable; set AUGMENT_CACHE to a writable folder")
    return folder


def domain_encoder(data: Path, train_images: torch.Tensor, train_labels: torch.Tensor, num_classes: int, cfg: AuditConfig) -> tuple[SmallCNN, dict]:
    """The label classifier trained on the real train split of ``data``, cached in
    :func:`audit_cache` by (manifest sha256, steps, seed): the same real data and settings give
    the same encoder whatever folder the data is in."""
    key = f"{sha256_file(data / MANIFEST)[:16]}-s{cfg.encoder_steps}-seed{cfg.seed}-v2"
    cache = audit_cache() / f"encoder-{key}"
    record = {"kind": "SmallCNN label classifier", "trained_on": "real train split", "n_train": len(train_labels),
              "steps": cfg.encoder_steps, "seed": cfg.seed, "cache": str(cache)}
    model = SmallCNN(train_images.shape[1], num_classes)
    if (cache / "encoder.safetensors").is_file():
        try:
            model.load_state_dict(load_file(cache / "encoder.safetensors"))
            return model.eval(), {**record, "cached": True}
        except (SafetensorError, OSError, RuntimeError):
            pass  # a damaged cache entry is a cache miss: train it again and replace it
    t = time.time()
    shapes = Shapes(train_images.shape[1], num_classes, 2)
    with stage("audit domain encoder"):
        model = fit_tensors("classification", train_images, None, train_labels, shapes,
                            TaskConfig(steps=cfg.encoder_steps, batch_size=32), cfg.seed)
    with atomic_path(cache / "encoder.safetensors") as tmp:  # a killed audit never leaves half a cache entry
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp)
    record.update(cached=False, train_seconds=round(time.time() - t, 2))
    write_json(record, cache / "encoder.json")
    return model, record


def real_nearest_ssim(data: Path, train_images: torch.Tensor) -> torch.Tensor:
    """Each real train image's SSIM to its nearest other train image (the copy threshold's
    baseline), cached in :func:`audit_cache` by manifest sha256: it depends on the real train
    split alone, and every audit of every generator and budget on the same data needs it."""
    cache = audit_cache() / f"nearest-ssim-{sha256_file(data / MANIFEST)[:16]}-v1.safetensors"
    if cache.is_file():
        try:
            values = load_file(cache)["ssim"]
            if values.shape == (len(train_images),):
                return values
        except (SafetensorError, OSError, KeyError):
            pass  # a damaged cache entry is a cache miss
    values, _ = nearest_ssim(train_images, train_images, exclude_self=True)
    with atomic_path(cache) as tmp:
        save_file({"ssim": values.contiguous()}, tmp)
    return values


def real_radiomics(data: Path, split: str, images: torch.Tensor) -> np.ndarray:
    """The radiomic features (:func:`~augment.radiomics.radiomic_features`) of one real split's
    images, cached in :func:`audit_cache` by (manifest sha256, split, frd-score and pyradiomics
    versions): every audit of the same real data needs them, and they cost 0.1-0.3 s an image."""
    from augment.radiomics import radiomic_features, versions

    tag = "-".join(f"{k}{v}" for k, v in versions().items())
    cache = audit_cache() / f"radiomics-{sha256_file(data / MANIFEST)[:16]}-{split}-{tag}-v1.safetensors"
    if cache.is_file():
        try:
            values = load_file(cache)["features"]
            if values.shape[0] == len(images):
                return values.numpy()
        except (SafetensorError, OSError, KeyError):
            pass  # a damaged cache entry is a cache miss
    values = radiomic_features(images, f"real {split} images")
    with atomic_path(cache) as tmp:
        save_file({"features": torch.from_numpy(values).contiguous()}, tmp)
    return values


def _frd_row(data: Path, train_x: torch.Tensor, test_x: torch.Tensor, syn_x: torch.Tensor) -> tuple[dict, dict]:
    """The FRD row (synthetic vs real train, baseline real test vs real train) and the record
    of the extractor. Features a set cannot give (a constant image) leave the value or the
    baseline undefined with the reason."""
    from augment.radiomics import radiomic_features, versions

    n_tr, n_te, n_syn = len(train_x), len(test_x), len(syn_x)
    real, why_real = _defined(lambda: (real_radiomics(data, "train", train_x), real_radiomics(data, "test", test_x)))
    syn, why_syn = _defined(radiomic_features, syn_x, "synthetic images")
    train, test = real if real is not None else (None, None)
    d, why = (None, why_real or why_syn) if train is None or syn is None else \
        _defined(frd_from_features, train, syn, names=("real train set", "synthetic set"))
    db, why_b = (None, why_real) if train is None else _defined(frd_from_features, train, test, names=("real train set", "real test set"))
    row = _row("frd", "radiomics", d, db, n_tr, n_syn, undefined=why, baseline_undefined=why_b,
               baseline_is=f"real test ({n_te}) vs real train ({n_tr})",
               note="squared Fréchet distance of radiomic features z-scored by the real train split; frd-score's FRDv1 is its log")
    features = None if train is None else int(train.shape[1])
    return row, {"computed": True, **versions(), "features": features, "roi": "whole image", "normalised_by": "real train split"}


@torch.no_grad()
def _features(model, images: torch.Tensor, batch: int = 128) -> torch.Tensor:
    return torch.cat([model.features(images[i:i + batch]) for i in track(range(0, len(images), batch), None, "audit domain features", "batches")])


def inception_features(path: Path, images: torch.Tensor) -> torch.Tensor:
    """2048-d pool features from a TorchScript FID Inception file (the `inception-2015-12-05.pt`
    detector: uint8 (N, 3, H, W) in, ``return_features=True``)."""
    try:
        net = torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:  # torch raises several types for a file it cannot read
        raise DataError(f"--inception-weights `{path}` is not a TorchScript Inception file ({type(exc).__name__})") from None
    x = (images * 255).round().to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    with torch.no_grad():
        return torch.cat([net(x[i:i + 64], return_features=True) for i in track(range(0, len(x), 64), None, "audit inception features", "batches")]).float()


def _own_backgrounds(syn: pd.DataFrame, train_df: pd.DataFrame) -> torch.Tensor:
    """(N,) int64: each synthetic row's background's index in ``train_df`` (-1: none, or not inpainted)."""
    where = {str(i): k for k, i in enumerate(train_df["id"])}
    ids = syn["background_id"] if "background_id" in syn.columns else pd.Series([""] * len(syn))
    return torch.tensor([where.get(str(b), -1) if isinstance(b, str) and b else -1 for b in ids], dtype=torch.int64)


def _lesion_pixels(images: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) images and an (N, H, W) bool selection -> (P, C) the selected pixels."""
    return images.permute(0, 2, 3, 1)[where]


def _lesion_colours(train_x, train_m, test_x, test_m, syn_x, syn_m, own: torch.Tensor) -> dict:
    """The ``lesion_off_gamut_fraction`` row: the share of synthetic lesion pixels (an inpainted
    pair's placed lesion, not its background's own) in colours that real train lesions almost
    never have (:func:`~augment.metrics.off_gamut_fraction`), beside real test lesions' share."""
    placed = syn_m > 0
    inpainted = own >= 0
    placed[inpainted] &= ~(train_m[own[inpainted]] > 0)
    ref = _lesion_pixels(train_x, train_m > 0)
    value, why = _defined(off_gamut_fraction, ref, _lesion_pixels(syn_x, placed), names=("real train lesions", "synthetic lesions"))
    base, why_b = _defined(off_gamut_fraction, ref, _lesion_pixels(test_x, test_m > 0), names=("real train lesions", "real test lesions"))
    return _row("lesion_off_gamut_fraction", "pixels", value, base, len(train_x), len(syn_x), undefined=why, baseline_undefined=why_b,
                baseline_is=f"real test lesions ({len(test_x)} images) against real train lesions",
                note=f"fraction of lesion pixels outside the colour cells holding {GAMUT_MASS:.1%} of real train lesion pixels "
                     "(32 grey levels, or 8 steps per RGB channel)")


def _measure(cfg: AuditConfig, data: Path, real: pd.DataFrame, classes: dict[int, str], syn_dir: Path,
             syn: pd.DataFrame) -> tuple[dict, pd.DataFrame]:
    train_df = real[real["split"] == "train"].reset_index(drop=True)
    test_df = real[real["split"] == "test"].reset_index(drop=True)
    has_masks = bool((train_df["mask"] != "").all())
    train_x, train_m = load_tensors(train_df, data, masks=has_masks)
    test_x, test_m = load_tensors(test_df, data, masks=has_masks)
    syn_x, syn_m = load_tensors(syn, syn_dir)
    if syn_x.shape[1:] != train_x.shape[1:]:
        raise DataError(f"synthetic images are {tuple(syn_x.shape[1:])} (C, H, W) but real ones are {tuple(train_x.shape[1:])}")
    train_y = torch.tensor(train_df["label"].to_numpy())
    syn_y = torch.tensor(syn["label"].to_numpy())
    n_tr, n_te, n_syn = len(train_df), len(test_df), len(syn)
    rows: list[dict] = []

    encoder, encoder_record = domain_encoder(data, train_x, train_y, max(classes) + 1, cfg)
    f_train, f_test, f_syn = (_features(encoder, x) for x in (train_x, test_x, syn_x))
    extractors = {"domain": (f_train, f_test, f_syn)}
    inception = {"computed": False, "reason": "no --inception-weights given (never downloaded)"}
    if cfg.inception_weights is not None:
        extractors["inception"] = tuple(inception_features(Path(cfg.inception_weights), x) for x in (train_x, test_x, syn_x))
        inception = {"computed": True, "weights": str(cfg.inception_weights), "weights_sha256": sha256_file(cfg.inception_weights)}
    for name, (a, b, s) in extractors.items():
        note = {"note": f"fewer samples than feature dimensions ({a.shape[1]}): biased upwards, compare with the baseline"} \
            if min(n_syn, n_te) <= a.shape[1] else {}
        syn_names, base_names = ("synthetic set", "real train set"), ("real test set", "real train set")
        (fd, why), (fdb, why_b) = _defined(frechet_distance, s, a, names=syn_names), _defined(frechet_distance, b, a, names=base_names)
        rows.append(_row("frechet_distance", name, fd, fdb, n_tr, n_syn, undefined=why, baseline_undefined=why_b,
                         baseline_is=f"real test ({n_te}) vs real train ({n_tr})", **note))
        kid_opts = {"subsets": cfg.kid_subsets, "subset_size": cfg.kid_subset_size, "seed": cfg.seed}
        (k, why), (kb, why_b) = _defined(kid, s, a, names=syn_names, **kid_opts), _defined(kid, b, a, names=base_names, **kid_opts)
        (k, k_sd), (kb, kb_sd) = k or (None, None), kb or (None, None)
        rows.append(_row("kid", name, k, kb, n_tr, n_syn, std=k_sd, baseline_std=kb_sd,
                         undefined=why, baseline_undefined=why_b, baseline_is=f"real test ({n_te}) vs real train ({n_tr})"))
    # coverage and recall depend on the compared set's size: both sides are compared at one size
    m = max(min(n_syn, n_te), PRDC_K + 1)  # a set of k or fewer has no PRDC: its baseline still has one
    (p, why), (pb, why_b) = (_defined(prdc_at_size, f_train, x, m, cfg.seed) for x in (f_syn, f_test))
    for key in ("precision", "recall", "density", "coverage"):
        rows.append(_row(key, "domain", p and p[key], pb and pb[key], n_tr, n_syn, undefined=why, baseline_undefined=why_b,
                         baseline_is=f"real test ({n_te}) vs real train ({n_tr})",
                         note=f"Naeem et al. 2020, k={PRDC_K}; synthetic and real test both at {m} images "
                              f"(the mean over {PRDC_DRAWS} seeded draws of a larger set)"))
    radiomics = {"computed": False, "reason": "the audit setting frd is false"}
    if cfg.frd:
        from augment.radiomics import missing

        if (why := missing()) is None:
            row, radiomics = _frd_row(data, train_x, test_x, syn_x)
            rows.append(row)
        else:
            radiomics = {"computed": False, "reason": why}

    side = min(train_x.shape[-2:])
    measure = structural_measure(side)
    for c in sorted(classes):
        n_syn_c, n_real_c = int((syn_y == c).sum()), int((train_y == c).sum())
        if n_syn_c == 0:
            continue  # the set has no image of this class: nothing to measure, and no row
        ds = mean_pairwise_similarity(syn_x[syn_y == c], cfg.max_pairs, cfg.seed)
        dr = mean_pairwise_similarity(train_x[train_y == c], cfg.max_pairs, cfg.seed)
        rows.append(_row(f"diversity_{measure}_class_{c}", "pixels", ds, dr, n_real_c, n_syn_c,
                         undefined=None if ds is not None else f"the synthetic set has {n_syn_c} image of this class; a pair needs 2",
                         baseline_undefined=None if dr is not None else f"the real train split has {n_real_c} image(s) of this class; a pair needs 2",
                         note="mean over same-class pairs; lower is more diverse"))

    # An inpainted image keeps its real background by design: it is judged against every other train image.
    own = _own_backgrounds(syn, train_df)
    if has_masks:
        rows.append(_lesion_colours(train_x, train_m, test_x, test_m, syn_x, syn_m, own))
    s_ssim, s_ssim_i = nearest_ssim(syn_x, train_x, exclude=own)
    s_dist, s_dist_i = nearest_distance(f_syn, f_train, exclude=own)
    r_ssim = real_nearest_ssim(data, train_x)
    r_dist, _ = nearest_distance(f_train, f_train, exclude_self=True)
    t_ssim, t_dist = copy_thresholds(r_ssim, r_dist, cfg.copy_percentile)
    rows.append(_row("nearest_real_ssim", "pixels", float(s_ssim.mean()), float(r_ssim.mean()), n_tr, n_syn,
                     baseline_is="real train to its nearest other train image"))
    rows.append(_row("nearest_real_distance", "domain", float(s_dist.mean()), float(r_dist.mean()), n_tr, n_syn,
                     baseline_is="real train to its nearest other train image"))
    is_copy = (s_ssim >= t_ssim) & (s_dist <= t_dist)
    real_copy = float(((r_ssim >= t_ssim) & (r_dist <= t_dist)).float().mean())
    rows.append(_row("memorisation_fraction", "pixels+domain", float(is_copy.float().mean()), real_copy, n_tr, n_syn,
                     baseline_is="fraction of real train images flagged against the rest of the train split"))
    nearest = pd.DataFrame({
        "synthetic_id": syn["id"], "label": syn["label"],
        "nearest_by_ssim": train_df["id"].to_numpy()[s_ssim_i.numpy()], "ssim": s_ssim.numpy(),
        "nearest_by_distance": train_df["id"].to_numpy()[s_dist_i.numpy()], "distance": s_dist.numpy(),
        "above_ssim_threshold": (s_ssim >= t_ssim).numpy(), "below_distance_threshold": (s_dist <= t_dist).numpy(),
        "copy": is_copy.numpy(),
    })
    copies = [{"synthetic_id": r.synthetic_id, "train_id": r.nearest_by_ssim,
               "ssim": float(r.ssim), "distance": float(r.distance)} for r in nearest[nearest["copy"]].itertuples()]

    consistency = None
    if has_masks:
        budget = read_run(read_json(syn_dir / "run.json")["generator_run"]).rows  # checked by check_provenance
        bx, bm = load_tensors(budget, data)
        mask_classes = max(2, int(max(bm.max(), syn_m.max())) + 1)
        with stage("audit mask segmenter"):
            seg = fit_tensors("segmentation", bx, bm, torch.tensor(budget["label"].to_numpy()),
                              Shapes(bx.shape[1], max(classes) + 1, mask_classes),
                              TaskConfig(steps=cfg.segmenter_steps, batch_size=16), cfg.seed)
        val_df = real[real["split"] == "val"].reset_index(drop=True)
        vx, vm = load_tensors(val_df, data)
        # inpainted pairs: judged inside their region (the placed lesion), not on their real background's lesion
        inside = torch.from_numpy(region_boxes(syn, tuple(syn_m.shape[-2:])))
        d_syn = dice_per_image(predict_masks(seg, syn_x) * inside, syn_m * inside)
        d_val = dice_per_image(predict_masks(seg, vx), vm)
        vy = torch.tensor(val_df["label"].to_numpy())
        for c in sorted(classes):
            if (syn_y == c).any():
                rows.append(_row(f"mask_dice_class_{c}", "segmenter", float(d_syn[syn_y == c].mean()),
                                 float(d_val[vy == c].mean()) if (vy == c).any() else None, len(budget), int((syn_y == c).sum()),
                                 baseline_undefined=None if (vy == c).any() else "the real val split has no image of this class",
                                 baseline_is="the same segmenter on real val images of this class"))
        nearest["mask_dice"] = d_syn.numpy()
        consistency = {"segmenter": "MONAI UNet (16,32,64,128), DiceCE", "trained_on": f"generator budget ({len(budget)} real images)",
                       "steps": cfg.segmenter_steps}

    report = {
        "metrics": rows,
        "copies": copies,
        "copy_rule": {
            "rule": "copy if nearest-train SSIM >= ssim_threshold and nearest-train feature distance <= distance_threshold",
            "percentile": cfg.copy_percentile, "ssim_threshold": t_ssim, "distance_threshold": t_dist,
            "derived_from": f"real-to-real nearest neighbours in the train split ({n_tr} images)",
        },
        "extractors": {"domain": encoder_record, "inception": inception, "radiomics": radiomics},
        "structural_measure": measure if measure == "ms_ssim" else (
            f"ssim (images are {side} px{'' if train_x.shape[-1] == train_x.shape[-2] else ' on their shorter side'}; "
            f"5-scale MS-SSIM needs >= {MS_SSIM_MIN_SIDE} px)"),
        "mask_consistency": consistency,
        "config": cfg.model_dump(mode="json"),
    }
    return report, nearest


def _defined(fn, *args, **kwargs):
    """``(fn(...), None)``, or ``(None, reason)`` when the inputs cannot give the measure (the
    DataError of :mod:`augment.metrics` saying why, e.g. a Fréchet distance of one image)."""
    try:
        return fn(*args, **kwargs), None
    except DataError as exc:
        return None, str(exc)


def _row(metric, extractor, value, baseline, n_real, n_syn, undefined: str | None = None, baseline_undefined: str | None = None,
         **extra) -> dict:
    """One metric row. A value that is None is undefined and says why (``undefined``, and
    ``baseline_undefined`` for the baseline); a non-finite number is never written: it becomes
    None with the number named as the reason. ``std`` / ``baseline_std`` are left out when None."""
    row = {"metric": metric, "extractor": extractor, "value": value, "baseline": baseline, "n_real": n_real, "n_synthetic": n_syn,
           **{k: v for k, v in extra.items() if v is not None}}
    reasons = {"value": undefined, "baseline": baseline_undefined}
    for key in ("value", "baseline", "std", "baseline_std"):
        v = row.get(key)
        if isinstance(v, float) and not math.isfinite(v):
            row[key] = None
            if key in reasons:
                reasons[key] = reasons[key] or f"the computed {key} was {v} (not finite)"
            else:
                del row[key]
    for key, name in (("value", "undefined"), ("baseline", "baseline_undefined")):
        if row[key] is None and reasons[key]:
            row[name] = reasons[key]
    return row


@locked(lambda cfg, *_, **__: cfg.out, "audit")
def audit(cfg: AuditConfig, echo=print) -> Path:
    """``augment audit``: write ``AUD/audit.json`` (+ ``nearest.csv``) and return ``AUD``."""
    from augment.output import building

    started = time.time()
    data, syn_dir = Path(cfg.data), Path(cfg.synthetic)
    real, classes = load_data(data)
    syn = load_synthetic(syn_dir, data, classes)
    inputs = {"--data": data.resolve(), "--synthetic": syn_dir.resolve()}
    for flag, folder in inputs.items():
        if Path(cfg.out).resolve() in (folder, *folder.parents):
            raise DataError(f"--out `{cfg.out}` would replace the {flag} folder `{folder}`; choose another --out")
    if cfg.inception_weights is not None and not Path(cfg.inception_weights).is_file():
        raise DataError(f"--inception-weights `{cfg.inception_weights}` does not exist")
    provenance = check_provenance(data, real, syn_dir, syn, classes)
    audit_cache()  # a cache folder it cannot write fails here, before anything is trained
    with building(Path(cfg.out), cfg.overwrite, "audit") as tmp:
        report, nearest = _measure(cfg, data, real, classes, syn_dir, syn)
        report["provenance"] = provenance
        report["wall_seconds"] = round(time.time() - started, 2)
        write_json(report, tmp / "audit.json")
        nearest.to_csv(tmp / "nearest.csv", index=False)
        if cfg.drop_copies:
            keep = syn[~syn["id"].isin({c["synthetic_id"] for c in report["copies"]})]
            kept_dir = tmp / "synthetic_without_copies"
            kept_dir.mkdir()
            write_manifest(combine([(keep, syn_dir)], Path(cfg.out) / "synthetic_without_copies"), kept_dir / MANIFEST)
            write_classes(classes, kept_dir / CLASSES)
        write_json(run_record("audit", cfg.model_dump(mode="json"), started, synthetic_run=provenance.get("generator_sha256"),
                              data_manifest_sha256=sha256_file(data / MANIFEST), n_synthetic=len(syn),
                              copies=len(report["copies"]), provenance_ok=provenance["ok"]), tmp / "run.json")
    return Path(cfg.out)


def summary(report: dict) -> str:
    """The audit as a short table for a person."""
    def fmt(v, why=None):
        return ("undefined" if why else "-") if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = [f"{'metric':34s} {'extractor':14s} {'synthetic':>10s} {'baseline':>10s} {'n_real':>7s} {'n_syn':>6s}"]
    reasons = []
    for r in report["metrics"]:
        value = fmt(r["value"], r.get("undefined")) + (f"±{r['std']:.2g}" if r.get("std") is not None else "")
        baseline = fmt(r["baseline"], r.get("baseline_undefined"))
        lines.append(f"{r['metric']:34s} {r['extractor']:14s} {value:>10s} {baseline:>10s} {r['n_real']:>7d} {r['n_synthetic']:>6d}")
        reasons += [f"  {r['metric']} ({r['extractor']}){side}: undefined: {r[key]}"
                    for key, side in (("undefined", ""), ("baseline_undefined", " baseline")) if r.get(key)]
    lines += reasons
    rule = report["copy_rule"]
    lines.append(f"copies: {len(report['copies'])} of {report['metrics'][0]['n_synthetic']} synthetic images "
                 f"(SSIM >= {rule['ssim_threshold']:.3f} and distance <= {rule['distance_threshold']:.3g})")
    for c in report["copies"][:10]:
        lines.append(f"  {c['synthetic_id']} ~ {c['train_id']} (ssim {c['ssim']:.3f}, distance {c['distance']:.3g})")
    inc = report["extractors"]["inception"]
    if not inc["computed"]:
        lines.append(f"Inception FID not computed: {inc['reason']}")
    prov = report["provenance"]
    lines.append(f"provenance: {'ok' if prov['ok'] else 'PROBLEMS: ' + '; '.join(prov['problems'][:5])} "
                 f"({prov['checked_rows']} rows; generator trained on {prov['generator_trained_on']} train images only)")
    return "\n".join(lines)
