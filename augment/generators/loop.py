"""The one training loop every generator family goes through (accelerate), phase by phase.

A model trains its ``phases`` in order (e.g. an autoencoder, then a prior over its codes). Each
phase has its own optimizer and may override the loop settings (``train.phases.<name>``). When a
phase ends its modules are frozen (EMA weights swapped in, ``requires_grad`` off, eval mode,
grads dropped), so every later phase trains against exactly the weights that are saved.

Exact resume is by construction: the data order, the per-step noise and the learning rate are
pure functions of (seed, phase, step in phase), so a checkpoint only holds weights, optimizer
moments, the EMA shadow and the grad scaler (see :mod:`augment.generators.checkpoint`: no
pickles). A run killed after a checkpoint and resumed ends with the same weights as an
uninterrupted one on CPU.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from augment.config import Strict
from augment.errors import ConfigError
from augment.generators import checkpoint as ckpt
from augment.generators.checkpoint import STATE, TrainingError, latest_checkpoint
from augment.progress import Lines
from augment.seeding import cpu_requested, mix_seed, process_state

__all__ = [
    "STATE", "DataOrder", "LoopConfig", "LoopResult", "PhaseConfig", "TrainingError", "check_phases",
    "latest_checkpoint", "lr_at", "make_accelerator", "phase_settings", "train_loop",
]


class PhaseConfig(Strict):
    """Overrides for one training phase; ``None`` inherits the value from ``train``."""

    max_steps: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)
    weight_decay: float | None = Field(None, ge=0)
    warmup_steps: int | None = Field(None, ge=0)
    schedule: Literal["constant", "cosine"] | None = None
    grad_clip: float | None = Field(None, gt=0, description="a phase cannot turn clipping off, only change it")
    ema: bool | None = None
    ema_decay: float | None = Field(None, gt=0, lt=1)


class LoopConfig(Strict):
    max_steps: int = Field(2000, ge=1, description="optimizer steps per phase (train.phases.NAME overrides any of these)")
    batch_size: int = Field(32, ge=1, description="per process")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["constant", "cosine"] = "cosine"
    grad_clip: float | None = Field(1.0, gt=0)
    grad_accum: int = Field(1, ge=1)
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


def lr_at(cfg: LoopConfig, step: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based, within a phase) given that phase's
    settings (:func:`phase_settings`): linear warm-up, then constant or cosine decay to 0 at ``max_steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - cfg.warmup_steps) / span)))


class DataOrder:
    """Which training examples each micro-batch holds: epochs are seeded permutations of the
    ``n`` examples laid end to end; global micro-batch ``j`` covers positions
    ``[j*B*W, (j+1)*B*W)`` of that stream and process ``r`` takes its ``B`` slice."""

    def __init__(self, n: int, batch_size: int, world: int, rank: int, seed: int) -> None:
        self.n, self.b, self.world, self.rank, self.seed = n, batch_size, world, rank, seed
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(mix_seed(self.seed, 0xDA7A, epoch))
            self._perms = {epoch: torch.randperm(self.n, generator=g)}  # keep one epoch in memory
        return self._perms[epoch]

    def indices(self, micro: int) -> torch.Tensor:
        start = micro * self.b * self.world + self.rank * self.b
        pos = range(start, start + self.b)
        return torch.stack([self._perm(p // self.n)[p % self.n] for p in pos])


class EMA:
    """Exponential moving average of named tensors (a phase's parameters and buffers): floats
    are averaged, integers (e.g. BatchNorm's batch counter) copied."""

    def __init__(self, state: dict[str, torch.Tensor], decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in state.items()}

    @torch.no_grad()
    def update(self, state: dict[str, torch.Tensor]) -> None:
        for k, v in state.items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v.detach(), 1.0 - self.decay)
            else:
                self.shadow[k].copy_(v)

    @torch.no_grad()
    def copy_to(self, state: dict[str, torch.Tensor]) -> None:
        """Write the shadow into ``state`` (tensors aliasing the live module), in place."""
        for k, v in state.items():
            v.copy_(self.shadow[k])


@dataclass
class Phase:
    """One phase as the loop runs it: global steps ``[offset, offset + settings.max_steps)``."""

    name: str
    index: int
    settings: LoopConfig
    offset: int
    modules: dict[str, torch.nn.Module]  # qualified name in the model -> module ("" = the model)
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer | None = None

    def state(self) -> dict[str, torch.Tensor]:
        """The phase modules' parameters and buffers under their names in the model's state dict."""
        return {f"{n}.{k}" if n else k: v for n, m in self.modules.items() for k, v in m.state_dict().items()}


@dataclass
class LoopResult:
    state_dict: dict[str, torch.Tensor]
    steps: int
    resumed_from: int | None
    loss_rows: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    replica_checksums: list[float] = field(default_factory=list)


def _plan(model: torch.nn.Module, cfg: LoopConfig) -> list[Phase]:
    """Phases with their settings, step offsets and (deduplicated) modules; phases must train
    disjoint parameters, since a finished phase is frozen."""
    names = {id(m): n for n, m in model.named_modules()}
    plan, owner, offset = [], {}, 0
    for i, name in enumerate(model.phases):
        listed = model.phase_modules(name)
        foreign = [m for m in listed if id(m) not in names]
        if foreign:
            raise ValueError(f"phase_modules(`{name}`) returned a {type(foreign[0]).__name__} that is not part of the model")
        mods = {names[id(m)]: m for m in listed}
        # Drop modules nested in another listed one: their state is already in the parent's.
        mods = {n: m for n, m in mods.items() if not any(p == "" or n.startswith(p + ".") for p in mods if p != n)}
        params = list({id(p): p for m in mods.values() for p in m.parameters()}.values())
        if not params:
            raise ValueError(f"phase `{name}` trains no parameters")
        for p in params:
            if id(p) in owner:
                raise ValueError(f"phases `{owner[id(p)]}` and `{name}` train the same parameters; phases must be disjoint")
            owner[id(p)] = name
        settings = phase_settings(cfg, name)
        plan.append(Phase(name, i, settings, offset, mods, params))
        offset += settings.max_steps
    return plan


@torch.no_grad()
def _freeze(phase: Phase, ema: EMA | None) -> None:
    """End ``phase``: swap its EMA weights in (when it had EMA), then freeze its modules."""
    if ema is not None:
        ema.copy_to(phase.state())
    for m in phase.modules.values():
        m.requires_grad_(False)
        m.eval()
    for p in phase.params:
        p.grad = None


def _progress(total: int, done: int, enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("[bold]train[/] {task.fields[phase]}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  {task.fields[rate]:.1f} steps/s"), TimeRemainingColumn(),
        console=Console(stderr=True), transient=True, disable=not (enabled and sys.stderr.isatty()),
    )
    task = progress.add_task("train", total=total, completed=done, phase="", loss=float("nan"), rate=0.0)
    return progress, task


def make_accelerator(cfg: LoopConfig, phases: Sequence[str]):
    """The Accelerator for a run of a model with these ``phases`` (see
    :func:`augment.seeding.cpu_requested` for the CPU rule). Checks ``cfg.phases`` first."""
    from accelerate import Accelerator, DistributedDataParallelKwargs

    check_phases(cfg, phases)
    process_state()  # the CPU rule and the process-count check
    # Later phases leave earlier (frozen) parameters without gradients.
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=len(phases) > 1)]
    return Accelerator(mixed_precision=cfg.mixed_precision, cpu=cpu_requested(), kwargs_handlers=handlers)


def train_loop(
    acc,
    model: torch.nn.Module,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    cfg: LoopConfig,
    seed: int,
    run_dir: Path,
    resume: bool,
) -> LoopResult:
    """Train ``model`` on ``data`` = (images (N,C,H,W) float32 [0,1], masks (N,H,W) int64,
    labels (N,) int64, on CPU) through every phase in ``model.phases`` with the Accelerator
    ``acc`` (from :func:`make_accelerator`), checkpointing into ``run_dir/state``.

    Global steps run over the phases in turn (phase 1 is steps ``0..n1-1``, phase 2
    ``n1..n1+n2-1``, ...). Returns, on every process, the model's final state dict (each phase's
    EMA weights swapped in where it had EMA); the model is left frozen, in eval mode.
    """
    check_phases(cfg, model.phases)
    plan = _plan(model, cfg)
    for ph in plan:
        ph.optimizer = torch.optim.AdamW(ph.params, lr=ph.settings.lr, weight_decay=ph.settings.weight_decay)
    model, *optimizers = acc.prepare(model, *(ph.optimizer for ph in plan))
    for ph, opt in zip(plan, optimizers):
        ph.optimizer = opt
    raw = acc.unwrap_model(model)
    hook = getattr(raw, "on_phase_start", None)

    images, masks, labels = data
    total = sum(ph.settings.max_steps for ph in plan)
    start, rows, resumed_from, folder = 0, [], None, None
    if resume and (folder := latest_checkpoint(run_dir)) is not None:
        info = ckpt.read_json(folder / ckpt.TRAINER)
        start, rows = _resume_point(folder, info, plan, total)
        resumed_from = start
        ckpt.restore_tensors(folder / ckpt.MODEL, raw.state_dict())

    t0, last_t, last_step = time.time(), time.time(), start
    first = next(ph for ph in plan if start < ph.offset + ph.settings.max_steps)
    for ph in plan[: first.index]:
        _freeze(ph, None)  # resumed into a later phase: the checkpoint holds its final weights
    frozen = [m for ph in plan[: first.index] for m in ph.modules.values()]
    progress, task = _progress(total, start, acc.is_main_process)
    lines = Lines("train generator", total, "steps", done=start, enabled=acc.is_main_process)  # when not a terminal
    with progress:
        for ph in plan[first.index:]:
            s, opt = ph.settings, ph.optimizer
            if hook is not None:
                with torch.no_grad():
                    hook(ph.name, data)
            ema = EMA(ph.state(), s.ema_decay) if s.ema else None
            if folder is not None and ph is first:
                _restore(acc, folder, raw, ph, ema, start - ph.offset)
            order = DataOrder(len(labels), s.batch_size, acc.num_processes, acc.process_index, mix_seed(seed, ph.index))
            frozen_params = [p for m in frozen for p in m.parameters()]
            for local in range(max(0, start - ph.offset), s.max_steps):
                lr = lr_at(s, local)
                for group in opt.param_groups:
                    group["lr"] = lr
                model.train()
                for module in frozen:  # stay in eval: BatchNorm statistics of a finished phase are final
                    module.eval()
                for micro in range(cfg.grad_accum):
                    j = local * cfg.grad_accum + micro
                    idx = order.indices(j)
                    x, m, y = images[idx].to(acc.device), masks[idx].to(acc.device), labels[idx].to(acc.device)
                    noise_seed = mix_seed(seed, 0x4015E, ph.index, j, acc.process_index)
                    noise = torch.Generator(device=acc.device).manual_seed(noise_seed)
                    sync = micro == cfg.grad_accum - 1
                    with (contextlib.nullcontext() if sync else acc.no_sync(model)), acc.autocast():
                        loss, logs = model(x, m, y, phase=ph.name, step=local, generator=noise)
                        acc.backward(loss / cfg.grad_accum)
                step, done = ph.offset + local, ph.offset + local + 1
                losses = acc.gather(loss.detach().float().reshape(1))
                if not torch.isfinite(losses).all():
                    bad = losses[~torch.isfinite(losses)][0].item()
                    raise TrainingError(
                        f"loss became {bad} at step {step + 1} (phase `{ph.name}`); lower train.lr, "
                        "keep train.grad_clip on, or use train.mixed_precision=no"
                    )
                if s.grad_clip is not None:
                    acc.clip_grad_norm_(ph.params, s.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
                for p in frozen_params:  # stale grads must never reach clipping, whatever DDP does with unused ones
                    p.grad = None
                if ema is not None:
                    ema.update(ph.state())
                ends = local + 1 == s.max_steps
                if ends:
                    _freeze(ph, ema)

                if done % cfg.log_every == 0 or ends:
                    now = time.time()
                    rate = (done - last_step) / max(now - last_t, 1e-9)
                    last_t, last_step = now, done
                    row = {"step": done, "phase": ph.name, "loss": float(losses.mean()), "lr": lr, **logs, "steps_per_s": rate}
                    rows.append(row)
                    progress.update(task, completed=done, phase=ph.name, loss=row["loss"], rate=rate)
                    lines.update(done, f"phase {ph.name}, loss {row['loss']:.4g}, {rate:.1f} steps/s")
                if done % cfg.checkpoint_every == 0 and done < total:
                    nxt = plan[ph.index + 1] if ends else ph
                    trainer = {"step": done, "phase": nxt.name, "phase_step": done - nxt.offset, "loss_rows": rows}
                    ckpt.save_checkpoint(acc, run_dir, trainer, raw.state_dict(), nxt.optimizer.state_dict(),
                                         None if ends or ema is None else ema.shadow, cfg.keep_checkpoints)
            frozen += list(ph.modules.values())
    lines.finish()

    raw.eval()
    final = {k: v.detach().cpu().clone().contiguous() for k, v in raw.state_dict().items()}
    # Data-parallel replicas must agree; a cheap checksum per process proves it.
    floats = [float(v.double().sum()) for v in final.values() if v.dtype.is_floating_point]
    checksum = torch.tensor([sum(floats)], device=acc.device)
    checksums = acc.gather(checksum).tolist()
    acc.wait_for_everyone()
    return LoopResult(final, total, resumed_from, rows, time.time() - t0, checksums)


def _resume_point(folder: Path, info: dict, plan: list[Phase], total: int) -> tuple[int, list[dict]]:
    """(step, loss rows) from a checkpoint's trainer.json, checked against this run's phases."""
    path = folder / ckpt.TRAINER
    step, phase, rows = info.get("step"), info.get("phase"), info.get("loss_rows")
    if (info.get("format") != ckpt.FORMAT or not isinstance(step, int) or not isinstance(rows, list)
            or not all(isinstance(r, dict) for r in rows)):
        raise TrainingError(f"checkpoint file `{path}` is not a trainer record of this version (format {ckpt.FORMAT})")
    if not 0 < step < total:
        raise TrainingError(f"checkpoint file `{path}` is at step {step}, outside this run's {total} steps")
    here = next(ph for ph in plan if step < ph.offset + ph.settings.max_steps)
    if phase != here.name:
        raise TrainingError(
            f"checkpoint file `{path}` resumes step {step} in phase `{phase}`, but this run puts it in `{here.name}`"
        )
    return step, rows


def _restore(acc, folder: Path, raw: torch.nn.Module, ph: Phase, ema: EMA | None, local: int) -> None:
    """Load a checkpoint's state for phase ``ph`` resumed at its step ``local``. The weights are
    loaded again after ``on_phase_start``, so what the hook wrote into the state dict takes its
    checkpointed value while what it derived elsewhere is recomputed."""
    ckpt.restore_tensors(folder / ckpt.MODEL, raw.state_dict())
    ckpt.restore_optimizer(folder, ph.optimizer, ph.params)
    if ema is not None and local > 0:
        ckpt.restore_tensors(folder / ckpt.EMA, ema.shadow, what=f"the EMA of phase `{ph.name}`")
    if getattr(acc, "scaler", None) is not None:
        ckpt.restore_scaler(folder, acc.scaler)
