"""Latent diffusion (Rombach et al. 2022) over an image and its mask, class- or mask-conditional.

Two phases, trained in turn by the shared loop:

1. ``autoencoder``: MONAI's ``AutoencoderKL`` over the image (mapped to [-1, 1]) and its
   one-hot mask together, with an L1 image term, a cross-entropy mask term and a small KL term,
   without attention. Chosen by bench/ldm_autoencoders.py on BUSI 64 px (budget 64, 300 steps,
   matched widths 16/32/64, 4x16x16 latents): it reconstructs the val split as well as diffusers'
   ``AutoencoderKL`` (PSNR 24.0 vs 24.7 dB, SSIM 0.697 vs 0.702, mask Dice 0.961 vs 0.941) with
   0.4x the parameters, ~0.65x the training step and ~0.55x the decode time; diffusers'
   ``VQModel`` reconstructed worse (20.1 dB) and mid-block attention gained nothing.
2. ``denoiser``: a diffusers ``UNet2DModel`` (no attention) on the frozen autoencoder's
   latents, scaled to unit variance by a factor measured on the training set when the phase
   starts (``latent_scale``, a buffer in the weights). The class label goes in through the
   UNet's class embedding, with one extra index reserved as the null class for
   classifier-free guidance (Ho & Salimans 2022): a share ``label_dropout`` of training labels
   is replaced by it.

``mode: mask`` generates the image *for a given mask*: the one-hot mask, area-downsampled to the
latent side, is concatenated to the denoiser's input (dropped to zeros together with the label
for guidance, with probability ``mask_dropout``) and the given mask is returned unchanged.

``mode: inpaint`` fills a region of a real background for a given mask, as Stable Diffusion's
inpainting UNet does: beside the mask channels, the denoiser's input gets the latent of the
background with the region blanked out (``background * (1 - region)``, encoded by the frozen
autoencoder with an empty mask, posterior mean) and the region's area fraction at the latent
side. The background is never dropped for guidance (only label and mask are). Training regions
come from :func:`~augment.generators.base.training_regions` (each lesion dilated by
``inpaint_margin``, a random ellipse on an image without one), drawn from the step's generator;
the denoising loss is weighted toward the region (see ``OUTSIDE_WEIGHT``). The autoencoder phase
is the same in every mode. ``sample`` returns whole decoded images; the sampler composites the
real background back outside the region (:mod:`augment.placement`).

Sampling runs our own short loop over diffusers' DDIM or DPM-Solver++ (multistep, order 2)
schedulers, both deterministic given the initial noise, which is drawn per item (one
``torch.Generator`` per pair), so one pair can be regenerated alone. Guidance 1 is the plain
conditional path (one network call per step); any other scale costs a second, unconditional
call in the same batch.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from augment.config import Strict
from augment.errors import ConfigError
from augment.generators.base import Context, DataSpec, Sample, one_hot_masks, randn, training_regions

#: inpaint mode: loss weight of latent cells that touch no pixel of the region (those touching it
#: weigh 1). Not 0, unlike the cVAE's pixel loss: the decoder mixes neighbouring latents across the
#: seam, so latents just outside the region shape its border pixels and must stay plausible; small,
#: so most of the gradient goes to the region (outside, the blanked background's latent is given).
OUTSIDE_WEIGHT = 0.1


class LDMConfig(Strict):
    family: Literal["ldm"] = "ldm"
    mode: Literal["joint", "mask", "inpaint"] = Field(
        "joint", description="joint: image and mask from the label; mask: the image for a given mask; inpaint: the lesion "
        "region of a real background for a given mask")
    inpaint_margin: float = Field(0.08, ge=0, le=0.5, description="inpaint mode: training regions are lesions dilated by this fraction of the side")
    # phase 1: autoencoder
    ae_channels: tuple[int, ...] = Field((32, 64, 64), description="encoder widths; each entry after the first halves the side (64 px -> 16)")
    ae_layers: int = Field(1, ge=1, le=16, description="resnet layers per autoencoder block")
    ae_attention: bool = Field(False, description="non-local attention in the autoencoder's encoder and decoder (slow on CPU)")
    latent_channels: int = Field(4, ge=1, le=256)
    kl_weight: float = Field(1e-4, ge=0, le=1000, description="weight of the KL term per latent element (keeps latents near N(0, 1))")
    mask_weight: float = Field(1.0, ge=0, le=1000)
    # phase 2: denoiser
    unet_channels: tuple[int, ...] = Field((64, 128, 128), description="denoiser widths; each entry after the first halves the latent side")
    unet_layers: int = Field(1, ge=1, le=16, description="resnet layers per denoiser block")
    train_timesteps: int = Field(1000, ge=10, le=100_000)
    beta_schedule: Literal["scaled_linear", "linear", "squaredcos_cap_v2"] = "scaled_linear"
    prediction: Literal["epsilon", "v_prediction"] = "epsilon"
    label_dropout: float = Field(0.1, ge=0, lt=1, description="share of training labels replaced by the null class (guidance)")
    mask_dropout: float = Field(0.1, ge=0, lt=1, description="mask and inpaint modes: share of training masks replaced by zeros (guidance)")

    @field_validator("ae_channels", "unet_channels")
    @classmethod
    def _widths(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or len(v) > 8 or any(not 4 <= c <= 2048 for c in v):
            raise ValueError("give 1 to 8 widths, each from 4 to 2048")
        return v


class LDMSampler(Strict):
    """Sampling-time settings (``augment sample --set sampler.steps=10 sampler.guidance=2``)."""

    solver: Literal["dpm++", "ddim"] = Field("dpm++", description="dpm++: DPM-Solver++ multistep (order 2); ddim: DDIM, eta 0")
    steps: int = Field(20, ge=1, le=1000)
    guidance: float = Field(2.0, ge=0, le=20, description="classifier-free guidance scale, 0 to 20; 1 = plain conditional, 0 = unconditional")


def _groups(widths: tuple[int, ...]) -> int:
    """The largest GroupNorm group count (<= 32) that divides every width."""
    return next(g for g in (32, 16, 8, 4, 2, 1) if all(w % g == 0 for w in widths))


class LDM(nn.Module):
    phases = ("autoencoder", "denoiser")
    Sampler = LDMSampler

    def __init__(self, config: LDMConfig, spec: DataSpec) -> None:
        # Imported here, not at module level: `augment --help` and cvae runs need neither library.
        from diffusers import DDPMScheduler, UNet2DModel
        from monai.networks.nets import AutoencoderKL

        super().__init__()
        self.config, self.spec = config, spec
        c, k = spec.channels, spec.mask_classes
        factor = 2 ** (len(config.ae_channels) - 1)
        if spec.image_size % factor:
            raise ConfigError(f"generator.ae_channels has {len(config.ae_channels)} widths, so the autoencoder halves the side "
                              f"{len(config.ae_channels) - 1} times, but the images are {spec.image_size} px; "
                              f"give fewer widths or prepare with a multiple of {factor}")
        self.latent_side = spec.image_size // factor
        if self.latent_side % 2 ** (len(config.unet_channels) - 1):
            raise ConfigError(f"generator.unet_channels has {len(config.unet_channels)} widths, too many halvings for the "
                              f"{self.latent_side} px latent; give fewer widths")
        # GroupNorm over one value per group (a 1x1 map, one channel per group) outputs zeros, and
        # torch refuses it outright for a batch of one: refuse the shape before anything trains.
        for key, widths, side in (("unet_channels", config.unet_channels, self.latent_side // 2 ** (len(config.unet_channels) - 1)),
                                  ("ae_channels", config.ae_channels, self.latent_side)):
            if side == 1 and min(widths) // _groups(widths) == 1:
                raise ConfigError(f"generator.{key} {list(widths)} reaches a 1x1 px map with one channel per GroupNorm group "
                                  f"({_groups(widths)} groups), which normalises single values to zero; give fewer widths or "
                                  "widths with more channels per group")
        n_ae = len(config.ae_channels)
        self.autoencoder = AutoencoderKL(
            spatial_dims=2, in_channels=c + k, out_channels=c + k, latent_channels=config.latent_channels,
            channels=config.ae_channels, num_res_blocks=config.ae_layers, attention_levels=(False,) * n_ae,
            norm_num_groups=_groups(config.ae_channels), with_encoder_nonlocal_attn=config.ae_attention,
            with_decoder_nonlocal_attn=config.ae_attention,
        )
        self.mask_conditioned = config.mode in ("mask", "inpaint")
        self.inpaints = config.mode == "inpaint"
        n_unet = len(config.unet_channels)
        extra = (k if self.mask_conditioned else 0) + (config.latent_channels + 1 if self.inpaints else 0)
        self.unet = UNet2DModel(
            sample_size=self.latent_side,
            in_channels=config.latent_channels + extra,  # noisy latents [, mask] [, blanked background latent, region]
            out_channels=config.latent_channels,
            down_block_types=("DownBlock2D",) * n_unet, up_block_types=("UpBlock2D",) * n_unet,
            block_out_channels=config.unet_channels, layers_per_block=config.unet_layers,
            norm_num_groups=_groups(config.unet_channels), add_attention=False,
            num_class_embeds=spec.num_classes + 1,  # the last index is the null class
        )
        self.null_class = spec.num_classes
        self.train_schedule = DDPMScheduler(**self._noise_schedule())
        # 1 / std of the unscaled latents, measured when the denoiser phase starts.
        self.register_buffer("latent_scale", torch.ones(()))

    def phase_modules(self, phase: str) -> list[nn.Module]:
        if phase == "autoencoder":
            return [self.autoencoder]
        if phase == "denoiser":
            return [self.unet]
        raise ValueError(f"ldm has phases `autoencoder` and `denoiser`, not `{phase}`")

    def _noise_schedule(self) -> dict:
        cfg = self.config
        return {"num_train_timesteps": cfg.train_timesteps, "beta_schedule": cfg.beta_schedule,
                "beta_start": 0.00085, "beta_end": 0.012, "prediction_type": cfg.prediction}

    # ------------------------------------------------------------------ autoencoder
    def _pack(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return torch.cat([images * 2 - 1, one_hot_masks(masks, self.spec.mask_classes).to(images.dtype)], 1)

    @staticmethod
    def _draw(mu: torch.Tensor, sigma: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The posterior mean, or a draw from the diagonal Gaussian posterior with ``generator``
        (MONAI's own ``sampling`` draws from the global RNG)."""
        if generator is None:
            return mu
        return mu + sigma * torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)

    def encode(self, images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """images (B, C, H, W) in [0, 1], masks (B, H, W) -> scaled latents (B, L, h, w): the
        posterior mean, or a draw from it with ``generator``."""
        return self._draw(*self.autoencoder.encode(self._pack(images, masks)), generator) * self.latent_scale

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """scaled latents -> images (B, C, H, W) in [0, 1] and mask logits (B, K, H, W)."""
        out = self.autoencoder.decode(z / self.latent_scale)
        c = self.spec.channels
        return ((out[:, :c] + 1) / 2).clamp(0, 1), out[:, c:]

    def _autoencoder_loss(self, images, masks, generator):
        mu, sigma = self.autoencoder.encode(self._pack(images, masks))
        out = self.autoencoder.decode(self._draw(mu, sigma, generator)).float()
        c = self.spec.channels
        recon, logits = out[:, :c], out[:, c:]
        target = images * 2 - 1
        l1 = (recon - target).abs().mean()
        mask_ce = F.cross_entropy(logits, masks)
        var = sigma.float() ** 2
        kl = 0.5 * (mu.float() ** 2 + var - 1.0 - var.clamp_min(1e-12).log()).mean()
        loss = l1 + self.config.mask_weight * mask_ce + self.config.kl_weight * kl
        mse = float((((recon.detach() + 1) / 2).clamp(0, 1) - images).pow(2).mean())
        return loss, {"image_l1": float(l1.detach()), "psnr": 10 * math.log10(1 / max(mse, 1e-10)),
                      "mask_ce": float(mask_ce.detach()), "kl": float(kl.detach())}

    # ------------------------------------------------------------------ denoiser
    def _mask_input(self, masks: torch.Tensor) -> torch.Tensor:
        """(B, H, W) -> (B, K, h, w): per-class area fractions at the latent side."""
        return F.adaptive_avg_pool2d(one_hot_masks(masks, self.spec.mask_classes), self.latent_side)

    def _context_input(self, context: Context) -> torch.Tensor:
        """Inpaint mode: backgrounds (B, C, H, W) and regions (B, H, W) -> (B, L + 1, h, w): the
        scaled posterior mean of the background with the region blanked (encoded with an empty
        mask: the lesion is what is generated) and the region's area fraction at the latent side."""
        region = context.regions[:, None].to(context.images.dtype)
        blank = torch.zeros(context.regions.shape, dtype=torch.int64, device=context.regions.device)
        z = self.encode(context.images * (1.0 - region), blank)
        return torch.cat([z, F.adaptive_avg_pool2d(region, self.latent_side).to(z.dtype)], 1)

    def on_phase_start(self, phase: str, data) -> None:
        """Before the denoiser: measure the latent scale on the training set (posterior means)."""
        if phase != "denoiser":
            return
        images, masks, _ = data
        device = self.latent_scale.device
        self.latent_scale.fill_(1.0)
        z = torch.cat([self.encode(images[i:i + 64].to(device), masks[i:i + 64].to(device)) for i in range(0, len(images), 64)])
        self.latent_scale.fill_(1.0 / float(z.float().std().clamp_min(1e-6)))

    def _denoiser_loss(self, images, masks, labels, generator):
        cfg, b = self.config, len(labels)
        with torch.no_grad():
            z = self.encode(images, masks, generator)
        noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        t = torch.randint(0, cfg.train_timesteps, (b,), generator=generator, device=z.device)
        u = torch.rand((b,), generator=generator, device=z.device)
        schedule = self.train_schedule
        noisy = schedule.add_noise(z, noise, t)
        # One uniform draw drops label and mask together when both fall below their rate, so the
        # fully unconditional case (what guidance needs) is seen min(rates) of the time.
        cond_labels = torch.where(u < cfg.label_dropout, torch.full_like(labels, self.null_class), labels)
        x = noisy
        if self.mask_conditioned:
            keep = (u >= cfg.mask_dropout).to(z.dtype)[:, None, None, None]
            x = torch.cat([noisy, self._mask_input(masks).to(z.dtype) * keep], 1)
        weight = None
        if self.inpaints:  # the background context is never dropped
            regions = training_regions(masks, cfg.inpaint_margin, generator)
            with torch.no_grad():
                x = torch.cat([x, self._context_input(Context(images, regions)).to(z.dtype)], 1)
            touched = F.adaptive_max_pool2d(regions[:, None].float(), self.latent_side)
            weight = OUTSIDE_WEIGHT + (1.0 - OUTSIDE_WEIGHT) * touched  # (B, 1, h, w)
        pred = self.unet(x, t, class_labels=cond_labels).sample.float()
        target = noise if cfg.prediction == "epsilon" else schedule.get_velocity(z, noise, t)
        if weight is None:
            loss = F.mse_loss(pred, target.float())
            return loss, {"denoise_mse": float(loss.detach())}
        err = (pred - target.float()) ** 2
        loss = (err * weight).sum() / (weight.expand_as(err).sum())  # a weighted mean: same scale as the plain MSE
        inside = touched.expand_as(err)
        return loss, {"denoise_mse": float(loss.detach()),
                      "region_mse": float((err.detach() * inside).sum() / inside.sum().clamp_min(1.0))}

    def forward(self, images, masks, labels, phase: str, step: int, generator: torch.Generator):
        if phase == "autoencoder":
            return self._autoencoder_loss(images, masks, generator)
        if phase == "denoiser":
            return self._denoiser_loss(images, masks, labels, generator)
        raise ValueError(f"ldm has phases `autoencoder` and `denoiser`, not `{phase}`")

    # ------------------------------------------------------------------ sampling
    def scheduler(self, settings: LDMSampler):
        """A fresh sampling scheduler (they keep per-run state) with the training noise schedule."""
        from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

        common = {**self._noise_schedule(), "timestep_spacing": "trailing"}
        if settings.solver == "ddim":
            s = DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=False)
        else:
            s = DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2)
        s.set_timesteps(settings.steps)
        return s

    def guided_noise(self, z: torch.Tensor, t, labels: torch.Tensor, mask_input: torch.Tensor | None, scale: float,
                     context_input: torch.Tensor | None = None) -> torch.Tensor:
        """The denoiser's output for latents ``z`` at timestep ``t``: conditional when ``scale``
        is 1, else ``uncond + scale * (cond - uncond)`` with both halves in one batch (the
        unconditional half has the null class and a zero mask, but the same ``context_input``)."""
        def inputs(x, m, c):
            return torch.cat([x] + [e for e in (m, c) if e is not None], 1)

        if scale == 1.0:
            return self.unet(inputs(z, mask_input, context_input), t, class_labels=labels).sample
        null = torch.full_like(labels, self.null_class)
        both_masks = None if mask_input is None else torch.cat([mask_input, torch.zeros_like(mask_input)])
        both_context = None if context_input is None else torch.cat([context_input, context_input])
        out = self.unet(inputs(torch.cat([z, z]), both_masks, both_context), t, class_labels=torch.cat([labels, null])).sample
        cond, uncond = out.chunk(2)
        return uncond + scale * (cond - uncond)

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, generator, masks: torch.Tensor | None = None,
               settings: LDMSampler | None = None, context: Context | None = None) -> Sample:
        """New pairs for ``labels`` (and the given masks in mask and inpaint modes, and the
        backgrounds and regions in inpaint mode: whole decoded images come back, the sampler puts
        the background back outside the region); see :mod:`augment.generators.base` for the contract."""
        settings = settings or LDMSampler()
        if self.mask_conditioned != (masks is not None):
            need = "needs masks (mask_source: real)" if self.mask_conditioned else "makes its own masks (mask_source: generated)"
            raise ValueError(f"this ldm ({self.config.mode} mode) {need}")
        if self.inpaints != (context is not None):
            raise ValueError(f"this ldm ({self.config.mode} mode) " + ("needs backgrounds and regions (a Context)" if self.inpaints
                                                                       else "takes no background context"))
        device = self.latent_scale.device
        labels = labels.to(device=device, dtype=torch.int64)
        given = None if masks is None else masks.to(device=device, dtype=torch.int64)
        mask_input = None if given is None else self._mask_input(given)
        context_input = None
        if context is not None:
            context_input = self._context_input(Context(context.images.to(device=device, dtype=torch.float32),
                                                        context.regions.to(device=device, dtype=torch.bool)))
        side = self.latent_side
        z = randn((len(labels), self.config.latent_channels, side, side), generator, device)
        sched = self.scheduler(settings)
        z = z * sched.init_noise_sigma
        for t in sched.timesteps:
            eps = self.guided_noise(sched.scale_model_input(z, t), t, labels, mask_input, settings.guidance, context_input)
            z = sched.step(eps, t, z).prev_sample
        images, logits = self.decode(z)
        out_masks = given if given is not None else logits.argmax(1)
        return Sample(images=images.float().cpu(), masks=out_masks.cpu(), labels=labels.cpu())

    # ------------------------------------------------------------------ held-out round trip
    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The autoencoder round trip through the posterior mean, measured by
        :func:`augment.metrics.generator_heldout`.

        images (B, C, H, W) float32 in [0, 1] and masks (B, H, W) int64 class indices, on any
        device -> reconstructed images (B, C, H, W) float32 in [0, 1] and decoded masks (B, H, W)
        int64 (argmax of the mask logits), on the CPU. The autoencoder encodes and decodes the
        mask in both modes, so both return one.
        """
        device = self.latent_scale.device
        rec, logits = self.decode(self.encode(images.to(device), masks.to(device)))
        return rec.float().cpu(), logits.argmax(1).cpu()
