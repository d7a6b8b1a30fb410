"""Training checkpoints without pickles: tensors in safetensors, everything else in JSON.

A checkpoint is a folder ``RUN/state/step_XXXXXXXX`` holding

* ``model.safetensors``: the live model's state dict (every parameter and buffer);
* ``optimizer.safetensors`` + ``optimizer.json``: the AdamW state of the phase the run resumes
  in: tensors ``state.<i>.step`` (float32 scalar), ``state.<i>.exp_avg`` and
  ``state.<i>.exp_avg_sq`` (shaped like parameter ``i``), and the param groups' hyper-parameters.
  A phase with several optimizers (``phase_parts``) has one such pair per part instead,
  ``optimizer.<part>.safetensors`` + ``optimizer.<part>.json``;
* ``ema.safetensors``: the EMA shadow of that phase's modules (only when EMA is on for it);
* ``scaler.json``: the fp16 grad scaler's state (only with ``mixed_precision: fp16``);
* ``trainer.json``: ``step`` (optimizer steps done, over all phases), ``phase`` and
  ``phase_step`` (where the run resumes) and the loss rows logged so far.

Nothing here calls ``pickle`` or ``torch.load``, so a crafted file in a checkpoint folder can at
worst be refused (:class:`TrainingError` naming the file), never run. A checkpoint is written
into a temporary folder and renamed, so it is complete or absent.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from augment.errors import AugmentError

STATE = "state"
MODEL, OPTIMIZER, OPTIMIZER_GROUPS = "model.safetensors", "optimizer.safetensors", "optimizer.json"
EMA, SCALER, TRAINER = "ema.safetensors", "scaler.json", "trainer.json"
FORMAT = 1
_EARLIER = "delete `{}` to resume from an earlier checkpoint"


class TrainingError(AugmentError):
    """Training cannot go on (non-finite loss, a broken checkpoint)."""


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint folder under ``run_dir/state`` (None when there is none)."""
    done = sorted(p for p in (Path(run_dir) / STATE).glob("step_*") if (p / TRAINER).is_file())
    return done[-1] if done else None


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Clones, so tied weights (one storage under two names) do not trip safetensors.
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}


def optimizer_files(state: dict) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """A torch optimizer ``state_dict()`` -> (tensors for safetensors, param groups for JSON)."""
    tensors = {}
    for i, per_param in state["state"].items():
        for name, value in per_param.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"optimizer state `{name}` of parameter {i} is a {type(value).__name__}, not a tensor")
            tensors[f"state.{i}.{name}"] = value
    return _cpu(tensors), [dict(g) for g in state["param_groups"]]


def optimizer_names(part: str) -> tuple[str, str]:
    """File names (tensors, param groups) of the optimizer of ``part`` ("" for a phase's only
    optimizer: the names a one-optimizer checkpoint has always had)."""
    if not part:
        return OPTIMIZER, OPTIMIZER_GROUPS
    return f"optimizer.{part}.safetensors", f"optimizer.{part}.json"


def save_checkpoint(
    acc,
    run_dir: Path,
    trainer: dict,
    model: dict[str, torch.Tensor],
    optimizers: dict[str, dict],
    ema: dict[str, torch.Tensor] | None,
    keep: int,
) -> Path:
    """Write one checkpoint for ``trainer["step"]`` (main process writes, every process waits),
    then drop all but the newest ``keep``. ``model``/``ema`` are state dicts, ``optimizers``
    maps part names ("" for a phase's only optimizer) to torch optimizer ``state_dict()``s."""
    state = Path(run_dir) / STATE
    final = state / f"step_{trainer['step']:08d}"
    tmp = state / f".step_{trainer['step']:08d}.partial"
    acc.wait_for_everyone()
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(_cpu(model), tmp / MODEL)
        for part, optimizer in optimizers.items():
            tensors_name, groups_name = optimizer_names(part)
            tensors, groups = optimizer_files(optimizer)
            save_file(tensors, tmp / tensors_name)
            (tmp / groups_name).write_text(json.dumps({"param_groups": groups}))
        if ema is not None:
            save_file(_cpu(ema), tmp / EMA)
        if getattr(acc, "scaler", None) is not None:
            (tmp / SCALER).write_text(json.dumps(acc.scaler.state_dict()))
        (tmp / TRAINER).write_text(json.dumps({"format": FORMAT, **trainer}))  # last: marks the folder complete
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in sorted(state.glob("step_*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return final


def read_json(path: Path) -> dict:
    """A JSON object from a checkpoint file; anything else is a TrainingError naming the file."""
    if not path.is_file():
        raise TrainingError(f"checkpoint file `{path}` is missing; {_EARLIER.format(path.parent)}")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise TrainingError(f"checkpoint file `{path}` is not JSON; {_EARLIER.format(path.parent)}") from None
    if not isinstance(data, dict):
        raise TrainingError(f"checkpoint file `{path}` is not a JSON object; {_EARLIER.format(path.parent)}")
    return data


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a checkpoint safetensors file (on CPU); a missing or non-safetensors file is
    a TrainingError naming it."""
    if not path.is_file():
        raise TrainingError(f"checkpoint file `{path}` is missing; {_EARLIER.format(path.parent)}")
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise TrainingError(f"checkpoint file `{path}` is not a safetensors file ({str(exc).splitlines()[0]}); "
                            f"{_EARLIER.format(path.parent)}") from None


def _misfit(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], what: str) -> str | None:
    """The first way ``got`` differs from ``want`` in names, shapes or dtypes, as a phrase (None: it fits)."""
    missing = [k for k in want if k not in got]
    extra = [k for k in got if k not in want]
    if missing:
        return f"lacks `{missing[0]}`" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
    if extra:
        return f"has `{extra[0]}`, which {what} does not" + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
    for k, w in want.items():
        g = got[k]
        if g.shape != w.shape or g.dtype != w.dtype:
            return f"holds `{k}` as {tuple(g.shape)} {g.dtype} but {what} has {tuple(w.shape)} {w.dtype}"
    return None


@torch.no_grad()
def restore_tensors(path: Path, live: dict[str, torch.Tensor], what: str = "the model") -> None:
    """Copy the tensors of ``path`` into ``live`` (a state dict whose tensors alias a module's
    parameters and buffers, or an EMA shadow), in place. The file must hold exactly the same
    names, shapes and dtypes, else a TrainingError names the file and the first difference."""
    got = read_tensors(path)
    problem = _misfit(got, live, what)
    if problem:
        raise TrainingError(f"checkpoint file `{path}` does not fit {what}: it {problem}")
    for k, v in live.items():
        v.copy_(got[k])


def restore_optimizer(
    folder: Path, optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], part: str = ""
) -> None:
    """Load the optimizer files of ``part`` (:func:`optimizer_names`) in ``folder`` into
    ``optimizer`` (a torch optimizer over ``params``, in order). Per-parameter tensors must be
    scalars (``step``) or shaped like their parameter."""
    tensors_file, groups_file = (folder / name for name in optimizer_names(part))
    tensors = read_tensors(tensors_file)
    groups = read_json(groups_file).get("param_groups")
    ours = optimizer.state_dict()["param_groups"]
    if not isinstance(groups, list) or [g.get("params") if isinstance(g, dict) else None for g in groups] != [
        g["params"] for g in ours
    ]:
        raise TrainingError(f"checkpoint file `{groups_file}` does not fit the optimizer (other parameter groups)")
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        parts = key.split(".")
        if len(parts) != 3 or parts[0] != "state" or not parts[1].isdigit() or int(parts[1]) >= len(params):
            raise TrainingError(f"checkpoint file `{tensors_file}` does not fit the optimizer: unexpected `{key}`")
        i, name = int(parts[1]), parts[2]
        if value.dim() != 0 and value.shape != params[i].shape:
            raise TrainingError(
                f"checkpoint file `{tensors_file}` does not fit the optimizer: `{key}` is "
                f"{tuple(value.shape)} but parameter {i} is {tuple(params[i].shape)}"
            )
        state.setdefault(i, {})[name] = value
    # JSON has no tuples; torch keeps e.g. ``betas`` as one.
    groups = [{k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in g.items()} for g in groups]
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper would move `step` to the device
    try:
        inner.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0]
        raise TrainingError(f"checkpoint file `{tensors_file}` does not fit the optimizer ({reason})") from None


def restore_scaler(folder: Path, scaler) -> None:
    """Load ``scaler.json`` into accelerate's fp16 grad scaler."""
    state = read_json(folder / SCALER)
    try:
        scaler.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise TrainingError(f"checkpoint file `{folder / SCALER}` does not fit the grad scaler ({exc})") from None
