"""The one training loop every generator family goes through (accelerate).

Exact resume is by construction: the data order, the per-step noise and the learning rate are
pure functions of (seed, step), so a checkpoint only needs what accelerate's ``save_state``
holds (weights, optimizer moments, grad scaler, EMA). A run killed after a checkpoint and
resumed ends with the same weights as an uninterrupted one on CPU.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from augment.config import Strict
from augment.errors import AugmentError
from augment.seeding import cpu_requested, mix_seed, process_state

STATE = "state"


class TrainingError(AugmentError):
    """Training cannot go on (non-finite loss, a broken checkpoint)."""


class LoopConfig(Strict):
    max_steps: int = Field(2000, ge=1, description="optimizer steps per phase")
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


def lr_at(cfg: LoopConfig, step: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of a phase: linear warm-up, then
    constant or cosine decay to 0 at ``max_steps``."""
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
    """Exponential moving average of a module's floating-point parameters and buffers."""

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        for k, v in module.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v.detach(), 1.0 - self.decay)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}


@dataclass
class LoopResult:
    state_dict: dict[str, torch.Tensor]
    steps: int
    resumed_from: int | None
    loss_rows: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    replica_checksums: list[float] = field(default_factory=list)


def latest_checkpoint(run_dir: Path) -> Path | None:
    done = sorted(p for p in (run_dir / STATE).glob("step_*") if (p / "trainer.json").is_file())
    return done[-1] if done else None


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


def make_accelerator(cfg: LoopConfig, phases: int):
    """The Accelerator for a run (see :func:`augment.seeding.cpu_requested` for the CPU rule)."""
    from accelerate import Accelerator, DistributedDataParallelKwargs

    process_state()  # the CPU rule and the process-count check
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=phases > 1)]
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
    labels (N,) int64) through every phase in ``model.phases`` with the Accelerator ``acc``
    (from :func:`make_accelerator`), checkpointing into ``run_dir/state``. Returns the final (EMA, when enabled) weights on every process."""
    phases = tuple(model.phases)
    optimizers = [
        torch.optim.AdamW(model.phase_parameters(p), lr=cfg.lr, weight_decay=cfg.weight_decay) for p in phases
    ]
    model, *optimizers = acc.prepare(model, *optimizers)
    raw = acc.unwrap_model(model)
    ema = EMA(raw, cfg.ema_decay) if cfg.ema else None
    if ema is not None:
        acc.register_for_checkpointing(ema)

    images, masks, labels = data
    order = DataOrder(len(labels), cfg.batch_size, acc.num_processes, acc.process_index, seed)
    total = cfg.max_steps * len(phases)
    start, rows, resumed_from = 0, [], None
    ckpt = latest_checkpoint(run_dir) if resume else None
    if ckpt is not None:
        acc.load_state(str(ckpt))
        info = json.loads((ckpt / "trainer.json").read_text())
        start, rows, resumed_from = info["step"], info["loss_rows"], info["step"]

    t0, last_t, last_step = time.time(), time.time(), start
    progress, task = _progress(total, start, acc.is_main_process)
    with progress:
        for step in range(start, total):
            phase_i, local = divmod(step, cfg.max_steps)
            phase, opt = phases[phase_i], optimizers[phase_i]
            lr = lr_at(cfg, local)
            for group in opt.param_groups:
                group["lr"] = lr
            model.train()
            for micro in range(cfg.grad_accum):
                j = step * cfg.grad_accum + micro
                idx = order.indices(j)
                x, m, y = images[idx].to(acc.device), masks[idx].to(acc.device), labels[idx].to(acc.device)
                noise = torch.Generator(device=acc.device).manual_seed(mix_seed(seed, 0x4015E, j, acc.process_index))
                sync = micro == cfg.grad_accum - 1
                with (contextlib.nullcontext() if sync else acc.no_sync(model)), acc.autocast():
                    loss, logs = model(x, m, y, phase=phase, step=local, generator=noise)
                    acc.backward(loss / cfg.grad_accum)
            losses = acc.gather(loss.detach().float().reshape(1))
            if not torch.isfinite(losses).all():
                bad = losses[~torch.isfinite(losses)][0].item()
                raise TrainingError(
                    f"loss became {bad} at step {step + 1} (phase `{phase}`); lower train.lr, "
                    "keep train.grad_clip on, or use train.mixed_precision=no"
                )
            if cfg.grad_clip is not None:
                acc.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(raw)

            done = step + 1
            if done % cfg.log_every == 0 or done == total:
                now = time.time()
                rate = (done - last_step) / max(now - last_t, 1e-9)
                last_t, last_step = now, done
                rows.append({"step": done, "phase": phase, "loss": float(losses.mean()), "lr": lr, **logs, "steps_per_s": rate})
                progress.update(task, completed=done, phase=phase, loss=float(losses.mean()), rate=rate)
            if done % cfg.checkpoint_every == 0 and done < total:
                _save_checkpoint(acc, run_dir, done, rows, cfg.keep_checkpoints)

    final = ema.shadow if ema is not None else raw.state_dict()
    final = {k: v.detach().cpu().clone().contiguous() for k, v in final.items()}
    # Data-parallel replicas must agree; a cheap checksum per process proves it.
    checksum = torch.tensor([sum(float(v.double().sum()) for v in final.values() if v.dtype.is_floating_point)], device=acc.device)
    checksums = acc.gather(checksum).tolist()
    acc.wait_for_everyone()
    return LoopResult(final, total, resumed_from, rows, time.time() - t0, checksums)


def _save_checkpoint(acc, run_dir: Path, step: int, rows: list[dict], keep: int) -> None:
    """``save_state`` into a temporary folder, then rename: a checkpoint is complete or absent."""
    state = run_dir / STATE
    final = state / f"step_{step:08d}"
    tmp = state / f".step_{step:08d}.partial"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    acc.save_state(str(tmp))
    acc.wait_for_everyone()
    if acc.is_main_process:
        (tmp / "trainer.json").write_text(json.dumps({"step": step, "loss_rows": rows}))
        tmp.rename(final)
        for old in sorted(p for p in state.glob("step_*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
