"""The one small interface every generator family implements, and the plain registry.

A family is one module holding its pydantic config, its network, its loss and its sampling.
Its network is an ``nn.Module`` with:

* ``phases``: names of the training phases, in order (``("main",)`` for one-stage models,
  e.g. ``("autoencoder", "prior")`` for two-stage ones);
* ``phase_parameters(phase)``: the parameters trained in that phase;
* ``forward(images, masks, labels, phase, step, generator) -> (loss, logs)``: the scalar loss
  for one batch at optimizer step ``step`` of that phase, and floats to log (``forward`` rather
  than a named method, so data-parallel wrappers see the call);
* ``sample(labels, generator) -> Sample``: new pairs conditioned on ``labels``. ``generator``
  is one ``torch.Generator`` for the batch, or a list with one per label; with a list, item
  ``i`` depends only on ``generator[i]`` (draw noise with :func:`randn`), so one pair can be
  regenerated alone, whatever batch it was first made in;
* ``sampler_settings()``: what besides weights and seed decides a sample (for provenance).

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


@runtime_checkable
class GeneratorModel(Protocol):
    phases: tuple[str, ...]

    def phase_parameters(self, phase: str) -> list[torch.nn.Parameter]: ...

    def forward(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        labels: torch.Tensor,
        phase: str,
        step: int,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, dict[str, float]]: ...

    def sample(self, labels: torch.Tensor, generator: torch.Generator | Sequence[torch.Generator]) -> Sample: ...

    def sampler_settings(self) -> dict[str, object]: ...


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


def one_hot_masks(masks: torch.Tensor, mask_classes: int) -> torch.Tensor:
    """(B, H, W) int64 -> (B, K, H, W) float32 one-hot channels."""
    return torch.nn.functional.one_hot(masks, mask_classes).permute(0, 3, 1, 2).float()


def label_maps(labels: torch.Tensor, num_classes: int, height: int, width: int) -> torch.Tensor:
    """(B,) int64 -> (B, num_classes, H, W) constant one-hot planes (conditioning by concatenation)."""
    onehot = torch.nn.functional.one_hot(labels, num_classes).float()
    return onehot[:, :, None, None].expand(-1, -1, height, width)
