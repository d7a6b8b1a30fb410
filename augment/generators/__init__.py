"""Generator families and their plain registry, keyed by family name."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Union

from pydantic import Field

from augment.config import Seed, Strict
from augment.generators.base import DataSpec, GeneratorModel, Sample
from augment.generators.cvae import CVAE, CVAEConfig
from augment.generators.gan import GAN, GANConfig
from augment.generators.ldm import LDM, LDMConfig
from augment.generators.loop import LoopConfig
from augment.generators.vqvae2 import VQVAE2, VQVAE2Config

#: family name -> (config class, network class). A new family adds one line here.
REGISTRY = {
    "cvae": (CVAEConfig, CVAE),
    "gan": (GANConfig, GAN),
    "ldm": (LDMConfig, LDM),
    "vqvae2": (VQVAE2Config, VQVAE2),
}

GeneratorConfig = Annotated[Union[CVAEConfig, GANConfig, LDMConfig, VQVAE2Config], Field(discriminator="family")]


class TrainConfig(Strict):
    """Options of ``augment train`` (written to ``RUN/config.json``)."""

    data: Path
    out: Path
    budget: int | None = Field(None, ge=1, description="label budget: a stratified subset of the train split")
    seed: Seed = 0
    generator: GeneratorConfig
    train: LoopConfig = Field(default_factory=LoopConfig)


def build(config, spec: DataSpec) -> GeneratorModel:
    """The untrained network for a validated family config."""
    return REGISTRY[config.family][1](config, spec)


__all__ = ["REGISTRY", "DataSpec", "GeneratorConfig", "GeneratorModel", "LoopConfig", "Sample", "TrainConfig", "build"]
