"""What each training phase trains, and with which optimizers: the training loop's plan of a model.

A phase trains the modules of ``model.phase_modules(phase)`` with one AdamW under the phase's
settings, or, when the model defines ``phase_parts(phase)``, one AdamW per part with the part's
own learning rate, betas and weight decay (see :mod:`augment.generators.base`). Phases train
disjoint parameters, and so do the parts of a phase: a finished phase is frozen, and a part's
optimizer step must change its own parameters only. The loop's settings (:class:`LoopConfig`,
with per-phase overrides) live here too, as what a plan is made of; :mod:`augment.generators.loop`
re-exports them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field

from augment.config import Strict
from augment.errors import ConfigError
from augment.generators.base import Part

class PhaseConfig(Strict):
    """Overrides for one training phase; ``None`` inherits the value from ``train``."""

    max_steps: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1, le=4096)
    lr: float | None = Field(None, gt=0, le=1)
    weight_decay: float | None = Field(None, ge=0, le=10)
    warmup_steps: int | None = Field(None, ge=0)
    schedule: Literal["constant", "cosine"] | None = None
    grad_clip: float | None = Field(None, gt=0, le=1e6, description="a phase cannot turn clipping off, only change it")
    ema: bool | None = None
    ema_decay: float | None = Field(None, gt=0, lt=1)


class LoopConfig(Strict):
    max_steps: int = Field(2000, ge=1, description="optimizer steps per phase (train.phases.NAME overrides any of these)")
    batch_size: int = Field(32, ge=1, le=4096, description="per process, at most 4096")
    lr: float = Field(1e-3, gt=0, le=1)
    weight_decay: float = Field(0.0, ge=0, le=10)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["constant", "cosine"] = "cosine"
    grad_clip: float | None = Field(1.0, gt=0, le=1e6)
    grad_accum: int = Field(1, ge=1, le=1024)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    ema: bool = False
    ema_decay: float = Field(0.999, gt=0, lt=1)
    checkpoint_every: int = Field(500, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1)
    phases: dict[str, PhaseConfig] = Field(default_factory=dict, description="per-phase overrides, by phase name")


def phase_settings(cfg: LoopConfig, phase: str) -> LoopConfig:
    """The settings one phase trains with: ``cfg`` with ``cfg.phases[phase]``'s non-None
    overrides applied (and no ``phases`` of its own). Pure; a phase without overrides gets ``cfg``'s values."""
    over = cfg.phases.get(phase)
    update = {k: v for k, v in (over.model_dump() if over else {}).items() if v is not None}
    return cfg.model_copy(update={**update, "phases": {}})


def check_phases(cfg: LoopConfig, phases: Sequence[str]) -> None:
    """Every name in ``cfg.phases`` must be one of the model's ``phases`` (ConfigError otherwise)."""
    unknown = [p for p in cfg.phases if p not in phases]
    if unknown:
        allowed = ", ".join(f"`{p}`" for p in phases)
        raise ConfigError(f"train.phases has unknown phase `{unknown[0]}` (this generator's phases: {allowed})")


_PART_NAME = re.compile(r"[a-z][a-z0-9_]*")  # part names end up in file names and loss.csv columns


@dataclass
class Optim:
    """One optimizer of a phase as the loop runs it."""

    name: str  # "" for the one optimizer of a phase without ``phase_parts``
    index: int  # position in the phase; parts after the first mix it into their noise seed
    settings: LoopConfig  # the phase's settings with this part's lr and weight decay
    betas: tuple[float, float]
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer | None = None

    def adamw(self) -> torch.optim.AdamW:
        s = self.settings
        return torch.optim.AdamW(self.params, lr=s.lr, betas=self.betas, weight_decay=s.weight_decay)


@dataclass
class Phase:
    """One phase as the loop runs it: global steps ``[offset, offset + settings.max_steps)``."""

    name: str
    index: int
    settings: LoopConfig
    offset: int
    modules: dict[str, torch.nn.Module]  # qualified name in the model -> module ("" = the model)
    params: list[torch.nn.Parameter]  # every part's, in part order
    parts: list[Optim]

    def state(self) -> dict[str, torch.Tensor]:
        """The phase modules' parameters and buffers under their names in the model's state dict."""
        return {f"{n}.{k}" if n else k: v for n, m in self.modules.items() for k, v in m.state_dict().items()}


def plan_phases(model: torch.nn.Module, settings: dict[str, LoopConfig]) -> list[Phase]:
    """Phases of ``model`` with their ``settings`` (phase name -> :func:`phase_settings`), step
    offsets, (deduplicated) modules and parts; ValueError when a phase or part trains nothing or
    lists a module foreign to the model, or when phases or parts share parameters."""
    names = {id(m): n for n, m in model.named_modules()}
    plan, owner, offset = [], {}, 0
    for i, name in enumerate(model.phases):
        s = settings[name]
        parts, modules = [], {}
        for k, (part_name, part) in enumerate(_parts(model, name).items()):
            where = f"phase `{name}`" + (f" (part `{part_name}`)" if part_name else "")
            foreign = [m for m in part.modules if id(m) not in names]
            if foreign:
                raise ValueError(f"{where} lists a {type(foreign[0]).__name__} that is not part of the model")
            mods = _outermost({names[id(m)]: m for m in part.modules})
            params = list({id(p): p for m in mods.values() for p in m.parameters()}.values())
            if not params:
                raise ValueError(f"{where} trains no parameters")
            for p in params:
                if id(p) in owner:
                    raise ValueError(f"{owner[id(p)]} and {where} train the same parameters; they must be disjoint")
                owner[id(p)] = where
            update = {key: v for key, v in (("lr", part.lr), ("weight_decay", part.weight_decay)) if v is not None}
            parts.append(Optim(part_name, k, s.model_copy(update=update) if update else s, part.betas, params))
            modules.update(mods)
        params = [p for o in parts for p in o.params]
        if hasattr(model, "phase_parts") and {id(p) for m in model.phase_modules(name) for p in m.parameters()} != set(map(id, params)):
            raise ValueError(f"phase_modules(`{name}`) must list the modules of all of phase_parts(`{name}`)")
        plan.append(Phase(name, i, s, offset, _outermost(modules), params, parts))
        offset += s.max_steps
    return plan


def has_several_parts(model: torch.nn.Module) -> bool:
    """Whether some phase of ``model`` steps several optimizers in turn (``phase_parts``)."""
    return any(len(_parts(model, phase)) > 1 for phase in model.phases)


def _parts(model: torch.nn.Module, phase: str) -> dict[str, Part]:
    """``model.phase_parts(phase)``, checked; without it, one unnamed part of ``phase_modules``."""
    if not hasattr(model, "phase_parts"):
        return {"": Part(model.phase_modules(phase))}
    parts = model.phase_parts(phase)
    if not isinstance(parts, dict) or not parts:
        raise ValueError(f"phase_parts(`{phase}`) must return a non-empty dict of part name -> Part")
    for name, part in parts.items():
        if not isinstance(name, str) or not _PART_NAME.fullmatch(name):
            raise ValueError(f"phase_parts(`{phase}`) has part name {name!r}; use lower-case letters, digits and _")
        if not isinstance(part, Part):
            raise ValueError(f"phase_parts(`{phase}`)[`{name}`] is a {type(part).__name__}, not a Part")
    return parts


def _outermost(mods: dict[str, torch.nn.Module]) -> dict[str, torch.nn.Module]:
    """``mods`` (qualified name in the model -> module) without the modules nested in another
    one: their state is already in the parent's."""
    return {n: m for n, m in mods.items() if not any(p == "" or n.startswith(p + ".") for p in mods if p != n)}
