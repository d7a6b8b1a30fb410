"""Downstream evaluation: does synthetic data help a task model on untouched real test data?

For one synthetic set (made from a generator trained on a label budget), or for a label budget
alone (the generator-independent arms, shared by every generator in a pipeline), train the same
task model (:mod:`augment.downstream`) on each arm, with each seed, and test on the real test split:

* ``real``: the budget subset the generator was trained on;
* ``real+classic``: the same, with classic paired augmentation (albumentations);
* ``real+synthetic``: the budget subset plus the synthetic pairs;
* ``real+synthetic+classic``: both;
* ``synthetic``: the synthetic pairs alone (a reference, not a recipe);
* any named recipe (``recipes``, :mod:`augment.recipes`): a subset of the synthetic set, filtered
  and mixed into each batch in a chosen way, by default with classic augmentation.

Model selection uses the real val split (never seen by the generator); the checkpoint rule is
recorded (``best_val`` by default; ``last`` inflates the classic gain, see DESIGN.md).
Segmentation: MONAI UNet, Dice + CE; Dice over test images with a lesion, false-positive rate over
test images whose mask is empty. Classification: SmallCNN, class-weighted CE; balanced accuracy,
macro-F1, recall of the rarest class, macro one-vs-rest AUROC. Each (task, arm, seed) result is
its own JSON file, so an interrupted evaluation resumes where it stopped. The real rows are the
exact rows the generator was trained on (:func:`augment.runs.read_run`), and a
generator that saw any val or test image of the data is refused (by sha256).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, field_validator, model_validator

from augment.classic import ClassicConfig, classic_transform
from augment.config import Strict, load_json, save_json
from augment.data.dataset import read_rows, to_tensor
from augment.data.guard import check_trained_on
from augment.data.manifest import load_data, load_synthetic
from augment.data.splits import select_budget
from augment.downstream import TASKS, Shapes, TaskConfig, fit
from augment.errors import AugmentError, ConfigError, DataError
from augment.lock import locked
from augment.output import atomic_path, discard, read_csv, read_json, resumable_output
from augment.plausibility import ScorerConfig
from augment.progress import stage
from augment.recipes import RecipeConfig
from augment.runinfo import run_record, write_json
from augment.seeding import mix_seed
from augment.verdicts import ARM_ORDER, SHARED_ARMS  # the arms, and those without synthetic data (shared by every generator)

ARMS = tuple(ARM_ORDER)
Arm = Literal["real", "real+classic", "real+synthetic", "real+synthetic+classic", "synthetic"]
NO_GENERATOR = "none"


class EvaluationSettings(Strict):
    """What an evaluation trains, shared by ``augment evaluate`` and a pipeline's ``evaluate:``."""

    task: Literal["segmentation", "classification", "both"] = "segmentation"
    arms: list[Arm] = Field(default_factory=lambda: list(ARMS), description="fixed arms (may be empty when recipes are given)")
    segmentation: TaskConfig = Field(default_factory=TaskConfig)
    classification: TaskConfig = Field(default_factory=lambda: TaskConfig(steps=400, batch_size=32))
    classic: ClassicConfig = Field(default_factory=ClassicConfig)
    recipes: dict[str, RecipeConfig] = Field(default_factory=dict, description="named recipes, trained as extra arms (augment.recipes)")
    scorer: ScorerConfig = Field(default_factory=ScorerConfig, description="the reconstruction filter's VAE")

    @field_validator("arms")
    @classmethod
    def _once(cls, values: list) -> list:
        return unique(values)

    @field_validator("recipes")
    @classmethod
    def _names(cls, value: dict) -> dict:
        from augment.recipes import check_names

        check_names(value, ARMS)
        return value

    @model_validator(mode="after")
    def _something(self) -> "EvaluationSettings":
        if not self.arms and not self.recipes:
            raise ValueError("nothing to train: give at least one arm or recipe")
        return self


class EvaluateConfig(EvaluationSettings):
    data: Path
    synthetic: Path | None = Field(None, description="synthetic set (from augment sample); without it only real arms")
    budget: int | None = Field(None, ge=1, description="without --synthetic: the label budget (default: the whole train split)")
    budget_seed: int = Field(0, ge=0, description="without --synthetic: which budget subset (the generator's seed)")
    generator_name: str | None = Field(None, description="the `generator` column (default: the synthetic set's family)")
    out: Path
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)

    @field_validator("seeds")
    @classmethod
    def _seeds_once(cls, values: list) -> list:
        return unique(values)


def unique(values: list) -> list:
    """A list validator: each value at most once (a repeated arm or seed is a typo, not a request)."""
    seen = [v for i, v in enumerate(values) if v in values[:i]]
    if seen:
        raise ValueError(f"{seen[0]!r} is listed twice; give each value once")
    return values


class Split:
    """Pixels of a manifest subset: images uint8 (N, H, W[, C]), masks uint8 (N, H, W) or None, labels (N,)."""

    def __init__(self, df: pd.DataFrame, root: Path, masks: bool) -> None:
        rows = read_rows(df, root, masks)
        self.ids = df["id"].tolist()
        self.images = np.stack([image for image, _, _ in rows]) if rows else np.zeros((0, 1, 1), np.uint8)
        self.masks = np.stack([mask for _, mask, _ in rows]) if masks and rows else None
        self.labels = df["label"].to_numpy().astype(np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(images (N, C, H, W) float32 [0, 1], masks (N, H, W) int64 or None, labels (N,) int64)."""
        x = torch.stack([to_tensor(i) for i in self.images])
        m = None if self.masks is None else torch.from_numpy(self.masks).to(torch.int64)
        return x, m, torch.from_numpy(self.labels)


def _concat(a: Split, b: Split) -> Split:
    out = copy.copy(a)
    out.ids = a.ids + b.ids
    out.images = np.concatenate([a.images, b.images])
    out.masks = None if a.masks is None or b.masks is None else np.concatenate([a.masks, b.masks])
    out.labels = np.concatenate([a.labels, b.labels])
    return out


def batch_fn(split: Split, augment):
    """draw_batch for :func:`augment.downstream.fit`: uint8 pixels, optionally augmented, as tensors."""
    def draw(idx: np.ndarray):
        images, masks = [], []
        for i in idx:
            image, mask = split.images[i], None if split.masks is None else split.masks[i]
            if augment is not None:
                image, mask = augment(image, mask)
            images.append(to_tensor(image))
            if mask is not None:
                masks.append(torch.from_numpy(np.ascontiguousarray(mask)).to(torch.int64))
        return torch.stack(images), (torch.stack(masks) if masks else None), torch.from_numpy(split.labels[idx])

    return draw


def fit_split(task: str, train: Split, val: Split, cfg: TaskConfig, shapes: Shapes, seed: int, augment,
              batches: list[np.ndarray] | None = None, weights: np.ndarray | None = None):
    """Train one task model on ``train`` (optionally augmented, on a batch schedule, with
    per-example loss weights) and select its checkpoint on ``val``: :class:`augment.downstream.Fitted`."""
    return fit(TASKS[task], shapes, batch_fn(train, augment), len(train), torch.from_numpy(train.labels), cfg, seed,
               val=val.tensors(), batches=batches, weights=weights)


def train_arm(task: str, train: Split, val: Split, test: Split, cfg: TaskConfig, shapes: Shapes, seed: int, augment,
              batches: list[np.ndarray] | None = None, weights: np.ndarray | None = None) -> dict:
    """Train one task model on ``train`` (:func:`fit_split`), return test metrics and the record."""
    fitted = fit_split(task, train, val, cfg, shapes, seed, augment, batches, weights)
    metrics = TASKS[task].score(fitted.model, shapes, *test.tensors())
    return {"metrics": metrics, "selected_step": fitted.selected_step, "val_score": fitted.val_score, "n_train": len(train),
            "train_seconds": round(fitted.seconds, 2)}


def _sources(cfg: EvaluateConfig, real: pd.DataFrame, classes: dict[int, str]) -> tuple[pd.DataFrame, pd.DataFrame | None, dict]:
    """The real training rows (the generator's own, or a budget subset), the synthetic rows and
    what the record says about where they came from."""
    from augment.runs import read_run, read_synthetic_record

    needs = [a for a in cfg.arms if a not in SHARED_ARMS] + list(cfg.recipes)
    if cfg.synthetic is None:
        if needs:
            raise ConfigError(f"evaluate: arm `{needs[0]}` needs --synthetic (without it: {', '.join(SHARED_ARMS)})")
        rows = select_budget(real, cfg.budget, cfg.budget_seed)
        return rows, None, {"budget": cfg.budget, "generator_seed": cfg.budget_seed, "generator": cfg.generator_name or NO_GENERATOR}
    if cfg.budget is not None:
        raise ConfigError("evaluate: `budget` comes from the synthetic set's generator; give one or the other")
    syn_dir = Path(cfg.synthetic)
    syn = load_synthetic(syn_dir, cfg.data, classes)
    record = read_synthetic_record(syn_dir, syn)
    gen_path, trained = record["generator_run"], record["generator_trained_on_sha256"]
    check_trained_on(trained, real, Path(cfg.data), f"`{syn_dir}`")
    run = read_run(gen_path)
    return run.rows, syn, {"budget": run.budget, "generator_seed": run.seed,
                           "generator": cfg.generator_name or run.family, "generator_run": str(run.path)}


@locked(lambda cfg, *_, **__: cfg.out, "evaluate")
def evaluate(cfg: EvaluateConfig, echo=print) -> Path:
    """``augment evaluate``: every (task, arm, seed); writes ``EVAL/results.csv`` (one row per
    task, budget, generator, arm, seed, metric) and ``EVAL/run.json``. Finished (task, arm, seed)
    results in ``EVAL/runs/`` are reused, so an interrupted evaluation resumes."""
    started = time.time()
    real, classes = load_data(cfg.data)
    real_rows, syn, origin = _sources(cfg, real, classes)
    tasks = ["segmentation", "classification"] if cfg.task == "both" else [cfg.task]
    has_masks = bool((real["mask"] != "").all())
    if "segmentation" in tasks and not has_masks:
        raise DataError(f"`{cfg.data}` has images without masks; use --task classification")
    if "classification" in tasks and cfg.classification.selection == "best_val_dice_fpr":
        raise ConfigError("evaluate: classification.selection best_val_dice_fpr counts a segmenter's false positives; "
                          "use best_val or last for classification")
    fpr_rule = [n for n, r in cfg.recipes.items() if r.selection == "best_val_dice_fpr"]
    if "classification" in tasks and fpr_rule:
        raise ConfigError(f"evaluate: recipe `{fpr_rule[0]}` selects by best_val_dice_fpr, which counts a segmenter's "
                          "false positives; run it with --task segmentation or give it selection best_val")
    bad = [n for n, r in cfg.recipes.items() if "segmenter" in r.filters]
    if bad and not has_masks:
        raise ConfigError(f"evaluate: recipe `{bad[0]}` uses the segmenter filter, which needs masks; `{cfg.data}` has none")
    root = Path(cfg.data)
    parts = {
        "real": Split(real_rows, root, has_masks),
        "val": Split(real[real["split"] == "val"], root, has_masks),
        "test": Split(real[real["split"] == "test"], root, has_masks),
    }
    if syn is not None:
        parts["synthetic"] = Split(syn, Path(cfg.synthetic), has_masks)
    if not len(parts["val"]) or not len(parts["test"]):
        raise DataError(f"`{cfg.data}` needs non-empty val and test splits for a downstream evaluation")
    num_classes = max(classes) + 1
    highest = max(int(p.masks.max()) for p in parts.values() if p.masks is not None and len(p)) if has_masks else 0
    counts = np.bincount(parts["real"].labels, minlength=num_classes)
    rare = int(np.argmin(np.where(counts > 0, counts, np.iinfo(np.int64).max)))
    channels = parts["real"].images.shape[-1] if parts["real"].images.ndim == 4 else 1
    shapes = Shapes(channels, num_classes, max(2, highest + 1), rare)

    out = Path(cfg.out)
    existed, fresh = out.exists(), _check_out(out, cfg)
    try:
        return _run(cfg, out, tasks, parts, shapes, origin, rare, syn, started, echo, classes)
    except AugmentError:
        if fresh:
            discard(out, existed)  # a run that failed on its own input leaves nothing
        raise


def _check_out(out: Path, cfg: EvaluateConfig) -> bool:
    """Refuse an output that holds anything but an evaluation with the same fixed settings;
    True when ``out`` is new (absent or empty)."""
    if resumable_output(out, "config.json", "an evaluation folder"):
        return True
    record = out / "run.json"
    try:
        saved = load_json(EvaluateConfig, out / "config.json")
        stage = read_json(record).get("stage") if record.is_file() else "evaluate"
    except AugmentError:
        saved, stage = None, None
    if saved is None or stage != "evaluate":
        raise DataError(f"`{out}` is not empty and is not an evaluation folder; choose another --out")
    if _fixed(saved) != _fixed(cfg):
        raise DataError(f"`{out}` holds an evaluation with other settings (see its config.json); choose another --out")
    changed = [n for n, r in cfg.recipes.items() if n in saved.recipes and saved.recipes[n] != r]
    if changed:
        raise DataError(f"`{out}` holds recipe `{changed[0]}` with other settings (see its config.json); rename the "
                        "recipe or choose another --out")
    return False


def _result(path: Path) -> dict:
    """A finished (task, arm, seed) result from ``EVAL/runs/``; a corrupt one is named."""
    try:
        result = read_json(path, "result file")
    except DataError as exc:
        raise DataError(f"{exc}; delete it to train that arm again") from None
    metrics = result.get("metrics")
    if not isinstance(metrics, dict) or not all(isinstance(v, (int, float)) for v in metrics.values()):
        raise DataError(f"result file `{path}` has no metrics (corrupt or from another tool); delete it to train that arm again")
    return result


def _classic(cfg: EvaluateConfig, seed: int):
    return classic_transform(cfg.classic, seed=mix_seed(seed, 0xC1A5))


def _run(cfg: EvaluateConfig, out: Path, tasks: list[str], parts: dict, shapes: Shapes, origin: dict, rare: int,
         syn, started: float, echo, classes: dict[int, str]) -> Path:
    (out / "runs").mkdir(parents=True, exist_ok=True)
    save_json(cfg, out / "config.json")
    rows = []
    for task in tasks:
        task_cfg = cfg.segmentation if task == "segmentation" else cfg.classification
        for arm in [*cfg.arms, *cfg.recipes]:
            for seed in cfg.seeds:
                path = out / "runs" / f"{task}__{arm.replace('+', '_')}__seed{seed}.json"
                if path.is_file():
                    result = _result(path)
                    if arm in cfg.recipes and result.get("recipe") != cfg.recipes[arm].model_dump(mode="json"):
                        raise DataError(f"result file `{path}` was trained with other settings of recipe `{arm}`; "
                                        "rename the recipe, or delete the file to train it again")
                else:
                    if arm in cfg.recipes:
                        with stage(f"evaluate {task} {arm} seed {seed}"):
                            result = _train_recipe(cfg, out, task, arm, seed, parts, shapes, classes, echo)
                    else:
                        if arm in SHARED_ARMS:
                            train = parts["real"]
                        elif arm == "synthetic":
                            train = parts["synthetic"]
                        else:
                            train = _concat(parts["real"], parts["synthetic"])
                        augment = _classic(cfg, seed) if arm.endswith("classic") else None
                        with stage(f"evaluate {task} {arm} seed {seed}"):
                            result = train_arm(task, train, parts["val"], parts["test"], task_cfg, shapes, seed, augment)
                    result.update(task=task, arm=arm, seed=seed, budget=origin["budget"], generator=origin["generator"])
                    write_json(result, path)
                    echo(f"{task:14s} {arm:24s} seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in result["metrics"].items()))
                missing = [m for m in TASKS[task].reported if m not in result["metrics"]]
                if missing:
                    raise DataError(f"result file `{path}` lacks metric `{missing[0]}`; delete it to train that arm again")
                for metric in TASKS[task].reported:
                    rows.append({"task": task, "budget": origin["budget"], "generator": origin["generator"], "arm": arm,
                                 "seed": seed, "metric": metric, "value": result["metrics"][metric]})
    results = pd.DataFrame(rows)
    with atomic_path(out / "results.csv") as tmp:
        results.to_csv(tmp, index=False)
    write_json(run_record("evaluate", cfg.model_dump(mode="json"), started, **origin,
                rare_class=rare, checkpoint_rule={t: (cfg.segmentation if t == "segmentation" else cfg.classification).selection for t in tasks},
                n_test=len(parts["test"]), n_val=len(parts["val"]), n_real=len(parts["real"]),
                n_synthetic=len(parts["synthetic"]) if syn is not None else 0, real_ids=parts["real"].ids,
                recipes={n: r.model_dump(mode="json") for n, r in cfg.recipes.items()}), out / "run.json")
    return out


def _subset(split: Split, idx: np.ndarray) -> Split:
    out = copy.copy(split)
    out.ids = [split.ids[i] for i in idx]
    out.images, out.labels = split.images[idx], split.labels[idx]
    out.masks = None if split.masks is None else split.masks[idx]
    return out


def _cached(path: Path, compute) -> pd.DataFrame:
    """A filter's scores: read from ``path`` when an earlier run wrote them, else computed and
    written atomically (a half-written cache never exists)."""
    if path.is_file():
        try:
            return read_csv(path, "filter scores")
        except DataError:
            raise DataError(f"filter scores `{path}` are corrupt; delete the file to compute them again") from None
    frame = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return frame


def _filter_scores(cfg: EvaluateConfig, out: Path, kind: str, seed: int, parts: dict, shapes: Shapes) -> pd.DataFrame:
    """Per-pair scores of one filter for one seed (cached in ``EVAL/filters/``)."""
    from augment.plausibility import fit_scorer
    from augment.recipes import segmenter_scores

    real, syn = parts["real"], parts["synthetic"]
    if kind == "segmenter":
        def compute():
            fitted = fit_split("segmentation", real, parts["val"], cfg.segmentation, shapes, seed, _classic(cfg, seed))
            x, m, _ = syn.tensors()
            return segmenter_scores(fitted.model, x, m).assign(id=syn.ids)
    else:
        def compute():
            x_real, x_syn = real.tensors()[0], syn.tensors()[0]
            scorer = fit_scorer(x_real, cfg.scorer, seed)  # real images: out-of-fold scores
            return pd.concat([pd.DataFrame({"kind": "real", "id": real.ids, "score": scorer.own}),
                              pd.DataFrame({"kind": "synthetic", "id": syn.ids, "score": scorer.score(x_syn)})], ignore_index=True)
    frame = _cached(out / "filters" / f"{kind}__seed{seed}.csv", compute)
    ids = frame["id"].astype(str).tolist() if kind == "segmenter" else frame.loc[frame["kind"] == "synthetic", "id"].astype(str).tolist()
    if ids != [str(i) for i in syn.ids]:
        raise DataError(f"filter scores `{out / 'filters' / f'{kind}__seed{seed}.csv'}` are for another synthetic set; delete the file")
    return frame


def _train_recipe(cfg: EvaluateConfig, out: Path, task: str, name: str, seed: int, parts: dict, shapes: Shapes,
                  classes: dict[int, str], echo) -> dict:
    """One recipe for one seed: filter, take, mix, train, test (see :mod:`augment.recipes`)."""
    from augment.recipes import reconstruction_keep, schedule, segmenter_keep, take

    recipe = cfg.recipes[name]
    real, syn = parts["real"], parts["synthetic"]
    keep, records = np.ones(len(syn), bool), []
    for kind in recipe.filters:
        scores = _filter_scores(cfg, out, kind, seed, parts, shapes)
        if kind == "segmenter":
            kept, record = segmenter_keep(scores, recipe.filter_drop)
        else:
            kept, record = reconstruction_keep(scores.loc[scores["kind"] == "real", "score"].to_numpy(),
                                               scores.loc[scores["kind"] == "synthetic", "score"].to_numpy(), recipe.filter_percentile)
        record["dropped_of_remaining"] = int((keep & ~kept).sum())
        keep &= kept
        records.append(record)
    counts = {int(c): int(n) for c, n in zip(*np.unique(real.labels, return_counts=True))}
    idx, used = take(syn.labels, keep, counts, recipe.balance, classes)
    chosen = _subset(syn, idx)
    train = _concat(real, chosen)
    task_cfg = cfg.segmentation if task == "segmentation" else cfg.classification
    if recipe.selection is not None:
        task_cfg = task_cfg.model_copy(update={"selection": recipe.selection})
    batches = schedule(recipe, len(real), len(chosen), task_cfg.batch_size, task_cfg.steps, seed)
    weights = None
    if recipe.synthetic_weight != 1.0:
        weights = np.concatenate([np.ones(len(real)), np.full(len(chosen), recipe.synthetic_weight)])
    augment = _classic(cfg, seed) if recipe.classic else None
    result = train_arm(task, train, parts["val"], parts["test"], task_cfg, shapes, seed, augment, batches, weights)
    for r in records:
        echo(f"{task:14s} {name:24s} seed {seed}: filter {r['filter']} dropped {r['dropped']} of {r['judged']} ({r['why']})")
    return {**result, "recipe": recipe.model_dump(mode="json"), "n_synthetic": len(chosen), "synthetic_per_class": used,
            "filters": records}


def _fixed(cfg: EvaluateConfig) -> dict:
    """What must not change when an evaluation folder is resumed (arms, seeds and recipes may
    grow; a recipe kept under its name must keep its settings)."""
    d = cfg.model_dump(mode="json")
    for key in ("arms", "seeds", "out", "recipes"):
        d.pop(key)
    return d
