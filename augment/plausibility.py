"""How anomalous an image looks: the reconstruction error of a small VAE trained on real images
(the classic VAE anomaly score; An & Cho 2015).

:func:`fit_scorer` trains image-only convolutional VAEs (Gaussian likelihood, standard normal
prior) on a set of real images by cross-fitting: the images are split into ``folds`` seeded
folds and one VAE is trained without each fold. A score is the mean squared error between an
image and its reconstruction from the posterior mean, in [0, 1] pixel units (no sampling: a pure
function of the image and the weights). Each real image gets the score of the VAE that never saw
it (:attr:`Scorer.own`); any other image the mean over the fold VAEs (:meth:`Scorer.score`).
Out-of-fold scores matter at 16-64 images: a VAE memorises its few training images, so their
in-sample errors are far below any new image's and every synthetic image would look anomalous.

Images the VAEs reconstruct badly are unlike the real ones: the evaluation's ``reconstruction``
filter drops synthetic pairs scoring above a high percentile of the real images' out-of-fold
scores, and ``augment score`` ranks a dataset's own images (corrupt, mislabelled or
out-of-protocol scans come first).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pydantic import Field
from torch import nn

from typing import Literal

from augment.config import Seed, Strict
from augment.downstream import epoch_batches
from augment.errors import DataError
from augment.lock import locked
from augment.output import StageResult, atomic_path, building, record_of
from augment.runinfo import run_record, write_json
from augment.seeding import mix_seed


class ScorerConfig(Strict):
    steps: int = Field(400, ge=1, description="AdamW steps")
    batch_size: int = Field(32, ge=1, le=4096)
    lr: float = Field(1e-3, ge=1e-7, le=1.0, description="AdamW learning rate, in [1e-07, 1] (as the task models)")
    latent_dim: int = Field(16, ge=1)
    base_channels: int = Field(16, ge=4)
    image_sigma: float = Field(0.1, ge=1e-3, le=10, description="std of the Gaussian likelihood, in [0, 1] pixel units (1e-3 to 10)")
    folds: int = Field(2, ge=2, le=10, description="cross-fitting folds: each real image is scored by a VAE that did not see it")


class ScoreConfig(Strict):
    """``augment score DATA``: rank a dataset's own images by how anomalous they look."""

    data: Path
    out: Path
    split: Literal["all", "train", "val", "test"] = Field("all", description="which images to train the scorer on and rank")
    seed: Seed = 0
    scorer: ScorerConfig = Field(default_factory=ScorerConfig)
    overwrite: bool = False


def _levels(size: int) -> int:
    """Stride-2 stages while the side stays even and at least 4 px."""
    n = 0
    while size % 2 == 0 and size // 2 >= 4 and n < 5:
        size //= 2
        n += 1
    return n


class VAE(nn.Module):
    """Stride-2 conv encoder to (mu, logvar) of a ``latent_dim`` code, a mirrored decoder with a sigmoid head."""

    def __init__(self, channels: int, height: int, width: int, cfg: ScorerConfig) -> None:
        super().__init__()
        levels = min(_levels(height), _levels(width))
        widths = [min(cfg.base_channels * 2**i, 128) for i in range(levels)]
        enc, cin = [], channels
        for w in widths:
            enc += [nn.Conv2d(cin, w, 4, 2, 1), nn.SiLU()]
            cin = w
        self.encoder = nn.Sequential(*enc)
        self.grid = (cin, height >> levels, width >> levels)
        flat = cin * self.grid[1] * self.grid[2]
        self.to_stats = nn.Linear(flat, 2 * cfg.latent_dim)
        self.from_code = nn.Linear(cfg.latent_dim, flat)
        dec = []
        for w in [*reversed(widths[:-1]), widths[0]]:  # one upsampling per encoder stage
            dec += [nn.ConvTranspose2d(cin, w, 4, 2, 1), nn.SiLU()]
            cin = w
        self.decoder = nn.Sequential(*dec, nn.Conv2d(cin, channels, 3, 1, 1))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.to_stats(self.encoder(x).flatten(1)).chunk(2, dim=1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(self.from_code(z).view(-1, *self.grid)))


def _errors(model: VAE, images: torch.Tensor, batch_size: int = 128) -> np.ndarray:
    """(N, C, H, W) -> (N,) reconstruction MSE from the posterior mean."""
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size]
            out.append((model.decode(model.encode(x)[0]) - x).pow(2).flatten(1).mean(1))
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


@dataclass
class Scorer:
    models: list[VAE]  # one per fold, each trained without its fold
    own: np.ndarray  # each training image's score by the VAE that did not see it
    seconds: float

    def score(self, images: torch.Tensor) -> np.ndarray:
        """(N, C, H, W) float [0, 1] -> (N,) reconstruction MSE, the mean over the fold VAEs."""
        return np.mean([_errors(m, images) for m in self.models], axis=0) if len(images) else np.zeros(0)


def _train(images: torch.Tensor, cfg: ScorerConfig, seed: int) -> VAE:
    n, c, h, w = images.shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(mix_seed(seed, 0x5C0E))
        model = VAE(c, h, w, cfg)
        gen = torch.Generator().manual_seed(mix_seed(seed, 0x5C0F))
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
        model.train()
        for idx in epoch_batches(n, cfg.batch_size, cfg.steps, seed):
            x = images[torch.from_numpy(idx)]
            mu, logvar = model.encode(x)
            z = mu + torch.randn(mu.shape, generator=gen) * (0.5 * logvar).exp()
            nll = (model.decode(z) - x).pow(2).flatten(1).sum(1) / (2 * cfg.image_sigma**2)
            kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
            loss = (nll + kl).mean() / x[0].numel()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


def fit_scorer(images: torch.Tensor, cfg: ScorerConfig, seed: int) -> Scorer:
    """Cross-fit ``cfg.folds`` VAEs on ``images`` (N, C, H, W) float [0, 1], ``cfg.steps`` seeded
    steps each (see the module docstring)."""
    t = time.time()
    n, _, h, w = images.shape
    if _levels(h) == 0 or _levels(w) == 0:
        raise DataError(f"the plausibility scorer needs images of at least 8x8 px with even sides (got {h}x{w})")
    if n < 2 * cfg.folds:
        raise DataError(f"the plausibility scorer needs at least {2 * cfg.folds} images for {cfg.folds} folds (got {n})")
    fold = np.random.default_rng(mix_seed(seed, 0xF01D)).permutation(n) % cfg.folds
    models, own = [], np.zeros(n)
    for k in range(cfg.folds):
        model = _train(images[torch.from_numpy(np.flatnonzero(fold != k))], cfg, mix_seed(seed, k))
        own[fold == k] = _errors(model, images[torch.from_numpy(np.flatnonzero(fold == k))])
        if not all(bool(torch.isfinite(w).all()) for w in model.state_dict().values()) or not np.isfinite(own[fold == k]).all():
            # a non-finite score would rank nothing and be written as NaN: refuse it instead
            raise DataError(f"the plausibility scorer's training diverged (non-finite weights or reconstruction errors in fold {k + 1} "
                            f"of {cfg.folds}); lower scorer.lr (now {cfg.lr:g}) or raise scorer.image_sigma (now {cfg.image_sigma:g})")
        models.append(model)
    return Scorer(models, own, time.time() - t)


def score_table(df: pd.DataFrame, scores: np.ndarray) -> pd.DataFrame:
    """The rows with their ``score`` and ``rank`` (1 = most anomalous), most anomalous first."""
    out = df[[c for c in ("id", "image", "label", "split") if c in df.columns]].copy()
    out["score"] = scores
    out["rank"] = out["score"].rank(ascending=False, method="first").astype(int)
    return out.sort_values("rank").reset_index(drop=True)


def score_images(cfg: ScoreConfig) -> tuple[pd.DataFrame, Scorer]:
    """Train the scorer on the chosen images of ``cfg.data`` and rank them (:func:`score_table`)."""
    from augment.data.dataset import to_tensor
    from augment.data.images import read_image
    from augment.data.manifest import load_data

    df, _ = load_data(cfg.data)
    rows = df if cfg.split == "all" else df[df["split"] == cfg.split]
    if len(rows) < 2 * cfg.scorer.folds:
        raise DataError(f"`{cfg.data}` has {len(rows)} image(s) in split `{cfg.split}`; the scorer needs at least "
                        f"{2 * cfg.scorer.folds} (choose --split all, train, val or test, or fewer scorer.folds)")
    pixels, first = [], {}
    for path in rows["image"]:  # each file read once: sizes checked, then stacked
        pixels.append(read_image(Path(cfg.data) / path))
        first.setdefault(pixels[-1].shape, path)
    if len(first) > 1:
        (a, pa), (b, pb) = list(first.items())[:2]
        raise DataError(f"`{cfg.data}` mixes image sizes (`{pa}` is {a}, `{pb}` is {b}); prepare it with --image-size N first")
    images = torch.stack([to_tensor(p) for p in pixels])
    scorer = fit_scorer(images, cfg.scorer, cfg.seed)
    return score_table(rows, scorer.own), scorer


@locked(lambda cfg, *_, **__: cfg.out, "score")
def score(cfg: ScoreConfig, top: int = 10) -> StageResult:
    """``augment score``: train a small VAE on a dataset's images and rank them by reconstruction
    error, most anomalous first (see :mod:`augment.plausibility`); writes ``OUT/scores.csv``."""
    from augment.config import save_json

    started = time.time()
    table, scorer = score_images(cfg)
    with building(cfg.out, cfg.overwrite, "score") as tmp:
        with atomic_path(tmp / "scores.csv") as f:
            table.to_csv(f, index=False)
        save_json(cfg, tmp / "config.json")
        high = float(table["score"].quantile(0.95))
        write_json(run_record("score", cfg.model_dump(mode="json"), started, n_images=len(table), split=cfg.split,
                              train_seconds=round(scorer.seconds, 2), score_p95=high,
                              median_score=float(table["score"].median())), tmp / "run.json")
    shown = table.head(top)[[c for c in ("rank", "id", "label", "split", "score") if c in table]]
    text = (f"{len(table)} images of `{cfg.data}` ({cfg.split}) ranked by VAE reconstruction error (most anomalous first; "
            f"median {table['score'].median():.5f}, 95th percentile {high:.5f}):\n"
            f"{shown.to_string(index=False, float_format='%.5f')}\nwrote {Path(cfg.out) / 'scores.csv'}")
    return StageResult(Path(cfg.out), record_of(Path(cfg.out)), text)
