"""``augment train``: fit a generator family on the label-budget subset of the train split.

One CPU process or a data-parallel launch (``accelerate launch`` / ``torchrun``) alike. The run
folder is self-describing (:mod:`augment.runs`): ``config.json`` first, checkpoints under
``state/`` while it trains, then the weights, ``loss.csv`` and ``run.json`` last, whose presence
marks a finished run. A finished run is never overwritten; an unfinished one continues only with
``resume=True`` and the same config (``train.max_steps`` may grow). After training, a two-stage
family's autoencoder and priors are measured on the val split (:func:`augment.metrics.generator_heldout`),
never trained on.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from augment.errors import AugmentError, DataError
from augment.lock import locked
from augment.output import StageResult, atomic_path, discard, read_json, record_of, resumable_output
from augment.runinfo import run_record, write_json


def check_run_folder(cfg, resume: bool) -> bool:
    """A finished run is never overwritten; an unfinished one continues only with --resume and
    only with the same config (``train.max_steps`` may grow). True when the folder is new
    (absent or empty)."""
    from augment.config import load_json
    from augment.generators import TrainConfig
    from augment.generators.artifact import CONFIG, RUN
    from augment.generators.checkpoint import STATE

    out = Path(cfg.out)
    if out.is_dir() and (out / RUN).is_file():
        if read_json(out / RUN, "run record").get("stage") == "train":
            raise DataError(f"`{out}` already holds a finished generator run; choose another --out")
        raise DataError(f"`{out}` is not empty and is not a generator run; choose another --out")
    if resumable_output(out, CONFIG, "a generator run"):
        return True
    if (out / STATE).exists() and not (out / STATE).is_dir():
        raise DataError(f"`{out / STATE}` should be the run's checkpoint folder but is a file; remove it to train from the start")
    if not resume:
        raise DataError(f"`{out}` holds an unfinished run; pass --resume to continue it, or choose another --out")
    saved = load_json(TrainConfig, out / CONFIG).model_dump(mode="json")
    now = cfg.model_dump(mode="json")
    saved["train"]["max_steps"] = now["train"]["max_steps"]
    diff = sorted(k for k in _flatten(now) if _flatten(now).get(k) != _flatten(saved).get(k))
    if diff:
        a, b = _flatten(saved), _flatten(now)
        shown = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff[:4])
        raise DataError(f"--resume with a different config than `{out / CONFIG}` ({shown}); use the same options")
    return False


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@locked(lambda cfg, *_, **__: cfg.out, "train")
def train(cfg, resume: bool = False) -> StageResult:
    """``augment train``: fit a generator family on the label-budget subset of the train split.

    Works as one CPU process or under ``accelerate launch`` / ``torchrun`` (data parallel). The
    run folder is self-describing (see :mod:`augment.runs`); ``resume=True``
    continues an interrupted run from its last checkpoint with identical results.
    """
    import torch

    from augment.config import load_json, save_json
    from augment.data.guard import load_training_set
    from augment.generators import DataSpec, TrainConfig, build
    from augment.generators.artifact import CONFIG, LOSS, RUN, WEIGHTS, save_weights
    from augment.generators.loop import latest_checkpoint, make_accelerator, train_loop
    from augment.generators.plan import has_several_parts

    started = time.time()
    out = Path(cfg.out)
    existed, fresh = out.exists(), check_run_folder(cfg, resume)
    data = load_training_set(cfg.data, cfg.budget, cfg.seed)
    spec = DataSpec(
        image_size=data.images.shape[-1],
        channels=data.images.shape[1],
        num_classes=max(data.classes) + 1,
        mask_classes=max(2, int(data.masks.max()) + 1),
    )
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(cfg.seed)
        model = build(cfg.generator, spec)
    state = make_accelerator(cfg.train, model.phases, several_parts=has_several_parts(model))
    if state.is_main_process and (fresh or load_json(TrainConfig, out / CONFIG) != cfg):  # same config: left as it is
        out.mkdir(parents=True, exist_ok=True)
        save_json(cfg, out / CONFIG)
    state.wait_for_everyone()

    try:
        result = train_loop(state, model, (data.images, data.masks, data.labels), cfg.train, cfg.seed, out, resume)
    except AugmentError:
        if fresh and state.num_processes == 1 and latest_checkpoint(out) is None:
            discard(out, existed)  # e.g. a loss that diverged at once: nothing worth resuming
        raise
    if state.is_main_process:
        heldout, not_measured = heldout_metrics(model, Path(cfg.data), spec.image_size, (data.images, data.masks, data.labels))
        digest = save_weights(result.state_dict, out / WEIGHTS)
        with atomic_path(out / LOSS) as tmp:
            pd.DataFrame(result.loss_rows).to_csv(tmp, index=False)
        steps_run = result.steps - (result.resumed_from or 0)
        write_json(
            run_record(
                "train",
                cfg.model_dump(mode="json"),
                started,
                family=cfg.generator.family,
                data_spec=spec.model_dump(),
                classes={str(k): v for k, v in data.classes.items()},
                data_dir=str(Path(cfg.data).resolve()),
                data_manifest_sha256=data.manifest_sha256,
                budget=cfg.budget,
                seed=cfg.seed,
                n_train=len(data.labels),
                class_counts={str(k): int(v) for k, v in data.rows["label"].value_counts().sort_index().items()},
                trained_on=data.trained_on,
                steps=result.steps,
                resumed_from_step=result.resumed_from,
                loop_seconds=round(result.seconds, 3),
                steps_per_s=round(steps_run / max(result.seconds, 1e-9), 3),
                processes=state.num_processes,
                replica_checksums=result.replica_checksums,
                weights_sha256=digest,
                heldout_metrics=heldout,
                heldout_not_measured=not_measured,
            ),
            out / RUN,
        )
    state.wait_for_everyone()
    record = record_of(out, RUN)
    summary = (f"trained {record.get('family')} for {record.get('steps')} steps on {record.get('n_train')} images "
               f"in {record.get('loop_seconds', 0):.1f} s ({record.get('steps_per_s', 0):.2f} steps/s); wrote {out}") if record else ""
    lines = describe_heldout(record.get("heldout_metrics") or {}, record.get("heldout_not_measured"))
    summary += f"\n{lines}" if lines and summary else ""
    return StageResult(out, record, summary)


def heldout_metrics(model, data_dir: Path, size: int, train: tuple, limit: int = 256) -> tuple[dict[str, float], str | None]:
    """What the trained generator's own parts do on the val split (:func:`augment.metrics.generator_heldout`:
    a flat ``{name: float}``, rounded to 4 decimals for the record; {} for a family that exposes
    nothing to measure) and, when val pairs exist but none fits, why nothing was measured. The
    val pairs are only measured, after the weights are final; ``train`` = the training tensors
    (images, masks, labels), for the priors' train-vs-val gap."""
    import torch

    from augment.data.dataset import load_pairs
    from augment.data.manifest import load_data
    from augment.metrics import generator_heldout

    if not any(hasattr(model, part) for part in ("reconstruct", "codes", "prior_logits")):
        return {}, None
    manifest, _ = load_data(data_dir)
    val = manifest[(manifest["split"] == "val") & (manifest["mask"] != "")].head(limit)
    images, masks, labels = load_pairs(val, data_dir, size)  # the generator is built for one size
    if not len(labels):
        return {}, f"no val pair with a mask at {size}x{size} px (val pairs: {len(val)})"
    with torch.no_grad():
        metrics = generator_heldout(model, images, masks, labels, train=train)
    return {k: round(float(v), 4) for k, v in metrics.items()}, None


def describe_heldout(metrics: dict[str, float], note: str | None = None) -> str:
    """The held-out figures of a training record as lines for a person ('' when there are none)."""
    if note:
        return f"generator parts not measured on val: {note}"
    if not metrics:
        return ""
    shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "n_pairs")
    return f"generator parts on {int(metrics.get('n_pairs', 0))} val pairs (measured after training, never trained on): {shown}"
