"""The one small interface every generator family implements, and the plain registry.

A family is one module holding its pydantic config, its network, its loss and its sampling.
Its network is an ``nn.Module`` with:

* ``phases``: names of the training phases, in order (``("main",)`` for one-stage models,
  e.g. ``("autoencoder", "prior")`` for two-stage ones);
* ``phase_modules(phase) -> list[nn.Module]``: the submodules trained in that phase (the
  model itself for one-stage models); the phase trains their parameters. Phases train disjoint
  parameters: when a phase ends the loop swaps its EMA weights in (when it had EMA), sets its
  modules' ``requires_grad`` off, keeps them in eval mode and drops their grads, so later phases
  train against exactly the weights that are saved (and BatchNorm statistics stay as they were);
* optionally ``phase_parts(phase) -> dict[str, Part]``: a phase trained by several optimizers
  stepped in turn (an adversarial pair: ``{"d": Part([disc], lr=2e-4, betas=(0.5, 0.999)),
  "g": Part([gen], ...)}``). Each :class:`Part` names its modules and its AdamW settings (``None``
  takes the phase's ``train`` value; the phase's warm-up and schedule apply to every part's lr);
  parts train disjoint parameters and ``phase_modules`` still lists all of them. Every optimizer
  step runs the parts in order on the same batch: for each part, each micro-batch of the
  gradient accumulation calls ``forward(..., part=name)`` and backpropagates, then the loop clips
  that part's parameters, steps its optimizer and drops the grads of every parameter of the
  phase, so one part's step never carries another's gradients. The first part draws the noise a
  one-optimizer phase would; later ones draw from seeds that also mix in their position. Loss
  rows get ``loss_<part>``, ``lr_<part>`` and every part's logs (keep their keys distinct);
  checkpoints hold every part's optimizer state; under data parallelism DDP needs
  ``find_unused_parameters`` (a discriminator step leaves the generator unused), which
  ``make_accelerator(..., several_parts=True)`` turns on. Without
  ``phase_parts`` a phase has one optimizer (AdamW with the phase's settings) and ``forward``
  gets no ``part``;
* optionally ``on_phase_start(phase, data)``: called by the loop under ``torch.no_grad()`` at
  the start of every phase, after the earlier phases are frozen, with ``data`` = (images, masks,
  labels), the whole training set on CPU. It derives state from frozen modules and data (e.g. a
  latent scale). It is called again when a resumed run restarts inside a phase, and then the
  checkpoint's weights are loaded after it, so state it writes into the state dict takes its
  checkpointed value and anything else is recomputed: it must be deterministic;
* ``forward(images, masks, labels, phase, step, generator) -> (loss, logs)``: the scalar loss
  for one batch at optimizer step ``step`` of that phase (of its part ``part``, a keyword given
  only to models with ``phase_parts``), and floats to log (``forward`` rather than a named
  method, so data-parallel wrappers see the call);
* ``sample(labels, generator, masks=None, settings=None) -> Sample``: new pairs conditioned on
  ``labels``. ``generator`` is one ``torch.Generator`` for the batch, or a list with one per
  label; with a list, item ``i`` depends only on ``generator[i]`` (draw noise with :func:`randn`,
  tokens with :func:`categorical`), so one pair can be regenerated alone, whatever batch it was
  first made in. ``masks`` (B, H, W) int64: a family whose ``mask_conditioned`` is true makes
  the image *for* each given mask (and returns those masks); the others make both and refuse
  ``masks``. ``settings``: an instance of the family's ``Sampler`` schema (None: its defaults);
* ``Sampler``: a pydantic schema of the sampling-time settings (temperature, steps, guidance
  ...); ``augment sample --set sampler.KEY=VALUE`` is validated by it and every row's
  provenance records it;
* ``mask_conditioned``: whether ``sample`` needs real masks (``mask_source: real``);
* ``inpaints`` (optional, default false): ``mode: inpaint``, the family fills a region of a real
  background: ``sample`` then also takes ``context`` (:class:`Context`: the backgrounds and the
  regions, with the given masks placed inside the regions) and returns whole images whose
  pixels inside each region are generated (outside them anything: the sampler composites the
  background back with a feathered seam, :mod:`augment.placement`). Training sees each budget
  pair with a region made from its own mask (:func:`training_regions`) and counts the image loss
  inside the region only.

Tensor contract shared by all families: ``images`` (B, C, H, W) float32 in [0, 1]; ``masks``
(B, H, W) int64 class indices; ``labels`` (B,) int64 class labels. Randomness always comes in
as a ``torch.Generator``: no family touches the global RNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from pydantic import Field

from augment.config import Strict


class DataSpec(Strict):
    """What a generator is built for; read from the data at train time, stored in run.json."""

    image_size: int = Field(ge=8)
    channels: int = Field(ge=1, le=3)
    num_classes: int = Field(ge=1, description="class labels 0..num_classes-1")
    mask_classes: int = Field(ge=2, description="mask values 0..mask_classes-1 (0 = background)")


@dataclass(frozen=True)
class Sample:
    """Generated pairs: images (B, C, H, W) float32 in [0, 1], masks (B, H, W) int64, labels (B,) int64."""

    images: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor


@dataclass(frozen=True)
class Context:
    """What an inpainting family fills: ``images`` (B, C, H, W) float32 in [0, 1], the real
    backgrounds, and ``regions`` (B, H, W) bool, where to generate."""

    images: torch.Tensor
    regions: torch.Tensor


@dataclass(frozen=True)
class Part:
    """One optimizer of a training phase (see ``phase_parts``): the modules it trains and its
    AdamW settings; ``lr`` and ``weight_decay`` of ``None`` take the phase's ``train`` values."""

    modules: Sequence[torch.nn.Module]
    lr: float | None = None
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float | None = None

    def __post_init__(self) -> None:
        # Families build parts from their validated config; these only catch a family's own slip.
        if isinstance(self.modules, torch.nn.Module):
            raise ValueError("a Part's modules must be a list of modules, not one module")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"a Part's lr must be > 0, not {self.lr}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"a Part's betas must be two numbers in [0, 1), not {self.betas}")
        if self.weight_decay is not None and not self.weight_decay >= 0:
            raise ValueError(f"a Part's weight_decay must be >= 0, not {self.weight_decay}")


@runtime_checkable
class GeneratorModel(Protocol):
    phases: tuple[str, ...]

    def phase_modules(self, phase: str) -> list[torch.nn.Module]: ...

    def forward(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        labels: torch.Tensor,
        phase: str,
        step: int,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, dict[str, float]]: ...

    Sampler: type[Strict]
    mask_conditioned: bool

    def sample(
        self,
        labels: torch.Tensor,
        generator: torch.Generator | Sequence[torch.Generator],
        masks: torch.Tensor | None = None,
        settings: Strict | None = None,
        context: Context | None = None,
    ) -> Sample: ...


def randn(
    shape: tuple[int, ...], generator: torch.Generator | Sequence[torch.Generator], device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Standard normal noise of ``shape`` (batch first): from one generator, or row by row from
    one generator per item (then each row is independent of the batch it is drawn in)."""
    if isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, device=generator.device).to(device)
    if len(generator) != shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
    return torch.stack([torch.randn(shape[1:], generator=g, device=g.device) for g in generator]).to(device)


def categorical(logits: torch.Tensor, generator: torch.Generator | Sequence[torch.Generator]) -> torch.Tensor:
    """One draw per position from ``softmax(logits)``: logits (B, ..., K) -> (B, ...) int64.

    Gumbel-max over uniform noise from :func:`uniform`, so with one generator per item,
    row ``i`` depends only on ``generator[i]`` (token priors stay regenerable one row at a time).
    """
    u = uniform(tuple(logits.shape), generator, logits.device).clamp_(1e-20, 1.0 - 1e-7)
    return (logits.float() - torch.log(-torch.log(u))).argmax(-1)


def uniform(
    shape: tuple[int, ...], generator: torch.Generator | Sequence[torch.Generator], device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Uniform [0, 1) noise of ``shape`` (batch first), like :func:`randn`."""
    if isinstance(generator, torch.Generator):
        return torch.rand(shape, generator=generator, device=generator.device).to(device)
    if len(generator) != shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
    return torch.stack([torch.rand(shape[1:], generator=g, device=g.device) for g in generator]).to(device)


def one_hot_masks(masks: torch.Tensor, mask_classes: int) -> torch.Tensor:
    """(B, H, W) int64 -> (B, K, H, W) float32 one-hot channels."""
    return torch.nn.functional.one_hot(masks, mask_classes).permute(0, 3, 1, 2).float()


def label_maps(labels: torch.Tensor, num_classes: int, height: int, width: int) -> torch.Tensor:
    """(B,) int64 -> (B, num_classes, H, W) constant one-hot planes (conditioning by concatenation)."""
    onehot = torch.nn.functional.one_hot(labels, num_classes).float()
    return onehot[:, :, None, None].expand(-1, -1, height, width)


def disk_dilate(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, H, W) bool dilated by a disk of ``radius`` px (as :func:`augment.placement.dilate`)."""
    if radius <= 0:
        return masks.bool()
    r = int(radius)
    yy, xx = torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij")
    kernel = ((yy**2 + xx**2) <= r * r).to(device=masks.device, dtype=torch.float32)[None, None]
    hit = torch.nn.functional.conv2d(masks.float()[:, None], kernel, padding=r)[:, 0]
    return hit > 0.5


def training_regions(masks: torch.Tensor, margin: float, generator: torch.Generator) -> torch.Tensor:
    """(B, H, W) int64 masks -> (B, H, W) bool regions to inpaint in training: each lesion dilated by
    ``margin`` of the side (as the sampler's placement regions are), and for an image without a
    lesion a random ellipse (centre in the middle 60 %, radii 8-25 % of the side) from ``generator``,
    so normal tissue is inpainted too."""
    b, h, w = masks.shape
    side = min(h, w)
    regions = disk_dilate(masks > 0, round(margin * side))
    u = torch.rand((b, 4), generator=generator, device=generator.device).to(masks.device)
    yy = torch.arange(h, device=masks.device, dtype=torch.float32)[None, :, None]
    xx = torch.arange(w, device=masks.device, dtype=torch.float32)[None, None, :]
    cy, cx = (0.2 + 0.6 * u[:, 0]) * h, (0.2 + 0.6 * u[:, 1]) * w
    ry, rx = (0.08 + 0.17 * u[:, 2]) * side, (0.08 + 0.17 * u[:, 3]) * side
    ellipse = ((yy - cy[:, None, None]) / ry[:, None, None]) ** 2 + ((xx - cx[:, None, None]) / rx[:, None, None]) ** 2 <= 1.0
    empty = ~(masks > 0).flatten(1).any(1)
    return torch.where(empty[:, None, None], ellipse, regions)
