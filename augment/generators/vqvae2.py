"""Hierarchical VQ-VAE-2 (Razavi et al. 2019) over an image and its mask, with a conditional
prior over its codes.

Two phases, trained in turn by the shared loop:

1. ``vqvae``: a two-level autoencoder over the image (mapped to [-1, 1]) and its one-hot mask.
   The bottom encoder halves the side ``bottom_halvings`` times (64 px -> 16x16 codes), the top
   encoder ``top_halvings`` more (-> 8x8 codes); the top code map is decoded and joined to the
   bottom features before the bottom codes are chosen, so the bottom level only has to hold what
   the top one lacks. Each level has its own codebook, updated by exponential moving averages of
   the assigned encoder outputs (van den Oord et al. 2017, appendix; decay ``codebook_decay``)
   rather than by gradients; a code whose moving assignment count falls below
   ``dead_code_threshold`` is restarted on an encoder output of the current batch (drawn with the
   step's generator, so resumed runs restart the same codes). The encoder is pulled to its codes
   by the commitment loss. The loss is an L1 image term, a cross-entropy mask term (joint mode)
   and the commitment terms; codebook usage and perplexity per level are logged every step.
2. ``prior``: two small transformers over the code maps, the top one given the class label (and,
   in mask mode, the mask's per-class area fractions at each top position), the bottom one given
   the top codes (their codebook vectors, upsampled to the bottom grid), the label and the mask.

``prior: maskgit`` (the default) trains the priors as masked-token models (Chang et al. 2022:
a cosine-scheduled share of tokens is replaced by a mask token and predicted) and samples in
``iterations`` parallel steps, keeping the most confident tokens each step.
``prior: autoregressive`` trains the same transformers causally (next token in raster order)
and samples one token per network call (no key/value cache), so sampling costs one call per
code. Measured on BUSI 64 px, mask mode, budget 16, both priors trained for 1000 steps on the
same frozen codes (bench/sample_vqvae2.py; `augment audit` on 64 pairs each for jittered real
masks): maskgit (8 steps) 30 ms per sample, KID 0.158 +- 0.068, Fréchet 10.5; autoregressive
314 ms per sample, KID 0.141 +- 0.079, Fréchet 11.1 (real-vs-real baseline KID 0.053, Fréchet
2.9); no copies from either. Equal quality within the KID noise at a tenth of the sampling cost:
maskgit is the default. The autoregressive prior memorised its training codes harder (next-token
accuracy 0.98 on the 16 training images vs 0.05 on val).

Small data: priors over tens of images overfit quickly. ``prior_dropout`` (dropout on the
attention outputs and MLPs) and ``token_dropout`` (that share of the visible input tokens replaced by random codes
during training) regularise them; ``augment.metrics.generator_heldout`` measures prior token
accuracy and NLL on the training set and on val the same way (through ``prior_logits``), so the
gap is visible; the sampling
``temperature`` and ``top_k`` trade fidelity for diversity and the audit's memorisation check
is the judge.

``mode: mask`` makes the image *for a given mask*: the decoder also gets the one-hot mask, area
downsampled, at every level and at its head (as in the cVAE's mask mode) and outputs the image
only; the priors see the mask as above, and the given mask is returned unchanged.

``mode: inpaint`` fills the region of a real background (the sampler gives a ``Context``): the
autoencoder is the mask mode's, trained alike. The masked-token prior inpaints natively: in
training each image gets a region (:func:`~augment.generators.base.training_regions`: its lesion
dilated by ``inpaint_margin``, a random ellipse on an image without one), a token is in it if any
of its pixels is, and only a cosine-scheduled share of the region's tokens is masked and scored,
the rest of the map being given as it is. At sampling the background (with the given mask) is
encoded, the region's tokens at both levels are marked unknown and re-predicted with the maskgit
schedule over that region alone, and the whole image is decoded with the given mask (the sampler
puts the real background back outside the region). ``prior: autoregressive`` cannot inpaint (a
raster-order prior never sees the tokens after the region) and is refused with this mode.

Keep the loop's own weight EMA off for the ``vqvae`` phase (the default): it averages buffers
too, and the codebooks are moving averages already.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from augment.config import Strict
from augment.errors import ConfigError
from augment.generators.base import Context, DataSpec, Sample, categorical, one_hot_masks, training_regions, uniform


class VQVAE2Config(Strict):
    family: Literal["vqvae2"] = "vqvae2"
    mode: Literal["joint", "mask", "inpaint"] = Field(
        "joint", description="joint: image and mask from the label; mask: the image for a given mask; inpaint: the lesion "
        "region of a real background for a given mask (maskgit prior only)")
    inpaint_margin: float = Field(0.08, ge=0, le=0.5, description="inpaint mode: training regions are lesions dilated by this fraction of the side")
    # phase 1: the two-level autoencoder
    channels: int = Field(64, ge=8, le=2048, description="autoencoder width at the code maps (the layers above them are narrower)")
    res_blocks: int = Field(2, ge=0, le=32, description="residual blocks after each encoder and before each decoder")
    bottom_halvings: int = Field(2, ge=1, le=10, description="halvings of the side to the bottom code map (64 px -> 16)")
    top_halvings: int = Field(1, ge=1, le=10, description="further halvings to the top code map (16 -> 8)")
    code_dim: int = Field(32, ge=2, le=4096)
    top_codes: int = Field(128, ge=2, le=65536, description="top codebook size")
    bottom_codes: int = Field(256, ge=2, le=65536, description="bottom codebook size")
    codebook_decay: float = Field(0.99, gt=0, lt=1, description="decay of the codebooks' moving averages")
    dead_code_threshold: float = Field(1.0, ge=0, le=1e6, description="restart a code whose moving assignment count (per batch) falls below this")
    commitment: float = Field(0.25, ge=0, le=100, description="weight of the commitment loss ||z_e - sg(q)||^2")
    mask_weight: float = Field(1.0, ge=0, le=1000)
    # phase 2: the priors
    prior: Literal["maskgit", "autoregressive"] = Field("maskgit", description="masked-token prior sampled in a few parallel steps, or a causal one")
    prior_width: int = Field(64, ge=8, le=4096)
    prior_layers: int = Field(4, ge=1, le=64)
    prior_heads: int = Field(4, ge=1, le=64)
    prior_dropout: float = Field(0.1, ge=0, lt=1, description="dropout on the priors' attention outputs and MLPs")
    token_dropout: float = Field(0.1, ge=0, lt=1, description="share of visible input tokens replaced by random codes during prior training")

    @model_validator(mode="after")
    def _inpaint_needs_maskgit(self) -> "VQVAE2Config":
        if self.mode == "inpaint" and self.prior != "maskgit":
            raise ValueError("mode inpaint needs prior maskgit: a raster-order (autoregressive) prior never sees the "
                             "background tokens after the region, so it cannot fill one")
        return self


class VQVAE2Sampler(Strict):
    """Sampling-time settings (``augment sample --set sampler.temperature=0.9 sampler.top_k=32``)."""

    temperature: float = Field(1.0, ge=0.01, le=10, description="divides the prior's logits (0.01 to 10)")
    top_k: int = Field(0, ge=0, description="draw only among the k likeliest codes at each position (0 = all)")
    iterations: int = Field(8, ge=1, le=256, description="maskgit: parallel decoding steps per level (the autoregressive prior ignores it)")
    confidence_noise: float = Field(1.0, ge=0, le=10, description="0 to 10; maskgit: Gumbel noise on the keep-or-remask confidences, annealed to 0")


def _res(ch: int) -> nn.Module:
    return _Residual(nn.Sequential(nn.ReLU(), nn.Conv2d(ch, ch // 2, 3, 1, 1), nn.ReLU(), nn.Conv2d(ch // 2, ch, 1)))


class _Residual(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _down(cin: int, cout: int, halvings: int, blocks: int, first: int | None = None) -> nn.Sequential:
    """``halvings`` strided 4x4 convs (the first to width ``first``, default ``cout``), a 3x3
    conv and residual blocks."""
    layers: list[nn.Module] = []
    widths = [first or cout] + [cout] * (halvings - 1)
    for i, w in enumerate(widths):
        layers += [nn.Conv2d(cin if i == 0 else widths[i - 1], w, 4, 2, 1), nn.ReLU()]
    # widths[-1], not cout: with one halving the only strided conv has width ``first``.
    layers += [nn.Conv2d(widths[-1], cout, 3, 1, 1)] + [_res(cout) for _ in range(blocks)] + [nn.ReLU()]
    return nn.Sequential(*layers)


def _up(cin: int, cout: int, halvings: int, blocks: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, 1, 1)] + [_res(cout) for _ in range(blocks)] + [nn.ReLU()]
    for _ in range(halvings):
        layers += [nn.ConvTranspose2d(cout, cout, 4, 2, 1), nn.ReLU()]
    return nn.Sequential(*layers)


class Quantizer(nn.Module):
    """Nearest-code vector quantisation with moving-average codebook updates and dead-code restarts.

    The codebook lives in buffers (``embed``, ``cluster_size``, ``embed_sum``), updated in
    training mode only; under ``torch.distributed`` the assignment statistics are summed over
    processes and restarts are broadcast from process 0, so replicas keep one codebook.
    """

    def __init__(self, codes: int, dim: int, decay: float, threshold: float) -> None:
        super().__init__()
        self.codes, self.decay, self.threshold = codes, decay, threshold
        embed = torch.randn(codes, dim)
        self.register_buffer("embed", embed)
        # Counts start at 0, so the first training step restarts every code on encoder outputs
        # (a data-dependent initialisation).
        self.register_buffer("cluster_size", torch.zeros(codes))
        self.register_buffer("embed_sum", embed.clone())

    def codes_for(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) -> nearest code indices (B, h, w)."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).float()
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.embed.t() + self.embed.pow(2).sum(1)[None]
        return dist.argmin(1).view(z.shape[0], z.shape[2], z.shape[3])

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) indices -> (B, D, h, w) code vectors."""
        return F.embedding(codes, self.embed).permute(0, 3, 1, 2)

    def forward(self, z: torch.Tensor, generator: torch.Generator | None = None):
        """-> (straight-through quantised z, code indices, commitment loss, logs)."""
        codes = self.codes_for(z)
        q = self.lookup(codes).to(z.dtype)
        counts = torch.bincount(codes.flatten(), minlength=self.codes).float()
        restarted = 0
        if self.training:
            restarted = self._update(z.detach(), codes, counts, generator)
        commit = F.mse_loss(z.float(), q.detach().float())
        p = counts / counts.sum()
        logs = {"usage": float((counts > 0).float().mean()),
                "perplexity": float(torch.exp(-(p * p.clamp_min(1e-12).log()).sum())), "restarts": float(restarted)}
        return z + (q - z).detach(), codes, commit, logs

    @torch.no_grad()
    def _update(self, z: torch.Tensor, codes: torch.Tensor, counts: torch.Tensor, generator: torch.Generator | None) -> int:
        import torch.distributed as dist

        distributed = dist.is_available() and dist.is_initialized()
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).float()
        sums = torch.zeros_like(self.embed).index_add_(0, codes.flatten(), flat)
        if distributed:
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        d = self.decay
        self.cluster_size.mul_(d).add_(counts, alpha=1 - d)
        self.embed_sum.mul_(d).add_(sums, alpha=1 - d)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + 1e-5) / (n + self.codes * 1e-5) * n  # Laplace smoothing
        self.embed.copy_(self.embed_sum / smoothed.clamp_min(1e-12)[:, None])
        dead = self.cluster_size < self.threshold
        n_dead = int(dead.sum())
        if n_dead:
            pick = torch.randint(len(flat), (n_dead,), generator=generator, device=generator.device if generator else None)
            fresh = flat[pick.to(flat.device)]
            self.embed[dead] = fresh
            self.embed_sum[dead] = fresh * self.threshold
            self.cluster_size[dead] = self.threshold
        if distributed:
            for buf in (self.embed, self.embed_sum, self.cluster_size):
                dist.broadcast(buf, 0)
        return n_dead


class _Block(nn.Module):
    """Pre-norm transformer block with optional causal self-attention; ``dropout`` on the
    attention and MLP outputs (not inside them: on a CPU the masks cost more than the matmuls)."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        b, t, w = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        # No dropout on the attention weights: it forces SDPA's slow path (a B x H x T x T mask
        # drawn every call).
        a = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, t, w)))
        return x + self.drop(self.mlp(self.norm2(x)))


class TokenPrior(nn.Module):
    """A transformer over one code map (raster order), given a label and per-position features.

    Token index ``vocab`` is the mask token (maskgit) or the start token (autoregressive).
    """

    def __init__(self, vocab: int, length: int, num_classes: int, cond_channels: int, cfg: VQVAE2Config) -> None:
        super().__init__()
        w = cfg.prior_width
        self.vocab, self.length, self.causal = vocab, length, cfg.prior == "autoregressive"
        self.tokens = nn.Embedding(vocab + 1, w)
        self.position = nn.Parameter(torch.randn(1, length, w) * 0.02)
        self.label = nn.Embedding(num_classes, w)
        self.cond = nn.Linear(cond_channels, w) if cond_channels else None
        self.blocks = nn.ModuleList(_Block(w, cfg.prior_heads, cfg.prior_dropout) for _ in range(cfg.prior_layers))
        self.norm, self.head = nn.LayerNorm(w), nn.Linear(w, vocab)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """tokens (B, T') with T' <= length, cond (B, length, C) or None -> logits (B, T', vocab)."""
        t = tokens.shape[1]
        h = self.tokens(tokens) + self.position[:, :t] + self.label(labels)[:, None]
        if self.cond is not None:
            h = h + self.cond(cond[:, :t])
        for block in self.blocks:
            h = block(h, self.causal)
        return self.head(self.norm(h)).float()


def _filter(logits: torch.Tensor, settings: VQVAE2Sampler) -> torch.Tensor:
    logits = logits / settings.temperature
    if 0 < settings.top_k < logits.shape[-1]:
        kth = logits.topk(settings.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return logits


class VQVAE2(nn.Module):
    phases = ("vqvae", "prior")
    Sampler = VQVAE2Sampler

    def __init__(self, config: VQVAE2Config, spec: DataSpec) -> None:
        super().__init__()
        self.config, self.spec = config, spec
        cfg, c, k, n = config, spec.channels, spec.mask_classes, spec.num_classes
        factor = 2 ** (cfg.bottom_halvings + cfg.top_halvings)
        if spec.image_size % factor:
            raise ConfigError(f"generator.bottom_halvings + top_halvings = {cfg.bottom_halvings + cfg.top_halvings} halvings "
                              f"need the side to be a multiple of {factor}, but the images are {spec.image_size} px; "
                              f"give fewer halvings or prepare with a multiple of {factor}")
        if cfg.prior_width % cfg.prior_heads:
            raise ConfigError(f"generator.prior_width ({cfg.prior_width}) must be a multiple of generator.prior_heads ({cfg.prior_heads})")
        self.mask_conditioned = cfg.mode in ("mask", "inpaint")
        self.inpaints = cfg.mode == "inpaint"
        h, d, th = cfg.channels, cfg.code_dim, cfg.top_halvings
        self.bottom_side = spec.image_size // 2**cfg.bottom_halvings
        self.top_side = self.bottom_side // 2**th
        # phase 1
        # Full- and half-resolution layers are narrow: on a CPU they cost the most per channel.
        self.enc_bottom = _down(c + k, h, cfg.bottom_halvings, cfg.res_blocks, first=h // 2)
        self.enc_top = _down(h, h, th, cfg.res_blocks)
        self.pre_top = nn.Conv2d(h, d, 1)
        self.dec_top = _up(d, h, th, cfg.res_blocks)  # top codes -> bottom-grid features
        self.pre_bottom = nn.Conv2d(2 * h, d, 1)
        self.quant_top = Quantizer(cfg.top_codes, d, cfg.codebook_decay, cfg.dead_code_threshold)
        self.quant_bottom = Quantizer(cfg.bottom_codes, d, cfg.codebook_decay, cfg.dead_code_threshold)
        self.up_top = nn.Sequential(*[nn.ConvTranspose2d(d, d, 4, 2, 1) for _ in range(th)])
        self.dec_in = nn.Sequential(nn.Conv2d(2 * d, h, 3, 1, 1), *[_res(h) for _ in range(cfg.res_blocks)], nn.ReLU())
        up = [h] + [h // 2] * (cfg.bottom_halvings - 1) + [max(8, h // 8)]
        self.dec_up = nn.ModuleList(nn.ConvTranspose2d(up[i], up[i + 1], 4, 2, 1) for i in range(cfg.bottom_halvings))
        if self.mask_conditioned:
            self.dec_mask = nn.ModuleList(nn.Conv2d(k, w, 3, 1, 1) for w in up)
        self.dec_head = nn.Conv2d(up[-1] + (k if self.mask_conditioned else 0), c if self.mask_conditioned else c + k, 3, 1, 1)
        # phase 2
        mk = k if self.mask_conditioned else 0
        self.prior_top = TokenPrior(cfg.top_codes, self.top_side**2, n, mk, cfg)
        self.prior_bottom = TokenPrior(cfg.bottom_codes, self.bottom_side**2, n, d + mk, cfg)

    def phase_modules(self, phase: str) -> list[nn.Module]:
        if phase == "vqvae":
            return [self.enc_bottom, self.enc_top, self.pre_top, self.dec_top, self.pre_bottom, self.quant_top,
                    self.quant_bottom, self.up_top, self.dec_in, self.dec_up, self.dec_head,
                    *([self.dec_mask] if self.mask_conditioned else [])]
        if phase == "prior":
            return [self.prior_top, self.prior_bottom]
        raise ValueError(f"vqvae2 has phases `vqvae` and `prior`, not `{phase}`")

    # ------------------------------------------------------------------ autoencoder
    def _quantise(self, images, masks, generator=None):
        x = torch.cat([images * 2 - 1, one_hot_masks(masks, self.spec.mask_classes).to(images.dtype)], 1)
        eb = self.enc_bottom(x)
        qt, top, commit_t, logs_t = self.quant_top(self.pre_top(self.enc_top(eb)), generator)
        qb, bottom, commit_b, logs_b = self.quant_bottom(self.pre_bottom(torch.cat([eb, self.dec_top(qt)], 1)), generator)
        logs = {**{f"top_{k}": v for k, v in logs_t.items()}, **{f"bottom_{k}": v for k, v in logs_b.items()}}
        return qt, qb, top, bottom, commit_t + commit_b, logs

    def _decode_raw(self, qt: torch.Tensor, qb: torch.Tensor, masks: torch.Tensor | None):
        """Code vectors -> the decoder's image output on the [-1, 1] scale and mask logits
        (None in mask mode, where the decoder is given the mask at every level and at its head)."""
        hdn = self.dec_in(torch.cat([qb, self.up_top(qt)], 1))
        cond = one_hot_masks(masks, self.spec.mask_classes).to(hdn.dtype) if self.mask_conditioned else None
        if cond is not None:
            hdn = hdn + self.dec_mask[0](F.adaptive_avg_pool2d(cond, hdn.shape[-1]))
        for i, up in enumerate(self.dec_up):
            hdn = F.relu(up(hdn))
            if cond is not None:
                hdn = hdn + self.dec_mask[i + 1](F.adaptive_avg_pool2d(cond, hdn.shape[-1]))
        if cond is not None:
            return self.dec_head(torch.cat([hdn, cond], 1)).float(), None
        out = self.dec_head(hdn).float()
        c = self.spec.channels
        return out[:, :c], out[:, c:]

    def decode(self, top: torch.Tensor, bottom: torch.Tensor, masks: torch.Tensor | None = None):
        """Code indices (B, ht, wt), (B, hb, wb) [and masks (B, H, W) in mask mode] -> images
        (B, C, H, W) in [0, 1] and mask logits (B, K, H, W) (None in mask mode)."""
        raw, logits = self._decode_raw(self.quant_top.lookup(top), self.quant_bottom.lookup(bottom), masks)
        return ((raw + 1) / 2).clamp(0, 1), logits

    def encode(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, C, H, W) in [0, 1], masks (B, H, W) -> top and bottom code indices."""
        _, _, top, bottom, _, _ = self._quantise(images, masks)
        return top, bottom

    def _vqvae_loss(self, images, masks, generator):
        qt, qb, _, _, commit, logs = self._quantise(images, masks, generator)
        raw, logits = self._decode_raw(qt, qb, masks)
        l1 = (raw - (images * 2 - 1)).abs().mean()
        mask_ce = F.cross_entropy(logits, masks) if logits is not None else torch.zeros((), device=images.device)
        loss = l1 + self.config.mask_weight * mask_ce + self.config.commitment * commit
        mse = float((((raw.detach() + 1) / 2).clamp(0, 1) - images).pow(2).mean())
        return loss, {"image_l1": float(l1.detach()), "psnr": 10 * math.log10(1 / max(mse, 1e-10)),
                      "mask_ce": float(mask_ce.detach()), "commit": float(commit.detach()), **logs}

    # ------------------------------------------------------------------ priors
    def _conditions(self, top: torch.Tensor, masks: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Per-position features of the top prior (the mask's class fractions, or None) and of
        the bottom prior (the top code vectors on the bottom grid, and the mask's fractions)."""
        scale = self.bottom_side // self.top_side
        vectors = self.quant_top.lookup(top).repeat_interleave(scale, 2).repeat_interleave(scale, 3)
        parts_b, cond_t = [vectors], None
        if self.mask_conditioned:
            onehot = one_hot_masks(masks, self.spec.mask_classes)
            cond_t = F.adaptive_avg_pool2d(onehot, self.top_side).flatten(2).transpose(1, 2)
            parts_b.append(F.adaptive_avg_pool2d(onehot, self.bottom_side))
        cond_b = torch.cat(parts_b, 1).flatten(2).transpose(1, 2)
        return cond_t, cond_b

    def _region_tokens(self, regions: torch.Tensor, side: int) -> torch.Tensor:
        """(B, H, W) bool -> (B, side * side) bool: the tokens with any pixel in the region."""
        return F.adaptive_max_pool2d(regions[:, None].float(), side).flatten(1) > 0

    def _scored_logits(self, prior: TokenPrior, tokens: torch.Tensor, labels, cond, generator, corrupt: float,
                       region: torch.Tensor | None = None):
        """One prior's logits at its scored positions of code maps ``tokens`` (B, T), (S, vocab)
        float32, and the true codes there, (S,) int64: maskgit scores a cosine-scheduled random
        share of masked positions (drawn with ``generator``; inpaint mode: a share of the
        ``region`` (B, T) bool tokens, the whole map where a region is empty), the
        autoregressive prior every next token. ``corrupt``: share of the visible input tokens
        replaced by random codes."""
        b, t = tokens.shape
        dev = tokens.device
        inputs = tokens
        if corrupt > 0:
            swap = torch.rand((b, t), generator=generator, device=dev) < corrupt
            inputs = torch.where(swap, torch.randint(prior.vocab, (b, t), generator=generator, device=dev), tokens)
        if prior.causal:
            start = torch.full((b, 1), prior.vocab, dtype=tokens.dtype, device=dev)
            logits = prior(torch.cat([start, inputs[:, :-1]], 1), labels, cond)
            scored = torch.ones((b, t), dtype=torch.bool, device=dev)
        else:
            rate = torch.cos(0.5 * math.pi * torch.rand((b, 1), generator=generator, device=dev))
            u = torch.rand((b, t), generator=generator, device=dev)
            if region is None:
                n_masked = (rate * t).ceil().clamp(1, t)
            else:  # rank the region's tokens first, in random order
                region = region | ~region.any(1, keepdim=True)
                n_masked = (rate * region.sum(1, keepdim=True)).ceil().clamp_min(1)
                u = u + (~region).to(u.dtype)
            rank = u.argsort(1).argsort(1)
            scored = rank < n_masked
            logits = prior(torch.where(scored, torch.full_like(inputs, prior.vocab), inputs), labels, cond)
        return logits[scored], tokens[scored]

    def _prior_terms(self, prior: TokenPrior, tokens: torch.Tensor, labels, cond, generator, corrupt: float, region=None):
        """Cross-entropy (mean over scored positions) and accuracy of one prior (see ``_scored_logits``)."""
        logits, target = self._scored_logits(prior, tokens, labels, cond, generator, corrupt, region)
        ce = F.cross_entropy(logits, target)
        acc = (logits.argmax(-1) == target).float().mean()
        return ce, acc

    def _regions(self, masks: torch.Tensor, generator: torch.Generator):
        """Inpaint mode: the training regions of ``masks`` on the top and bottom grids, (B, T) bool
        each (drawn from ``generator``); (None, None) otherwise."""
        if not self.inpaints:
            return None, None
        regions = training_regions(masks, self.config.inpaint_margin, generator)
        return self._region_tokens(regions, self.top_side), self._region_tokens(regions, self.bottom_side)

    def _prior_loss(self, images, masks, labels, generator):
        with torch.no_grad():
            top, bottom = self.encode(images, masks)
            cond_t, cond_b = self._conditions(top, masks)
            reg_t, reg_b = self._regions(masks, generator)
        p = self.config.token_dropout
        # torch's dropout draws from the global RNG: seed it from the step's generator inside a
        # fork, so the dropout masks are a function of (seed, step) (exact resume) and the
        # caller's RNG is left as it was.
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        with torch.random.fork_rng(devices=[generator.device] if generator.device.type == "cuda" else []):
            torch.manual_seed(seed)
            ce_t, acc_t = self._prior_terms(self.prior_top, top.flatten(1), labels, cond_t, generator, p, reg_t)
            ce_b, acc_b = self._prior_terms(self.prior_bottom, bottom.flatten(1), labels, cond_b, generator, p, reg_b)
        return ce_t + ce_b, {"top_ce": float(ce_t.detach()), "bottom_ce": float(ce_b.detach()),
                             "top_acc": float(acc_t), "bottom_acc": float(acc_b)}

    def forward(self, images, masks, labels, phase: str, step: int, generator: torch.Generator):
        if phase == "vqvae":
            return self._vqvae_loss(images, masks, generator)
        if phase == "prior":
            return self._prior_loss(images, masks, labels, generator)
        raise ValueError(f"vqvae2 has phases `vqvae` and `prior`, not `{phase}`")

    # ------------------------------------------------------------------ sampling
    def _draw_maskgit(self, prior: TokenPrior, labels, cond, generator, settings: VQVAE2Sampler,
                      tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Fill the mask tokens of ``tokens`` (B, T) (default: all) in ``iterations`` steps, each
        item's unknowns on its own cosine schedule; the known tokens stay."""
        b, t, mask_id = len(labels), prior.length, prior.vocab
        if tokens is None:
            tokens = torch.full((b, t), mask_id, dtype=torch.int64, device=labels.device)
        unknown = (tokens == mask_id).sum(1).cpu().double()  # float64 as Python's (not on every device)
        steps = settings.iterations
        for it in range(steps):
            logits = _filter(prior(tokens, labels, cond), settings)
            masked = tokens == mask_id
            drawn = torch.where(masked, categorical(logits, generator), tokens)
            # Tokens left masked after this step: cosine schedule, none after the last (the skip
            # is decided on the map's length, so no item's draws depend on the others').
            share = math.cos(0.5 * math.pi * (it + 1) / steps)
            if int(math.floor(t * share)) <= 0:
                tokens = drawn
                continue
            conf = torch.log_softmax(logits, -1).gather(-1, drawn[..., None])[..., 0]
            noise = settings.confidence_noise * (1 - (it + 1) / steps)
            if noise > 0:
                u = uniform((b, t), generator, labels.device).clamp_(1e-20, 1.0 - 1e-7)
                conf = conf - noise * torch.log(-torch.log(u))
            conf = torch.where(masked, conf, torch.full_like(conf, float("inf")))  # fixed tokens stay
            remask = conf.argsort(1).argsort(1) < torch.floor(unknown * share).long().to(labels.device)[:, None]
            tokens = drawn.masked_fill(remask, mask_id)
        return tokens

    def _draw_autoregressive(self, prior: TokenPrior, labels, cond, generator, settings: VQVAE2Sampler) -> torch.Tensor:
        b = len(labels)
        tokens = torch.full((b, 1), prior.vocab, dtype=torch.int64, device=labels.device)  # the start token
        for _ in range(prior.length):
            logits = _filter(prior(tokens, labels, cond)[:, -1:], settings)
            tokens = torch.cat([tokens, categorical(logits, generator)], 1)
        return tokens[:, 1:]

    def draw_codes(self, labels: torch.Tensor, generator, masks: torch.Tensor | None, settings: VQVAE2Sampler,
                   context: Context | None = None):
        """Top then bottom code maps from the priors: (B, ht, wt), (B, hb, wb) int64. With a
        ``context`` (inpaint mode) the background's own codes, its region's tokens re-drawn."""
        draw = self._draw_autoregressive if self.config.prior == "autoregressive" else self._draw_maskgit
        known_t = known_b = None
        if context is not None:
            top0, bottom0 = self.encode(context.images, masks)
            known_t = top0.flatten(1).masked_fill(self._region_tokens(context.regions, self.top_side), self.prior_top.vocab)
            known_b = bottom0.flatten(1).masked_fill(self._region_tokens(context.regions, self.bottom_side), self.prior_bottom.vocab)
        extra_t = {} if known_t is None else {"tokens": known_t}
        extra_b = {} if known_b is None else {"tokens": known_b}
        cond_t = None
        if self.mask_conditioned:
            cond_t = F.adaptive_avg_pool2d(one_hot_masks(masks, self.spec.mask_classes), self.top_side).flatten(2).transpose(1, 2)
        top = draw(self.prior_top, labels, cond_t, generator, settings, **extra_t).view(-1, self.top_side, self.top_side)
        _, cond_b = self._conditions(top, masks)
        bottom = draw(self.prior_bottom, labels, cond_b, generator, settings, **extra_b).view(-1, self.bottom_side, self.bottom_side)
        return top, bottom

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, generator, masks: torch.Tensor | None = None,
               settings: VQVAE2Sampler | None = None, context: Context | None = None) -> Sample:
        """New pairs for ``labels`` (and the given masks in mask and inpaint mode, and the
        backgrounds and regions in inpaint mode); see :mod:`augment.generators.base` for the contract."""
        settings = settings or VQVAE2Sampler()
        if self.mask_conditioned != (masks is not None):
            need = "needs masks (mask_source: real)" if self.mask_conditioned else "makes its own masks (mask_source: generated)"
            raise ValueError(f"this vqvae2 ({self.config.mode} mode) {need}")
        if self.inpaints != (context is not None):
            raise ValueError(f"this vqvae2 ({self.config.mode} mode) " + ("needs backgrounds and regions (a Context)" if self.inpaints
                                                                          else "takes no background context"))
        device = self.quant_top.embed.device
        labels = labels.to(device=device, dtype=torch.int64)
        given = None if masks is None else masks.to(device=device, dtype=torch.int64)
        if context is not None:
            context = Context(context.images.to(device=device, dtype=torch.float32), context.regions.to(device=device, dtype=torch.bool))
        top, bottom = self.draw_codes(labels, generator, given, settings, context)
        images, logits = self.decode(top, bottom, given)
        out_masks = given if given is not None else logits.argmax(1)
        return Sample(images=images.float().cpu(), masks=out_masks.cpu(), labels=labels.cpu())

    # ------------------------------------------------------------------ held-out parts
    # What augment.metrics.generator_heldout measures; the model itself measures nothing.
    @property
    def codebook_sizes(self) -> dict[str, int]:
        """Codes per level: ``{"top": top_codes, "bottom": bottom_codes}``."""
        return {"top": self.config.top_codes, "bottom": self.config.bottom_codes}

    @torch.no_grad()
    def codes(self, images: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        """images (B, C, H, W) float32 in [0, 1] and masks (B, H, W) int64 class indices, on any
        device -> the nearest code indices ``{"top": (B, ht, wt), "bottom": (B, hb, wb)}`` int64,
        on the CPU (indices into codebooks of ``codebook_sizes``)."""
        device = self.quant_top.embed.device
        top, bottom = self.encode(images.to(device), masks.to(device))
        return {"top": top.cpu(), "bottom": bottom.cpu()}

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The autoencoder round trip through the nearest codes.

        images (B, C, H, W) float32 in [0, 1] and masks (B, H, W) int64 class indices, on any
        device -> reconstructed images (B, C, H, W) float32 in [0, 1] and decoded masks (B, H, W)
        int64 (argmax of the mask logits), on the CPU; the masks are None in mask mode, where the
        decoder is given the mask.
        """
        device = self.quant_top.embed.device
        m = masks.to(device)
        top, bottom = self.encode(images.to(device), m)
        rec, logits = self.decode(top, bottom, m if self.mask_conditioned else None)
        return rec.float().cpu(), None if logits is None else logits.argmax(1).cpu()

    @torch.no_grad()
    def prior_logits(self, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor,
                     generator: torch.Generator) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Both priors scored on the pairs' own code maps, as in training but without token
        corruption: ``{"top": (logits, target), "bottom": (logits, target)}`` with logits (S, K)
        float32 over the level's K codes and target (S,) int64 the true codes at the S scored
        positions (maskgit: a cosine-scheduled random share of each map masked, drawn with
        ``generator``, top level first; in inpaint mode a share of each pair's training region,
        drawn first, as in training; autoregressive: every next token, no draw).

        images (B, C, H, W) float32 in [0, 1], masks (B, H, W) and labels (B,) int64, on any
        device; ``generator`` on the model's device; logits and targets on the model's device.
        Call in eval mode (no dropout), so the logits depend on the draw alone.
        """
        device = self.quant_top.embed.device
        m, y = masks.to(device), labels.to(device=device, dtype=torch.int64)
        top, bottom = self.encode(images.to(device), m)
        cond_t, cond_b = self._conditions(top, m)
        reg_t, reg_b = self._regions(m, generator)
        return {name: self._scored_logits(prior, tokens.flatten(1), y, cond, generator, 0.0, reg)
                for name, prior, tokens, cond, reg in (("top", self.prior_top, top, cond_t, reg_t),
                                                        ("bottom", self.prior_bottom, bottom, cond_b, reg_b))}
