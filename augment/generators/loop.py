"""The one training loop every generator family goes through (accelerate), phase by phase.

A model trains its ``phases`` in order (e.g. an autoencoder, then a prior over its codes). Each
phase has its own optimizer, or several stepped in turn (``phase_parts``: e.g. a discriminator,
then a generator; see :mod:`augment.generators.base` and :mod:`augment.generators.plan`), and
may override the loop settings (``train.phases.<name>``). When a phase ends its modules are
frozen (EMA weights swapped in, ``requires_grad`` off, eval mode, grads dropped), so every later
phase trains against exactly the weights that are saved.

Exact resume is by construction: the data order, the per-step noise and the learning rate are
pure functions of (seed, phase, step in phase, part), so a checkpoint only holds weights, every
optimizer's moments, the EMA shadow and the grad scaler (see :mod:`augment.generators.checkpoint`:
no pickles). A run killed after a checkpoint and resumed ends with the same weights as an
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

import torch

from augment.generators import checkpoint as ckpt
from augment.generators.checkpoint import STATE, TrainingError, latest_checkpoint
from augment.generators.plan import LoopConfig, Phase, PhaseConfig, check_phases, phase_settings, plan_phases
from augment.progress import Lines
from augment.seeding import cpu_requested, mix_seed, process_state

__all__ = [
    "STATE", "DataOrder", "LoopConfig", "LoopResult", "PhaseConfig", "TrainingError", "check_phases",
    "latest_checkpoint", "lr_at", "make_accelerator", "phase_settings", "train_loop",
]


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
class LoopResult:
    state_dict: dict[str, torch.Tensor]
    steps: int
    resumed_from: int | None
    loss_rows: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    replica_checksums: list[float] = field(default_factory=list)


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
        TextColumn("{task.fields[loss]}  {task.fields[rate]:.1f} steps/s"), TimeRemainingColumn(),
        console=Console(stderr=True), transient=True, disable=not (enabled and sys.stderr.isatty()),
    )
    task = progress.add_task("train", total=total, completed=done, phase="", loss="", rate=0.0)
    return progress, task


def make_accelerator(cfg: LoopConfig, phases: Sequence[str], several_parts: bool = False):
    """The Accelerator for a run of a model with these ``phases`` (see
    :func:`augment.seeding.cpu_requested` for the CPU rule); ``several_parts``: some phase steps
    several optimizers in turn (:func:`augment.generators.plan.has_several_parts`). Checks
    ``cfg.phases`` first."""
    from accelerate import Accelerator, DistributedDataParallelKwargs

    check_phases(cfg, phases)
    process_state()  # the CPU rule and the process-count check
    # Later phases leave earlier (frozen) parameters without gradients, and one part's step
    # leaves the others' without (a discriminator step never reaches the generator).
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=len(phases) > 1 or several_parts)]
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
    plan = plan_phases(model, {name: phase_settings(cfg, name) for name in model.phases})
    optims = [o for ph in plan for o in ph.parts]
    for o in optims:
        o.optimizer = o.adamw()
    handler = getattr(acc, "ddp_handler", None)
    if acc.num_processes > 1 and any(len(ph.parts) > 1 for ph in plan) and not getattr(handler, "find_unused_parameters", False):
        raise ValueError("a phase of this model steps several optimizers: build its Accelerator with "
                         "make_accelerator(..., several_parts=True)")
    model, *prepared = acc.prepare(model, *(o.optimizer for o in optims))
    for o, opt in zip(optims, prepared):
        o.optimizer = opt
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
            s = ph.settings
            if hook is not None:
                with torch.no_grad():
                    hook(ph.name, data)
            ema = EMA(ph.state(), s.ema_decay) if s.ema else None
            if folder is not None and ph is first:
                _restore(acc, folder, raw, ph, ema, start - ph.offset)
            order = DataOrder(len(labels), s.batch_size, acc.num_processes, acc.process_index, mix_seed(seed, ph.index))
            # Grads that must not reach the next clipping: frozen phases' (whatever DDP does with
            # unused ones) and, with several parts, every part's (a generator step backpropagates
            # through the discriminator).
            stale = [p for m in frozen for p in m.parameters()] + ph.params
            for local in range(max(0, start - ph.offset), s.max_steps):
                step, done = ph.offset + local, ph.offset + local + 1
                model.train()
                for module in frozen:  # stay in eval: BatchNorm statistics of a finished phase are final
                    module.eval()
                row = {"step": done, "phase": ph.name}
                for o in ph.parts:
                    lr = lr_at(o.settings, local)
                    for group in o.optimizer.param_groups:
                        group["lr"] = lr
                    for micro in range(cfg.grad_accum):
                        j = local * cfg.grad_accum + micro
                        idx = order.indices(j)
                        x, m, y = images[idx].to(acc.device), masks[idx].to(acc.device), labels[idx].to(acc.device)
                        # The first part draws what a one-optimizer phase always has, so those runs are unchanged.
                        noise_seed = mix_seed(seed, 0x4015E, ph.index, j, acc.process_index, *([o.index] if o.index else []))
                        noise = torch.Generator(device=acc.device).manual_seed(noise_seed)
                        sync = micro == cfg.grad_accum - 1
                        part = {"part": o.name} if o.name else {}
                        with (contextlib.nullcontext() if sync else acc.no_sync(model)), acc.autocast():
                            loss, logs = model(x, m, y, phase=ph.name, step=local, generator=noise, **part)
                            acc.backward(loss / cfg.grad_accum)
                    losses = acc.gather(loss.detach().float().reshape(1))
                    if not torch.isfinite(losses).all():
                        bad = losses[~torch.isfinite(losses)][0].item()
                        where = f"phase `{ph.name}`" + (f", part `{o.name}`" if o.name else "")
                        raise TrainingError(
                            f"loss became {bad} at step {step + 1} ({where}); lower train.lr, "
                            "keep train.grad_clip on, or use train.mixed_precision=no"
                        )
                    if s.grad_clip is not None:
                        acc.clip_grad_norm_(o.params, s.grad_clip)
                    o.optimizer.step()
                    o.optimizer.zero_grad(set_to_none=True)
                    for p in stale:
                        p.grad = None
                    suffix = f"_{o.name}" if o.name else ""
                    row.update({f"loss{suffix}": float(losses.mean()), f"lr{suffix}": lr})
                    row.update(logs)
                if ema is not None:
                    ema.update(ph.state())
                ends = local + 1 == s.max_steps
                if ends:
                    _freeze(ph, ema)

                if done % cfg.log_every == 0 or ends or done % cfg.checkpoint_every == 0:
                    _check_finite(raw, done, ph.name)  # a NaN weight with a finite loss still ruins every sample
                if done % cfg.log_every == 0 or ends:
                    now = time.time()
                    rate = (done - last_step) / max(now - last_t, 1e-9)
                    last_t, last_step = now, done
                    rows.append({**row, "steps_per_s": rate})
                    shown = ", ".join(f"{k} {row[k]:.4g}" for k in row if k == "loss" or k.startswith("loss_"))
                    progress.update(task, completed=done, phase=ph.name, loss=shown, rate=rate)
                    lines.update(done, f"phase {ph.name}, {shown}, {rate:.1f} steps/s")
                if done % cfg.checkpoint_every == 0 and done < total:
                    nxt = plan[ph.index + 1] if ends else ph
                    trainer = {"step": done, "phase": nxt.name, "phase_step": done - nxt.offset, "loss_rows": rows}
                    ckpt.save_checkpoint(acc, run_dir, trainer, raw.state_dict(),
                                         {o.name: o.optimizer.state_dict() for o in nxt.parts},
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


def _check_finite(model: torch.nn.Module, step: int, phase: str) -> None:
    """Stop the run when a weight or buffer is NaN or infinite: nothing non-finite is checkpointed or saved."""
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise TrainingError(f"weight `{name}` became non-finite (NaN or inf) at step {step} (phase `{phase}`); "
                                "lower train.lr, keep train.grad_clip on, or use train.mixed_precision=no")


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
    for o in ph.parts:
        ckpt.restore_optimizer(folder, o.optimizer, o.params, o.name)
    if ema is not None and local > 0:
        ckpt.restore_tensors(folder / ckpt.EMA, ema.shadow, what=f"the EMA of phase `{ph.name}`")
    if getattr(acc, "scaler", None) is not None:
        ckpt.restore_scaler(folder, acc.scaler)
