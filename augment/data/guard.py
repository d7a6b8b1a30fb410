"""The generator's training set, and the proof that it holds no val or test image.

Only the label-budget subset of the train split is ever loaded for a generator. Every image is
re-hashed from disk (the manifest is not trusted) and compared with every val and test image,
both by file bytes and by decoded pixels (a re-encoded copy has other bytes but the same
pixels); one match stops the run. Rows that were val or test when the set was prepared cannot
have become train rows (checked by :func:`augment.data.manifest.load_data`).

Copies that are not pixel-identical (saved as JPEG, flipped, shifted by a pixel) are caught by
:func:`check_near_duplicates`, which ``prepare`` runs between the train split and val + test, and
which runs again here on the training rows: a pair that prepare did not accept knowingly (and
record in ``run.json``) is refused.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from augment.data.dataset import to_tensor
from augment.data.images import mask_class_problem, pixel_sha256, read_image, read_mask, sha256_file
from augment.data.manifest import HELDOUT, MANIFEST, load_data, prepare_record
from augment.data.splits import select_budget
from augment.errors import DataError
from augment.metrics import ssim_pairs
from augment.progress import track


@dataclass
class TrainingSet:
    images: torch.Tensor  # (N, C, H, W) float32 in [0, 1]
    masks: torch.Tensor  # (N, H, W) int64
    labels: torch.Tensor  # (N,) int64
    rows: pd.DataFrame  # the budget rows, in manifest order
    classes: dict[int, str]
    manifest_sha256: str
    trained_on: list[dict[str, str]]  # [{"id", "sha256"}] re-hashed from disk


@dataclass
class Heldout:
    """A dataset's val and test images, read from disk once: indexed by file sha256 and by decoded
    pixels (a re-encoded copy has other bytes but the same pixels), and kept as arrays for
    :func:`check_near_duplicates`."""

    by_bytes: dict[str, tuple[str, str]]  # file sha256 -> (id, split)
    by_pixels: dict[str, tuple[str, str]]  # pixel sha256 -> (id, split)
    file_sha256: dict[str, str]  # id -> file sha256
    images: dict[str, list[tuple[str, np.ndarray]]]  # split -> [(id, uint8 image)]

    def copy_of(self, sha: str, pixels: np.ndarray | None) -> tuple[str, str, str] | None:
        """``(id, split, "byte" | "pixel")`` of the held-out image that a file with sha256 ``sha``
        and decoded ``pixels`` copies, or None."""
        if sha in self.by_bytes:
            return (*self.by_bytes[sha], "byte")
        hit = self.by_pixels.get(pixel_sha256(pixels)) if pixels is not None else None
        return None if hit is None else (*hit, "pixel")


def read_heldout(manifest: pd.DataFrame, root: Path) -> Heldout:
    """The val and test rows of ``manifest`` (files under ``root``) as a :class:`Heldout`."""
    held = Heldout({}, {}, {}, {s: [] for s in HELDOUT})
    for row in manifest[manifest["split"].isin(HELDOUT)].itertuples():
        sha, image = sha256_file(root / row.image), read_image(root / row.image)
        held.by_bytes.setdefault(sha, (row.id, row.split))
        held.by_pixels.setdefault(pixel_sha256(image), (row.id, row.split))
        held.file_sha256[row.id] = sha
        held.images[row.split].append((row.id, image))
    return held


def assert_no_heldout(train_rows: pd.DataFrame, manifest: pd.DataFrame, root: Path, heldout: Heldout | None = None) -> list[dict[str, str]]:
    """Hash every training image and every val/test image from disk, as file bytes and as decoded
    pixels; raise on any overlap or on a training file that no longer matches its manifest hash;
    then refuse near-duplicates (:func:`check_near_duplicates`) other than the pairs ``prepare``
    accepted. ``heldout``: the val/test images when the caller has read them (:func:`read_heldout`).
    Returns ``[{"id", "sha256"}]`` (file hashes)."""
    heldout = heldout or read_heldout(manifest, root)
    trained, images = [], []
    for row in train_rows.itertuples():
        sha, image = sha256_file(root / row.image), read_image(root / row.image)
        if sha != row.sha256:
            raise DataError(f"image `{row.image}` ({row.id}) changed since prepare: its sha256 no longer matches the manifest")
        hit = heldout.copy_of(sha, image)
        if hit is not None:
            other, split, how = hit
            same = "byte-identical to" if how == "byte" else "pixel-identical to (a re-encoded copy of)"
            raise DataError(
                f"training image {row.id} is {same} {split} image {other}; "
                "a generator must never see val or test images (fix the split or drop one of them)"
            )
        trained.append({"id": row.id, "sha256": sha})
        images.append((row.id, image))
    record = prepare_record(root)
    accepted = record["near_duplicates"] if record is not None else set()
    hits = check_near_duplicates(images, heldout.images, "training", allow=True)
    new = [h for h in hits if (h["candidate"], h["heldout"]) not in accepted]
    if new:
        raise DataError(near_duplicate_message(new, "training", "`augment prepare --set allow_near_duplicates=true` "
                                                                "(prepare records the pairs it accepts)"))
    return trained


# ---- near-duplicates: the same picture after JPEG, a flip or a small shift ----------------------

#: Side of the grayscale thumbnails compared: small enough to be cheap and to wash out JPEG
#: noise, large enough to keep an image's own anatomy.
NEAR_DUPLICATE_SIDE = 32
#: Each image is first resampled to a grid of its own height and width, each at most the upper
#: bound, and below the lower bound scaled up by a whole factor (12 px -> 24): shifts are tried on
#: that grid, so a 1-px shift of an image of up to 128 px is a whole number of grid px there.
NEAR_DUPLICATE_GRID = (16, 128)
#: Shifts tried, in grid pixels each way.
NEAR_DUPLICATE_SHIFT = 2
#: A pair is a near-duplicate when the SSIM (:func:`augment.metrics.ssim_pairs`) of their
#: thumbnails, at the candidate's best flip and shift, is at least this. Tuned on copies of
#: phantom images of 8..64 px, BUSI and RetinaMNIST images: JPEG q95, flips and 1-2 px shifts each
#: scored >= 0.982 (all three at once >= 0.976; 0.96 at 8 px); and on distinct images: phantoms
#: <= 0.78 (<= 0.63 from 16 px), RetinaMNIST's look-alike 28-px fundus photos <= 0.967, frames of
#: one BUSI clip 0.88-0.91. BUSI pairs at 0.95-0.975 are one frame with or without calipers.
NEAR_DUPLICATE_SSIM = 0.975
#: Only pairs whose Pearson correlation (best flip and shift) reaches this, and only each
#: candidate's :data:`NEAR_DUPLICATE_TOP` best such references, get the SSIM: the correlation of
#: all pairs is one matrix product, the SSIM is not. The copies above correlate at r >= 0.996
#: (0.97 at 8 px); of RetinaMNIST's 562k train x val/test pairs 10k reach 0.95, of BUSI's 128k 102.
NEAR_DUPLICATE_PREFILTER = 0.95
NEAR_DUPLICATE_TOP = 4
_FLIPS = (("as is", "flipped horizontally"), ("flipped vertically", "flipped both ways"))  # [vertical][horizontal]
_FLAT = 0.5  # grey levels: a thumbnail with less standard deviation is blank, no picture to compare
_CHUNK = 64  # candidates per matrix product: 64 x 100 views x 32 x 32 floats, 26 MB
_SSIM_BATCH = 4096  # pairs per SSIM call, which bounds its memory
_SHOWN = 5  # pairs spelled out in one error line before "and N more"


def _grid(name: str, image: np.ndarray, what: str) -> torch.Tensor:
    """``image`` as a (GH, GW) float32 grid of grey levels 0..255 (see :data:`NEAR_DUPLICATE_GRID`)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise TypeError(f"check_near_duplicates needs (name, uint8 (H, W) or (H, W, 3) array) items; {what} `{name}` is "
                        f"{type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}")
    gray = Image.fromarray(image).convert("F")  # RGB -> luma (ITU-R 601), as PIL's "L"
    lo, hi = NEAR_DUPLICATE_GRID
    size = tuple(min(n, hi) if n >= lo else n * -(-lo // n) for n in gray.size)
    return torch.from_numpy(np.array(gray.resize(size, Image.BILINEAR) if size != gray.size else gray, dtype=np.float32))


@functools.lru_cache(maxsize=16)
def _resamplers(g: int) -> torch.Tensor:
    """(2, 2m + 1, S, g) matrices that take one axis of a g-px grid to the S px of a thumbnail:
    [flipped or not][shift], the crop ``[m + d, g - m + d)`` of the (flipped) axis, resampled like
    ``F.interpolate(mode="bilinear", antialias=True)``. ``A @ grid @ B.T`` is then one view."""
    import torch.nn.functional as F

    m, s = NEAR_DUPLICATE_SHIFT, NEAR_DUPLICATE_SIDE
    eye = torch.eye(g - 2 * m)[None, None]
    r = F.interpolate(eye, size=(s, g - 2 * m), mode="bilinear", antialias=True, align_corners=False)[0, 0]
    mats = torch.zeros(2 * m + 1, s, g)
    for k in range(2 * m + 1):
        mats[k, :, k:k + g - 2 * m] = r
    return torch.stack([mats, mats.flip(-1)])  # an axis flipped is its matrix mirrored


def _by_shape(grids: list[torch.Tensor], mats: Callable[[int], torch.Tensor]) -> torch.Tensor:
    """``mats(GH) @ grid @ mats(GW).T`` for every grid, batched over grids of one shape."""
    out: torch.Tensor | None = None
    for shape in sorted({tuple(t.shape) for t in grids}):
        idx = [i for i, t in enumerate(grids) if tuple(t.shape) == shape]
        part = mats(shape[0]) @ torch.stack([grids[i] for i in idx]) @ mats(shape[1]).t()
        out = part.new_empty(len(grids), *part.shape[1:]) if out is None else out
        out[idx] = part
    return out  # grids is never empty here


def _views(grids: list[torch.Tensor]) -> torch.Tensor:
    """(N, V, S, S) thumbnails (grey levels) of every flip and shift of each grid; view ``v`` is
    flip ``v // (2m + 1)**2`` (as in :data:`_FLIPS`, flattened), then shift (dy, dx) row-major."""
    s, k = NEAR_DUPLICATE_SIDE, 2 * NEAR_DUPLICATE_SHIFT + 1
    out = _by_shape(grids, lambda g: _resamplers(g).reshape(2 * k * s, g))  # (N, [vflip, dy, row], [hflip, dx, col])
    out = out.reshape(len(grids), 2, k, s, 2, k, s).permute(0, 1, 4, 2, 5, 3, 6)
    return out.reshape(len(grids), 4 * k * k, s, s)


def _centres(grids: list[torch.Tensor]) -> torch.Tensor:
    """(N, S, S) thumbnails (grey levels) of the grids as they are: their centre crops."""
    return _by_shape(grids, lambda g: _resamplers(g)[0, NEAR_DUPLICATE_SHIFT])


def _normalised(x: torch.Tensor) -> torch.Tensor:
    """(..., S, S) thumbnails standardised each and mapped to ``0.5 + z / 6`` (+-3 sd in [0, 1],
    the data range SSIM assumes), so brightness and contrast do not count; a blank one (sd below
    :data:`_FLAT`) becomes all zeros. Standardising keeps JPEG ringing at one pixel from moving
    the whole scale, as a min-max would (on 12-px phantoms JPEG q95 scored 0.965 min-max, 0.992 here)."""
    if not x.numel():
        return x
    mean, sd = x.mean((-2, -1), keepdim=True), x.std((-2, -1), keepdim=True)
    return torch.where(sd > _FLAT, 0.5 + (x - mean) / (6 * sd.clamp_min(_FLAT)), torch.zeros_like(x))


def _standardised(x: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` (..., D) with zero mean and unit norm, so that a dot product is Pearson's r."""
    x = x - x.mean(-1, keepdim=True)
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-8)


def _how(v: int) -> str:
    """What view ``v`` of :func:`_views` did to the candidate."""
    k = 2 * NEAR_DUPLICATE_SHIFT + 1
    flip, rest = divmod(v, k * k)
    dy, dx = rest // k - NEAR_DUPLICATE_SHIFT, rest % k - NEAR_DUPLICATE_SHIFT
    parts = [_FLIPS[flip // 2][flip % 2]] if flip else []
    parts += [f"shifted {dx:+d},{dy:+d} px (x,y)"] if dy or dx else []
    return ", ".join(parts) or "as is"


def _chunks(items: Iterable[tuple[str, np.ndarray]], what: str) -> Iterator[tuple[list[str], list[torch.Tensor]]]:
    """``items`` as (names, grids) lists of at most :data:`_CHUNK`, read as they are needed."""
    names: list[str] = []
    grids: list[torch.Tensor] = []
    for name, image in items:
        names.append(str(name))
        grids.append(_grid(name, image, what))
        if len(grids) == _CHUNK:
            yield names, grids
            names, grids = [], []
    if grids:
        yield names, grids


def _likely(names: list[str], grids: list[torch.Tensor], unit_refs: torch.Tensor) -> tuple[list[tuple[str, int, int]], torch.Tensor]:
    """The pairs of ``grids`` and references worth an SSIM: ``[(candidate name, reference index,
    view)]`` and those views' normalised thumbnails (P, S, S). ``unit_refs``: (D, R) standardised
    reference thumbnails. Pearson's r ignores brightness and contrast, so views are normalised only
    once picked; a blank view has r = 0."""
    views = _views(grids)
    r = _standardised(views.flatten(2)) @ unit_refs  # (n, V, R)
    best_r, best_view = r.max(1)
    top_r, top = best_r.topk(min(NEAR_DUPLICATE_TOP, best_r.shape[1]), 1)
    ci, k = torch.nonzero(top_r >= NEAR_DUPLICATE_PREFILTER, as_tuple=True)
    ri = top[ci, k]
    vi = best_view[ci, ri]
    return [(names[c], h, v) for c, h, v in zip(ci.tolist(), ri.tolist(), vi.tolist())], _normalised(views[ci, vi])


def check_near_duplicates(
    candidates: Iterable[tuple[str, np.ndarray]],
    heldout: Mapping[str, Iterable[tuple[str, np.ndarray]]],
    what: str,
    allow: bool,
    switch: str = "`allow_near_duplicates=true`",
) -> list[dict]:
    """Refuse (or, with ``allow``, list) candidate images that are near-copies of held-out ones.

    ``candidates``: ``(name, image)`` pairs, e.g. the train split or a synthetic set; ``heldout``:
    such pairs per split, e.g. ``{"val": [...], "test": [...]}``. ``name`` is how an error cites
    the image (an id or a manifest path); ``image`` is a numpy ``uint8`` array, ``(H, W)``
    grayscale or ``(H, W, 3)`` RGB, any size (``zip(ids, images)`` over an ``(N, H, W[, 3])``
    array works). Both may be lazy iterables (generators reading files): candidates are consumed
    64 at a time, and only a 32x32 thumbnail of each held-out image is kept. ``what`` names the
    candidates in the error (``"train"``, ``"synthetic"``); ``switch`` is the setting the error
    offers for accepting the pairs knowingly.

    Rule, in the spirit of the audit's nearest-neighbour SSIM copy rule but with a fixed threshold
    (at prepare there is no train-to-train baseline to take a percentile of): each image becomes a
    grayscale grid of its own size (at most 128 px a side, below 16 px scaled up by a whole factor:
    :data:`NEAR_DUPLICATE_GRID`), then a :data:`NEAR_DUPLICATE_SIDE` px thumbnail of the grid's
    centre crop, standardised (brightness and contrast do not count). Candidates are also
    flipped horizontally, vertically and both, and shifted by up to :data:`NEAR_DUPLICATE_SHIFT`
    grid px each way. A pair's score is the SSIM of the two thumbnails at the candidate's best view
    (by correlation); score >= :data:`NEAR_DUPLICATE_SSIM` (0.975) is a near-duplicate. Blank
    (constant) images are skipped: they hold no picture to leak. The cost is one matrix product of
    all views with all held-out thumbnails (Pearson's r), then the SSIM of at most
    :data:`NEAR_DUPLICATE_TOP` pairs per candidate, those above :data:`NEAR_DUPLICATE_PREFILTER`:
    about 1 s of one CPU core for BUSI's 546 train x 234 val/test images at 128 px, reading included.

    Returns the near-duplicate pairs, highest score first, as dicts ``{"candidate", "heldout",
    "split", "score", "view"}`` (``view``: e.g. ``"flipped horizontally, shifted +1,+0 px (x,y)"``);
    raises one DataError naming them unless ``allow``.
    """
    held_names, held_splits, thumbs = [], [], []
    for split, items in heldout.items():
        for names, grids in _chunks(items, f"{split} image"):
            held_names += names
            held_splits += [split] * len(names)
            thumbs.append(_normalised(_centres(grids)))
    keep = torch.nonzero(torch.cat(thumbs).flatten(1).amax(1) > 0).flatten().tolist() if thumbs else []
    if not keep:  # no held-out image, or only blank ones: they hold no picture
        return []
    refs = torch.cat(thumbs)[keep]
    unit_refs = _standardised(refs.flatten(1)).t()
    pairs: list[tuple[str, int, int]] = []
    picked = []
    for names, grids in _chunks(track(candidates, None, f"near-duplicates of val/test among {what} images", "images"), f"{what} image"):
        more, views = _likely(names, grids, unit_refs)
        pairs += more
        picked.append(views)
    picked_views = torch.cat(picked) if picked else torch.zeros(0, 1, 1)
    scores = []
    for start in range(0, len(pairs), _SSIM_BATCH):
        ref_idx = [h for _, h, _ in pairs[start:start + _SSIM_BATCH]]
        scores += ssim_pairs(picked_views[start:start + _SSIM_BATCH, None], refs[ref_idx][:, None]).tolist()
    hits = [{"candidate": c, "heldout": held_names[keep[h]], "split": held_splits[keep[h]], "score": round(s, 4), "view": _how(v)}
            for (c, h, v), s in zip(pairs, scores) if s >= NEAR_DUPLICATE_SSIM]
    hits.sort(key=lambda h: (-h["score"], h["candidate"], h["heldout"]))
    if hits and not allow:
        raise DataError(near_duplicate_message(hits, what, switch))
    return hits


def near_duplicate_message(hits: list[dict], what: str, switch: str) -> str:
    """The one line that refuses ``hits`` (from :func:`check_near_duplicates`), naming the first pairs."""
    shown = "; ".join(f"{what} image `{h['candidate']}` is a near-duplicate of {h['split']} image `{h['heldout']}` "
                      f"(score {h['score']:.3f} >= {NEAR_DUPLICATE_SSIM}, {h['view']})" for h in hits[:_SHOWN])
    more = f"; and {len(hits) - _SHOWN} more" if len(hits) > _SHOWN else ""
    side = NEAR_DUPLICATE_SIDE
    return (f"{len(hits)} near-duplicate pair(s) across splits: {shown}{more}; score = SSIM of {side}x{side} grayscale "
            f"thumbnails at the best flip and shift; {what} images must not be copies of val/test images (drop one image "
            f"of each pair or keep both on one side of the split, or accept these pairs knowingly with {switch})")


def check_trained_on(trained_sha256: list[str], manifest: pd.DataFrame, root: Path, what: str) -> None:
    """Every image a generator trained on (by recorded sha256) must be a train-split image of the
    dataset at ``root`` (files re-hashed from disk); ``what`` names the synthetic set in errors."""
    split_of = {sha256_file(root / p): s for p, s in zip(manifest["image"], manifest["split"])}
    foreign = [h for h in trained_sha256 if h not in split_of]
    heldout = [h for h in trained_sha256 if split_of.get(h) in ("val", "test")]
    if heldout:
        raise DataError(f"{what} comes from a generator that saw {len(heldout)} val/test image(s) of `{root}`; "
                        "it cannot be evaluated on that data")
    if foreign:
        raise DataError(f"{what} comes from a generator trained on {len(foreign)} image(s) that are not in `{root}`; "
                        "use it with its own data")


def load_training_set(data_dir: str | Path, budget: int | None, seed: int) -> TrainingSet:
    root = Path(data_dir)
    manifest, classes = load_data(root)
    rows = select_budget(manifest, budget, seed)
    no_mask = rows.loc[rows["mask"] == "", "id"].tolist()
    # a classification set (no mask at all) trains with empty masks: the generator makes images,
    # its masks are empty; a set with some masks missing is a mistake
    unmasked = len(no_mask) == len(rows)
    if no_mask and not unmasked:
        raise DataError(
            f"`{root}` has no mask for {len(no_mask)} of {len(rows)} training image(s) (e.g. {no_mask[0]}); "
            "generators make image+mask pairs and need a mask for every image, or none for a classification set"
        )
    trained_on = assert_no_heldout(rows, manifest, root)
    images, masks = [], []
    for row in rows.itertuples():
        image = read_image(root / row.image)
        if images and image.shape != images[0].shape:
            raise DataError(
                f"image {row.id} is {image.shape[1]}x{image.shape[0]} (x{image.shape[2] if image.ndim == 3 else 1} channels) "
                f"but {rows['id'].iloc[0]} is {images[0].shape[1]}x{images[0].shape[0]}; re-run prepare with --image-size"
            )
        images.append(image)
        masks.append(np.zeros(image.shape[:2], np.uint8) if unmasked else read_mask(root / row.mask))
        if (bad := mask_class_problem(masks[-1], f"mask `{row.mask}` ({row.id})", len(classes))) is not None:
            raise DataError(bad)
    if images[0].shape[0] != images[0].shape[1]:
        raise DataError(f"images are {images[0].shape[1]}x{images[0].shape[0]}; generators need square images (prepare --image-size N)")
    return TrainingSet(
        images=torch.stack([to_tensor(i) for i in images]),
        masks=torch.from_numpy(np.stack(masks)).to(torch.int64),
        labels=torch.tensor(rows["label"].to_numpy(), dtype=torch.int64),
        rows=rows,
        classes=classes,
        manifest_sha256=sha256_file(root / MANIFEST),
        trained_on=trained_on,
    )
