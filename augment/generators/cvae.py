"""Conditional VAE over an image and its mask together (Kingma & Welling 2014; Sohn et al. 2015).

The encoder sees the image, the mask as one-hot channels and the class label as constant
planes; the decoder gets the latent code and the label (concatenated at the input and added as
a per-channel bias at every level, so the class cannot be ignored). The image likelihood is
Gaussian with a fixed ``image_sigma`` (a small sigma keeps the KL from washing out detail), the
mask likelihood categorical; masks are argmax'd at sampling time.

``mode: mask`` makes the image *for a given mask* instead (the route published low-data ablations
favour over joint generation, e.g. semantic-image-synthesis data augmentation): the decoder gets
the one-hot mask, area-downsampled, at every level (a learned projection added to the features,
in the spirit of SPADE, Park et al. 2019) and at its head, and outputs only the image; the
sampler then takes real masks from the generator's own budget (``mask_source: real``).

``mode: inpaint`` fills the lesion region of a real background instead: the encoder also sees the
region, and the decoder gets, beside the mask, the background with the region blanked out and the
region itself (the same per-level projections); the image loss counts inside the region only
(:func:`~augment.generators.base.training_regions`: each budget lesion dilated by
``inpaint_margin``, a random ellipse on an image without one), and the sampler composites the
real background back around it (:mod:`augment.placement`).

Defaults were chosen on BUSI at 64 px with a budget of 64 (see bench/train_cvae.py): with
``image_sigma=0.1`` and a 64-d latent the reconstructions were near perfect but prior samples
were incoherent texture with fragmented masks (the aggregate posterior left the prior);
``image_sigma=0.25``, a 32-d latent, KL warm-up and a heavier mask term give blurrier but
coherent scans whose dark regions follow their masks.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from augment.config import Strict
from augment.generators.base import Context, DataSpec, Sample, label_maps, one_hot_masks, randn, training_regions


class CVAEConfig(Strict):
    family: Literal["cvae"] = "cvae"
    latent_dim: int = Field(32, ge=1, le=4096)
    base_channels: int = Field(16, ge=4, le=2048)
    max_channels: int = Field(128, ge=4, le=2048)
    deep_below: int = Field(16, ge=1, le=4096, description="add a 3x3 conv to blocks whose output side is <= this many px")
    image_sigma: float = Field(0.25, ge=1e-3, le=10, description="std of the Gaussian image likelihood, in [0,1] pixel units")
    mask_weight: float = Field(2.0, ge=0, le=1000)
    kl_weight: float = Field(1.0, ge=0, le=1000)
    kl_warmup_steps: int = Field(300, ge=0, le=10**7, description="linear KL weight warm-up from 0 (avoids early posterior collapse)")
    mode: Literal["joint", "mask", "inpaint"] = Field(
        "joint", description="joint: image and mask from the label; mask: the image for a given mask; inpaint: the lesion "
        "region of a real background for a given mask")
    inpaint_margin: float = Field(0.08, ge=0, le=0.5, description="inpaint mode: training regions are lesions dilated by this fraction of the side")


class CVAESampler(Strict):
    """Sampling-time settings (``augment sample --set sampler.temperature=0.8``)."""

    temperature: float = Field(1.0, ge=0.01, le=10, description="prior std at sampling time (0.01 to 10)")


def _groups(ch: int) -> int:
    return 8 if ch % 8 == 0 else 1


def _block(cin: int, cout: int, down: bool, deep: bool) -> nn.Sequential:
    """A strided (transposed) 4x4 conv; ``deep`` adds a 3x3 conv, used only at low resolution
    where it is cheap (full-resolution 3x3 convs dominate CPU time for little gain)."""
    first = nn.Conv2d(cin, cout, 4, 2, 1) if down else nn.ConvTranspose2d(cin, cout, 4, 2, 1)
    layers = [first, nn.GroupNorm(_groups(cout), cout), nn.SiLU()]
    if deep:
        layers += [nn.Conv2d(cout, cout, 3, 1, 1), nn.GroupNorm(_groups(cout), cout), nn.SiLU()]
    return nn.Sequential(*layers)


def levels_for(size: int) -> int:
    """Halvings while the side stays even and at least 4 px (64 -> 4 levels, 28 -> 2)."""
    n = 0
    while size % 2 == 0 and size // 2 >= 4:
        size //= 2
        n += 1
    return n


class CVAE(nn.Module):
    phases = ("main",)
    Sampler = CVAESampler

    def __init__(self, config: CVAEConfig, spec: DataSpec) -> None:
        super().__init__()
        self.config, self.spec = config, spec
        c, k, n = spec.channels, spec.mask_classes, spec.num_classes
        depth = levels_for(spec.image_size)
        widths = [min(config.base_channels * 2**i, config.max_channels) for i in range(depth + 1)]
        self.side = spec.image_size // 2**depth
        flat = widths[-1] * self.side**2

        self.inpaints = config.mode == "inpaint"
        extra = 1 if self.inpaints else 0  # the region, as one more input channel
        self.stem = nn.Sequential(nn.Conv2d(c + k + n + extra, widths[0], 3, 1, 1), nn.GroupNorm(_groups(widths[0]), widths[0]), nn.SiLU())
        sides = [spec.image_size // 2**i for i in range(depth + 1)]
        deep = config.deep_below
        self.down = nn.ModuleList(_block(widths[i], widths[i + 1], True, sides[i + 1] <= deep) for i in range(depth))
        self.to_stats = nn.Linear(flat, 2 * config.latent_dim)

        self.from_latent = nn.Linear(config.latent_dim + n, flat)
        self.up = nn.ModuleList(_block(widths[i + 1], widths[i], False, sides[i] <= deep) for i in reversed(range(depth)))
        self.up_label = nn.ModuleList(nn.Embedding(n, widths[i]) for i in reversed(range(depth)))
        self.mask_conditioned = config.mode in ("mask", "inpaint")
        cond = k + (c + 1 if self.inpaints else 0)  # the mask [, the blanked background and the region]
        if self.mask_conditioned:
            self.up_mask = nn.ModuleList(nn.Conv2d(cond, widths[i], 3, 1, 1) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0] + (cond if self.mask_conditioned else 0), c if self.mask_conditioned else c + k, 3, 1, 1)
        self.widths = widths

    def phase_modules(self, phase: str) -> list[nn.Module]:
        if phase != "main":
            raise ValueError(f"cvae has one phase, `main`, not `{phase}`")
        return [self]

    def encode(self, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor,
               regions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (mu, logvar), each (B, latent_dim); ``regions`` (B, H, W) bool in inpaint mode."""
        s = self.spec
        parts = [images, one_hot_masks(masks, s.mask_classes), label_maps(labels, s.num_classes, s.image_size, s.image_size)]
        if regions is not None:
            parts.append(regions[:, None].to(images.dtype))
        x = torch.cat(parts, 1)
        h = self.stem(x)
        for block in self.down:
            h = block(h)
        mu, logvar = self.to_stats(h.flatten(1)).chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)

    def decode(
        self, z: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor | None = None, context: Context | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, latent_dim), (B,)[, masks (B, H, W) int64 in mask and inpaint mode, and the context
        in inpaint mode] -> images (B, C, H, W) in [0, 1] and mask logits (B, K, H, W) (None when
        the mask was given)."""
        onehot = F.one_hot(labels, self.spec.num_classes).float()
        h = F.silu(self.from_latent(torch.cat([z, onehot], 1))).view(-1, self.widths[-1], self.side, self.side)
        cond = one_hot_masks(masks, self.spec.mask_classes).to(h.dtype) if self.mask_conditioned else None
        if self.inpaints:
            region = context.regions[:, None].to(h.dtype)
            cond = torch.cat([cond, context.images.to(h.dtype) * (1.0 - region), region], 1)
        for i, (block, emb) in enumerate(zip(self.up, self.up_label)):
            h = block(h) + emb(labels)[:, :, None, None]
            if cond is not None:
                h = h + self.up_mask[i](F.adaptive_avg_pool2d(cond, h.shape[-1]))
        if cond is not None:
            return torch.sigmoid(self.head(torch.cat([h, cond], 1))), None
        out = self.head(h)
        c = self.spec.channels
        return torch.sigmoid(out[:, :c]), out[:, c:]

    def forward(self, images, masks, labels, phase: str, step: int, generator: torch.Generator):
        cfg = self.config
        context = None
        if self.inpaints:
            context = Context(images, training_regions(masks, cfg.inpaint_margin, generator))
        mu, logvar = self.encode(images, masks, labels, None if context is None else context.regions)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + eps * torch.exp(0.5 * logvar)
        recon, mask_logits = self.decode(z, labels, masks, context)
        pixels = images.shape[-1] * images.shape[-2]
        # Per-image sums (the ELBO), averaged over the batch, then divided by the pixel count
        # only to keep logged numbers readable; Adam is invariant to that scale. In inpaint mode
        # only the region's pixels count: outside it the real background is kept.
        weight = 1.0 if context is None else context.regions[:, None].to(images.dtype)
        image_nll = (((recon.float() - images) ** 2) * weight).sum(dim=(1, 2, 3)) / (2 * cfg.image_sigma**2)
        if mask_logits is None:  # mask mode: the mask is given, not generated
            mask_nll = torch.zeros_like(image_nll)
        else:
            mask_nll = F.cross_entropy(mask_logits.float(), masks, reduction="none").sum(dim=(1, 2))
        kl = 0.5 * (mu.float() ** 2 + logvar.float().exp() - 1.0 - logvar.float()).sum(dim=1)
        beta = cfg.kl_weight * (min(1.0, step / cfg.kl_warmup_steps) if cfg.kl_warmup_steps else 1.0)
        loss = (image_nll + cfg.mask_weight * mask_nll + beta * kl).mean() / pixels
        logs = {
            "image_mse": float(((recon.detach() - images) ** 2).mean()),
            "mask_ce": float(mask_nll.detach().mean() / pixels),
            "kl": float(kl.detach().mean()),
            "beta": beta,
        }
        return loss, logs

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, generator, masks: torch.Tensor | None = None,
               settings: CVAESampler | None = None, context: Context | None = None) -> Sample:
        """Prior samples: z ~ N(0, temperature^2 I), decoded with the label (and the given mask
        in mask mode, and the background and region in inpaint mode). See
        :mod:`augment.generators.base` for the contract."""
        settings = settings or CVAESampler()
        labels = labels.to(torch.int64)
        if self.mask_conditioned != (masks is not None):
            need = "needs masks (mask_source: real)" if self.mask_conditioned else "makes its own masks (mask_source: generated)"
            raise ValueError(f"this cvae ({self.config.mode} mode) {need}")
        if self.inpaints != (context is not None):
            raise ValueError(f"this cvae ({self.config.mode} mode) " + ("needs backgrounds and regions (a Context)" if self.inpaints
                                                                        else "takes no background context"))
        device = next(self.parameters()).device
        z = randn((len(labels), self.config.latent_dim), generator, device)
        given = None if masks is None else masks.to(device=device, dtype=torch.int64)
        if context is not None:
            context = Context(context.images.to(device), context.regions.to(device))
        images, mask_logits = self.decode(z * settings.temperature, labels.to(device), given, context)
        out_masks = given if mask_logits is None else mask_logits.argmax(1)
        return Sample(images=images.float().clamp(0, 1).cpu(), masks=out_masks.cpu(), labels=labels.cpu())
