"""Mask-to-image conditional GAN for 16-64 training images (``mode: mask`` or ``mode: inpaint``).

There is no joint mode: a GAN this small learns the image for a real mask, never the mask
itself, so ``sample`` always needs masks (``mask_source: real``).

Generator: a SPADE decoder (Park et al. 2019). z (``noise_dim``) and the one-hot class go through
a linear layer to a 4-8 px map; every level is a residual block whose parameter-free GroupNorms
are modulated by a per-pixel scale and shift computed from the one-hot mask (area-downsampled to
the level, so a small lesion is not lost at low resolution); the class embedding is added to each
block's output, and per-pixel noise with a learned per-channel strength (StyleGAN) is injected in
each block. Chosen over a pix2pix U-Net because the mask conditions every level instead of
passing through an encoder, and because a U-Net with skip connections is known to ignore its noise
(pix2pix needed dropout), while diversity is the point here. GroupNorm, not BatchNorm: a pair
depends on its own noise only, in training and sampling alike.

Discriminator: a patch discriminator (stride-2 4x4 convs, ``d_layers`` of them, fewer on small
images) on the image in [-1, 1] concatenated with the one-hot mask, so an image and its mask must
agree, with a class projection (Miyato & Koyama 2018) on every patch logit. No normalisation;
regularised by R1 (Mescheder et al. 2018) on the real images' pixels, ``r1_weight / 2 * E|grad
D|^2`` of the mean patch logit, rather than spectral norm: R1 holds the discriminator flat only on
the data (spectral norm caps its capacity everywhere), it is the regulariser of the data-efficient
GAN recipes (StyleGAN2-ADA, DiffAugment), it keeps no state (spectral norm's power-iteration
vectors change on every discriminator call, the generator step's included) and 0 turns it off to
measure it.

DiffAugment (Zhao et al. 2020; ``diffaugment``, ``diffaugment_policy``): before every
discriminator call, in the discriminator step and the generator step, real and fake go through the
same differentiable transforms, drawn per pair from the step's ``torch.Generator`` (so training
stays deterministic and resumes exactly): colour (brightness +-0.5 and contrast x0.5-1.5, image
channels only), translation (up to 1/8 of the side; the image is padded with 0 = mid-grey, the
mask with background) and cutout (a square of half the side zeroed in every channel). Geometric
transforms move the image and its mask (and region) together; pair ``i``'s real and fake get the
same draw, so the discriminator compares them under the same view.

Training (one phase ``main``, two parts stepped in turn): ``d`` (the discriminator, ``d_lr``) then
``g`` (the generator, ``g_lr``), both AdamW with ``betas``; ``train.lr`` is not used, its warm-up
and schedule are. Losses: ``hinge`` or ``nonsaturating``, plus an optional feature-matching term
(L1 between the discriminator's features of the fake and of its real pair, pix2pixHD) and an L1
term to the real image (``l1_weight``; None: 1 in inpaint mode, 0 in mask mode, where pinning the
image to its training pair would make the generator ignore its noise). Logged: ``d_loss``,
``d_r1``, ``d_acc_real`` and ``d_acc_fake`` (the share of patch logits > 0 on real and < 0 on
fake), ``g_adv``, ``g_fm``, ``g_l1``.

EMA: the model keeps its own copy of the generator, ``gen_ema`` (``ema_decay``; 0: none), updated
at the start of every discriminator step from the generator's weights after the previous step
(decay warmed up as ``min(ema_decay, (1 + step) / (10 + step))``), and sampling uses it; it is
part of the weights and checkpoints, so no ``train.ema`` is needed (that would average only the
live networks, which sampling does not read).

``mode: inpaint``: the generator also gets the background with the region blanked out and the
region (in every SPADE block and at its head). The fake is ``real * (1 - region) + gen *
region``, so the discriminator, which also sees the region as a channel, judges the seam; its
losses count only the patches whose cells touch the region, and the L1 term counts only inside
it. Training regions: :func:`~augment.generators.base.training_regions`. ``sample`` returns whole
images; the sampler composites the real background back around the region.

Defaults follow the cited papers and are not yet benchmarked on BUSI: at 64 px, a 3.4 M
parameter generator and a 1.2 M parameter discriminator, ~3 s per step on one CPU thread at batch 16.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn

from augment.config import Strict
from augment.generators.base import Context, DataSpec, Part, Sample, one_hot_masks, randn, training_regions, uniform
from augment.generators.cvae import levels_for

#: DiffAugment's strengths (Zhao et al. 2020): largest shift and cutout side as fractions of the side
TRANSLATION, CUTOUT = 0.125, 0.5
POLICY = ("colour", "translation", "cutout")


class GANConfig(Strict):
    family: Literal["gan"] = "gan"
    mode: Literal["mask", "inpaint"] = Field(
        "mask", description="mask: the image for a given mask; inpaint: the lesion region of a real background for a given "
        "mask (no joint mode: the GAN never makes masks)")
    inpaint_margin: float = Field(0.08, ge=0, le=0.5, description="inpaint mode: training regions are lesions dilated by this fraction of the side")
    base_channels: int = Field(32, ge=4, le=2048, description="generator width at full resolution, doubled per halving")
    max_channels: int = Field(128, ge=4, le=2048)
    noise_dim: int = Field(64, ge=1, le=4096)
    d_channels: int = Field(64, ge=4, le=2048, description="discriminator width after its first conv, doubled per halving")
    d_max_channels: int = Field(256, ge=4, le=2048)
    d_layers: int = Field(3, ge=1, le=8, description="stride-2 convs of the patch discriminator (fewer when the side is too small)")
    loss: Literal["hinge", "nonsaturating"] = "hinge"
    diffaugment: bool = Field(True, description="differentiable augmentation of real and fake before every discriminator call")
    diffaugment_policy: tuple[Literal["colour", "translation", "cutout"], ...] = POLICY
    r1_weight: float = Field(1.0, ge=0, le=1e4, description="R1 penalty on real images (0: off)")
    feature_matching: float = Field(1.0, ge=0, le=1e4, description="weight of the discriminator feature-matching L1 (0: off)")
    l1_weight: float | None = Field(None, ge=0, le=1e4, description="weight of the L1 to the real image (inside the region in "
                                    "inpaint mode); None: 1 in inpaint mode, 0 in mask mode")
    d_lr: float = Field(2e-4, gt=0, le=1)
    g_lr: float = Field(2e-4, gt=0, le=1)
    betas: tuple[float, float] = (0.0, 0.99)
    ema_decay: float = Field(0.999, ge=0, lt=1, description="decay of the generator EMA that samples (0: sample with the generator)")

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError("betas must be two numbers in [0, 1)")
        return v

    @field_validator("diffaugment_policy")
    @classmethod
    def _policy(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v or len(set(v)) != len(v):
            raise ValueError(f"give one or more of {', '.join(POLICY)}, each once (diffaugment: false turns it off)")
        return v

    @model_validator(mode="after")
    def _widths(self) -> GANConfig:
        if self.max_channels < self.base_channels or self.d_max_channels < self.d_channels:
            raise ValueError("max_channels must be >= base_channels and d_max_channels >= d_channels")
        return self


class GANSampler(Strict):
    """Sampling-time settings (``augment sample --set sampler.truncation=0.7``)."""

    truncation: float = Field(1.0, ge=0, le=10, description="z is scaled by this (1: as trained; < 1 trades diversity for fidelity)")
    noise_scale: float = Field(1.0, ge=0, le=10, description="scale of the per-pixel noise injections (0: none)")


def augment_params(batch: int, size: int, policy, generator: torch.Generator, device) -> dict[str, torch.Tensor]:
    """One DiffAugment draw per pair, from ``generator`` in a fixed order (colour, translation,
    cutout): brightness (B,), contrast (B,), shift (B, 2) int64 in [-r, r], cut (B, 2) int64 centres."""
    p: dict[str, torch.Tensor] = {}
    if "colour" in policy:
        u = uniform((batch, 2), generator, device)
        p["brightness"], p["contrast"] = u[:, 0] - 0.5, u[:, 1] + 0.5
    if "translation" in policy:
        r = max(1, round(TRANSLATION * size))
        p["shift"] = (uniform((batch, 2), generator, device) * (2 * r + 1)).long().clamp(max=2 * r) - r
    if "cutout" in policy:
        p["cut"] = (uniform((batch, 2), generator, device) * size).long().clamp(max=size - 1)
    return p


def diff_augment(x: torch.Tensor, params: dict[str, torch.Tensor], image_channels: int, fill: torch.Tensor) -> torch.Tensor:
    """``x`` (B, Ch, H, W), image channels first (in [-1, 1]) then conditioning channels ->
    the same shape, differentiable in ``x``: colour on the image channels, translation of every
    channel (pixels shifted in take ``fill`` (Ch,)), cutout zeroing every channel."""
    b, _, h, w = x.shape
    if "brightness" in params:
        img = x[:, :image_channels] + params["brightness"].to(x.dtype)[:, None, None, None]
        mean = img.mean(dim=(1, 2, 3), keepdim=True)
        img = (img - mean) * params["contrast"].to(x.dtype)[:, None, None, None] + mean
        x = torch.cat([img, x[:, image_channels:]], 1)
    if "shift" in params:
        ys = torch.arange(h, device=x.device)[None] - params["shift"][:, :1]  # (B, H): source row of each row
        xs = torch.arange(w, device=x.device)[None] - params["shift"][:, 1:]
        inside = ((ys >= 0) & (ys < h))[:, :, None] & ((xs >= 0) & (xs < w))[:, None, :]
        rows = torch.arange(b, device=x.device)[:, None, None]
        moved = x[rows, :, ys.clamp(0, h - 1)[:, :, None], xs.clamp(0, w - 1)[:, None, :]].permute(0, 3, 1, 2)
        x = torch.where(inside[:, None], moved, fill.to(x)[None, :, None, None])
    if "cut" in params:
        side = max(1, round(CUTOUT * h))
        lo = params["cut"] - side // 2  # (B, 2): first cut row and column
        ry = torch.arange(h, device=x.device)[None] - lo[:, :1]
        rx = torch.arange(w, device=x.device)[None] - lo[:, 1:]
        cut = ((ry >= 0) & (ry < side))[:, :, None] & ((rx >= 0) & (rx < side))[:, None, :]
        x = x * (~cut)[:, None].to(x.dtype)
    return x


def _groups(ch: int) -> int:
    return 8 if ch % 8 == 0 else 1


class _SPADE(nn.Module):
    """Parameter-free GroupNorm, then a per-pixel scale and shift from the conditioning map."""

    def __init__(self, ch: int, cond: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(_groups(ch), ch, affine=False)
        self.shared = nn.Sequential(nn.Conv2d(cond, ch, 3, 1, 1), nn.ReLU())
        self.scale, self.shift = nn.Conv2d(ch, ch, 3, 1, 1), nn.Conv2d(ch, ch, 3, 1, 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        a = self.shared(cond)
        return self.norm(x) * (1 + self.scale(a)) + self.shift(a)


class _Block(nn.Module):
    """SPADE residual block with noise injection and the class embedding added to its output."""

    def __init__(self, cin: int, cout: int, cond: int, classes: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = _SPADE(cin, cond), nn.Conv2d(cin, cout, 3, 1, 1)
        self.norm2, self.conv2 = _SPADE(cout, cond), nn.Conv2d(cout, cout, 3, 1, 1)
        self.skip = nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else nn.Identity()
        self.noise_strength = nn.Parameter(torch.zeros(cout))  # StyleGAN: learned, from 0
        self.label = nn.Embedding(classes, cout)

    def forward(self, x, cond, labels, noise):
        h = self.conv1(F.leaky_relu(self.norm1(x, cond), 0.2)) + self.noise_strength[None, :, None, None] * noise
        h = self.conv2(F.leaky_relu(self.norm2(h, cond), 0.2))
        return h + self.skip(x) + self.label(labels)[:, :, None, None]


class _Generator(nn.Module):
    """z (B, noise_dim), labels (B,), cond (B, K[+C+1], H, W), noises [(B, 1, s, s) per block] -> (B, C, H, W) in [0, 1]."""

    def __init__(self, c: int, cond: int, classes: int, noise_dim: int, widths: list[int], side: int) -> None:
        super().__init__()
        self.classes, self.side, self.widths = classes, side, widths
        self.start = nn.Linear(noise_dim + classes, widths[0] * side * side)
        self.blocks = nn.ModuleList(_Block(widths[max(i - 1, 0)], widths[i], cond, classes) for i in range(len(widths)))
        self.head = nn.Conv2d(widths[-1] + cond, c, 3, 1, 1)

    def forward(self, z, labels, cond, noises):
        onehot = F.one_hot(labels, self.classes).to(z.dtype)
        h = self.start(torch.cat([z, onehot], 1)).view(-1, self.widths[0], self.side, self.side)
        for i, block in enumerate(self.blocks):
            if i:
                h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)  # nearest left 8 px blocks on BUSI
            h = block(h, F.adaptive_avg_pool2d(cond, h.shape[-1]), labels, noises[i])
        return torch.sigmoid(self.head(torch.cat([F.leaky_relu(h, 0.2), cond], 1)))


class _Discriminator(nn.Module):
    """x (B, C+K[+1], H, W), labels (B,) -> patch logits (B, 1, h, w) and the features of every layer."""

    def __init__(self, cin: int, widths: list[int], classes: int) -> None:
        super().__init__()
        ins = [cin] + widths[:-1]
        self.down = nn.ModuleList(nn.Conv2d(a, b, 4, 2, 1) for a, b in zip(ins, widths))
        self.mid = nn.Conv2d(widths[-1], widths[-1], 3, 1, 1)
        self.logit = nn.Conv2d(widths[-1], 1, 1)
        self.embed = nn.Embedding(classes, widths[-1])  # the class projection
        nn.init.xavier_uniform_(self.embed.weight)

    def forward(self, x, labels):
        feats = []
        for conv in self.down:
            x = F.leaky_relu(conv(x), 0.2)
            feats.append(x)
        h = F.leaky_relu(self.mid(x), 0.2)
        feats.append(h)
        return self.logit(h) + (self.embed(labels)[:, :, None, None] * h).sum(1, keepdim=True), feats


def _wmean(v: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    return v.mean() if w is None else (v * w).sum() / w.sum().clamp_min(1.0)


class GAN(nn.Module):
    phases = ("main",)
    Sampler = GANSampler
    mask_conditioned = True

    def __init__(self, config: GANConfig, spec: DataSpec) -> None:
        super().__init__()
        self.config, self.spec = config, spec
        c, k, n, size = spec.channels, spec.mask_classes, spec.num_classes, spec.image_size
        self.inpaints = config.mode == "inpaint"
        levels = levels_for(size)
        widths = [min(config.base_channels * 2 ** (levels - i), config.max_channels) for i in range(levels + 1)]
        cond = k + (c + 1 if self.inpaints else 0)  # the mask [, the blanked background and the region]
        self.gen = _Generator(c, cond, n, config.noise_dim, widths, size // 2**levels)
        self.noise_sides = [size // 2 ** (levels - i) for i in range(levels + 1)]
        d_depth = max(1, min(config.d_layers, levels))
        d_widths = [min(config.d_channels * 2**i, config.d_max_channels) for i in range(d_depth)]
        self.disc = _Discriminator(c + k + (1 if self.inpaints else 0), d_widths, n)
        self.gen_ema = copy.deepcopy(self.gen).requires_grad_(False) if config.ema_decay > 0 else None
        self.register_buffer("ema_step", torch.zeros((), dtype=torch.int64))  # the last step absorbed into gen_ema
        self.l1_weight = config.l1_weight if config.l1_weight is not None else (1.0 if self.inpaints else 0.0)

    def phase_modules(self, phase: str) -> list[nn.Module]:
        if phase != "main":
            raise ValueError(f"gan has one phase, `main`, not `{phase}`")
        return [self.disc, self.gen]

    def phase_parts(self, phase: str) -> dict[str, Part]:
        self.phase_modules(phase)
        cfg = self.config
        return {"d": Part([self.disc], lr=cfg.d_lr, betas=cfg.betas), "g": Part([self.gen], lr=cfg.g_lr, betas=cfg.betas)}

    def _noise(self, batch: int, generator, device) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """z (B, noise_dim), then one noise map (B, 1, s, s) per block, drawn in that order."""
        z = randn((batch, self.config.noise_dim), generator, device)
        return z, [randn((batch, 1, s, s), generator, device) for s in self.noise_sides]

    def _condition(self, masks: torch.Tensor, images: torch.Tensor | None, regions: torch.Tensor | None) -> torch.Tensor:
        """The generator's conditioning map (B, K[+C+1], H, W): the one-hot mask [, background * (1 - region), region]."""
        cond = one_hot_masks(masks, self.spec.mask_classes)
        if regions is None:
            return cond
        region = regions[:, None].to(images.dtype)
        return torch.cat([cond.to(images.dtype), images * (1.0 - region), region], 1)

    def disc_inputs(self, real: torch.Tensor, fake: torch.Tensor, masks: torch.Tensor, regions: torch.Tensor | None,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """What the discriminator sees of real and fake (B, C, H, W) in [0, 1] for ``masks``
        [and ``regions``]: (B, C+K[+1], H, W) each, the image in [-1, 1] then the one-hot mask
        [then the region], both through the same DiffAugment draw from ``generator`` when on."""
        c = self.spec.channels
        parts = [one_hot_masks(masks, self.spec.mask_classes).to(real.dtype)]
        if regions is not None:
            parts.append(regions[:, None].to(real.dtype))
        cond = torch.cat(parts, 1)
        r, f = torch.cat([real * 2 - 1, cond], 1), torch.cat([fake * 2 - 1, cond], 1)
        if not self.config.diffaugment:
            return r, f
        fill = torch.zeros(r.shape[1], dtype=r.dtype, device=r.device)
        fill[c] = 1.0  # shifted-in pixels: mid-grey image, background mask, outside the region
        p = augment_params(len(real), self.spec.image_size, self.config.diffaugment_policy, generator, real.device)
        return diff_augment(r, p, c, fill), diff_augment(f, p, c, fill)

    @torch.no_grad()
    def _update_ema(self, step: int) -> None:
        if self.gen_ema is None or step <= int(self.ema_step):
            return
        decay = min(self.config.ema_decay, (1 + step) / (10 + step))
        for ours, live in zip(self.gen_ema.parameters(), self.gen.parameters()):
            ours.lerp_(live.detach(), 1.0 - decay)
        self.ema_step.fill_(step)

    def forward(self, images, masks, labels, phase: str, step: int, generator: torch.Generator, part: str):
        """One batch of part ``d`` (discriminator loss) or ``g`` (generator loss) -> (loss, logs)."""
        if phase != "main" or part not in ("d", "g"):
            raise ValueError(f"gan trains phase `main` with parts `d` and `g`, not `{phase}`/`{part}`")
        cfg, c = self.config, self.spec.channels
        regions = training_regions(masks, cfg.inpaint_margin, generator) if self.inpaints else None
        if part == "d":
            self._update_ema(step)  # the generator as the previous step left it
        z, noises = self._noise(len(labels), generator, images.device)
        with torch.set_grad_enabled(part == "g" and torch.is_grad_enabled()):
            out = self.gen(z, labels, self._condition(masks, images, regions), noises)
        region = None if regions is None else regions[:, None].to(images.dtype)
        fake = out if region is None else images * (1.0 - region) + out * region
        real_in, fake_in = self.disc_inputs(images, fake, masks, regions, generator)
        if part == "d":
            return self._d_loss(real_in, fake_in.detach(), labels, c, region is not None)
        return self._g_loss(real_in, fake_in, labels, out, images, region)

    def _patch_weight(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Inpaint mode: (B, 1, h, w) 1 where a patch cell's pixels touch the (augmented) region channel of ``x``."""
        k = self.spec.channels + self.spec.mask_classes
        return F.adaptive_max_pool2d(x[:, k:k + 1].detach(), logits.shape[-2:])

    def _d_loss(self, real_in, fake_in, labels, c: int, regional: bool):
        cfg = self.config
        r1_on = cfg.r1_weight > 0 and torch.is_grad_enabled()
        real_img = real_in[:, :c].detach().requires_grad_(r1_on)
        real_in = torch.cat([real_img, real_in[:, c:]], 1)
        lr, _ = self.disc(real_in, labels)
        lf, _ = self.disc(fake_in, labels)
        w = self._patch_weight(real_in, lr) if regional else None
        if cfg.loss == "hinge":
            adv = _wmean(F.relu(1 - lr), w) + _wmean(F.relu(1 + lf), w)
        else:
            adv = _wmean(F.softplus(-lr), w) + _wmean(F.softplus(lf), w)
        logs = {"d_loss": float(adv.detach()), "d_acc_real": float(_wmean((lr > 0).float(), w)),
                "d_acc_fake": float(_wmean((lf < 0).float(), w))}
        loss = adv
        if r1_on:
            (grad,) = torch.autograd.grad(lr.mean(dim=(1, 2, 3)).sum(), real_img, create_graph=True)
            r1 = grad.float().pow(2).sum(dim=(1, 2, 3)).mean()
            loss = loss + 0.5 * cfg.r1_weight * r1
            logs["d_r1"] = float(r1.detach())
        return loss, logs

    def _g_loss(self, real_in, fake_in, labels, out, images, region):
        cfg = self.config
        lf, fake_feats = self.disc(fake_in, labels)
        w = self._patch_weight(fake_in, lf) if region is not None else None
        adv = _wmean(-lf, w) if cfg.loss == "hinge" else _wmean(F.softplus(-lf), w)
        loss, logs = adv, {"g_adv": float(adv.detach())}
        if cfg.feature_matching > 0:
            with torch.no_grad():
                _, real_feats = self.disc(real_in, labels)
            fm = sum(F.l1_loss(a, b) for a, b in zip(fake_feats, real_feats)) / len(fake_feats)
            loss = loss + cfg.feature_matching * fm
            logs["g_fm"] = float(fm.detach())
        if self.l1_weight > 0:
            diff = (out - images).abs()
            l1 = diff.mean() if region is None else (diff * region).sum() / (region.sum() * diff.shape[1]).clamp_min(1.0)
            loss = loss + self.l1_weight * l1
            logs["g_l1"] = float(l1.detach())
        return loss, logs

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, generator, masks: torch.Tensor | None = None,
               settings: GANSampler | None = None, context: Context | None = None) -> Sample:
        """Images for the given masks (B, H, W) int64 [and backgrounds and regions, inpaint
        mode], from the EMA generator: z ~ N(0, truncation^2 I) and noise maps scaled by
        ``noise_scale``, drawn per item when ``generator`` is a list. See
        :mod:`augment.generators.base` for the contract."""
        settings = settings or GANSampler()
        labels = labels.to(torch.int64)
        mode = self.config.mode
        if masks is None:
            raise ValueError(f"this gan ({mode} mode) needs masks (mask_source: real): it makes the image for a given mask")
        if self.inpaints != (context is not None):
            raise ValueError(f"this gan ({mode} mode) " + ("needs backgrounds and regions (a Context)" if self.inpaints
                                                            else "takes no background context (Context)"))
        device = next(self.parameters()).device
        masks = masks.to(device=device, dtype=torch.int64)
        z, noises = self._noise(len(labels), generator, device)
        images = regions = None
        if context is not None:
            images, regions = context.images.to(device=device, dtype=torch.float32), context.regions.to(device)
        net = self.gen_ema if self.gen_ema is not None else self.gen
        cond = self._condition(masks, images, regions)
        out = net(z * settings.truncation, labels.to(device), cond, [n * settings.noise_scale for n in noises])
        return Sample(images=out.float().clamp(0, 1).cpu(), masks=masks.cpu(), labels=labels.cpu())
