"""Downstream evaluation: does synthetic data help a task model on untouched real test data?

For one synthetic set (made from a generator trained on a label budget), or for a label budget
alone (the generator-independent arms, shared by every generator in a pipeline), train the same
task model (:mod:`augment.downstream`) on each arm, with each seed, and test on the real test split:

* ``real``: the budget subset the generator was trained on;
* ``real+classic``: the same, with classic paired augmentation (albumentations);
* ``real+copypaste+classic`` (asked for by name): the same, with real lesions pasted into other
  budget images (:mod:`augment.copypaste`), the baseline a generator must beat;
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

What the numbers rest on is checked before anything is written (:func:`_inputs`): the real
training rows hold no val/test image (the check ``augment train`` runs), no synthetic image or
mask is a val/test image (file bytes or decoded pixels), and a synthetic set has pairs. The
inputs' content hashes go to ``EVAL/inputs.json``: a resumed evaluation whose data or synthetic
set changed since is refused, and filter scores are cached under a key of them. A task model
that diverges stops the run naming the arm, seed and step; a metric the test split cannot
define is None with its reason (``undefined``) and has no row in ``results.csv``.

The selected checkpoint is scored on the val split too: ``val_results.csv`` (same columns) is
what a pipeline picks its recipe by (:func:`augment.verdicts.select_on_validation`), in its own
file so that the pick cannot read a test score.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, field_validator, model_validator

from augment.classic import ClassicConfig, classic_transform
from augment.config import Seed, Strict, load_json, save_json
from augment.data.guard import assert_no_heldout, check_near_duplicates, check_trained_on, read_heldout
from augment.data.images import sha256_file
from augment.data.manifest import load_data, load_synthetic, read_manifest
from augment.data.splits import select_budget
from augment.downstream import TASKS, Diverged, Shapes, Split, TaskConfig, concat, finite, fit_split, subset, score_split
from augment.errors import AugmentError, ConfigError, DataError
from augment.lock import locked
from augment.output import atomic_path, discard, read_json, resumable_output
from augment.plausibility import ScorerConfig
from augment.progress import stage
from augment.copypaste import CopyPasteConfig
from augment.recipes import RecipeConfig
from augment.runinfo import run_record, write_json
from augment.seeding import mix_seed
from augment.verdicts import ARM_ORDER, COPYPASTE, SHARED_ARMS  # the arms, and those without synthetic data (shared by every generator)

ARMS = tuple(ARM_ORDER)
Arm = Literal["real", "real+classic", "real+copypaste+classic", "real+synthetic", "real+synthetic+classic", "synthetic"]
#: the arms trained unless a spec names others (copy-paste is asked for by name: it needs masks)
DEFAULT_ARMS = [a for a in ARMS if a != COPYPASTE]
NO_GENERATOR = "none"


class EvaluationSettings(Strict):
    """What an evaluation trains, shared by ``augment evaluate`` and a pipeline's ``evaluate:``."""

    task: Literal["segmentation", "classification", "both"] = "segmentation"
    arms: list[Arm] = Field(default_factory=lambda: list(DEFAULT_ARMS),
                            description="fixed arms (may be empty when recipes are given); real+copypaste+classic on request")
    segmentation: TaskConfig = Field(default_factory=TaskConfig)
    classification: TaskConfig = Field(default_factory=lambda: TaskConfig(steps=400, batch_size=32))
    classic: ClassicConfig = Field(default_factory=ClassicConfig)
    copypaste: CopyPasteConfig = Field(default_factory=CopyPasteConfig, description="the real+copypaste+classic arm (augment.copypaste)")
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
    budget_seed: Seed = Field(0, description="without --synthetic: which budget subset (the generator's seed)")
    generator_name: str | None = Field(None, description="the `generator` column (default: the synthetic set's family)")
    out: Path
    seeds: list[Seed] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    allow_near_duplicates: bool = Field(False, description="evaluate a synthetic set holding near-copies of val/test images "
                                        "anyway (augment.data.guard.check_near_duplicates; exact copies are always refused)")

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


def train_arm(task: str, train: Split, val: Split, test: Split, cfg: TaskConfig, shapes: Shapes, seed: int, augment,
              batches: list[np.ndarray] | None = None, weights: np.ndarray | None = None, names: dict[int, str] | None = None) -> dict:
    """Train one task model on ``train`` (:func:`fit_split`), return test metrics and the record;
    a metric the test split cannot define is None, its reason in ``undefined``. ``val_metrics``
    are the same scores of the same checkpoint on the val split (what a pipeline picks its
    recipe by, before it reads any test score; ``val_undefined`` their reasons)."""
    fitted = fit_split(task, train, val, cfg, shapes, seed, augment, batches, weights)
    metrics, undefined = score_split(task, fitted.model, shapes, test, names)
    val_metrics, val_undefined = score_split(task, fitted.model, shapes, val, names)
    return {"metrics": metrics, "undefined": undefined, "val_metrics": val_metrics, "val_undefined": val_undefined,
            "selected_step": fitted.selected_step, "val_score": fitted.val_score,
            "n_train": len(train), "train_seconds": round(fitted.seconds, 2)}


def _sources(cfg: EvaluateConfig, real: pd.DataFrame, classes: dict[int, str]) -> tuple[pd.DataFrame, pd.DataFrame | None, dict]:
    """The real training rows (the generator's own, or a budget subset), the synthetic rows and
    what the record says about where they came from."""
    from augment.runs import read_run, read_synthetic_record

    needs = [a for a in cfg.arms if a not in SHARED_ARMS] + list(cfg.recipes)
    if cfg.synthetic is None:
        if needs:
            raise ConfigError(f"evaluate: arm `{needs[0]}` needs --synthetic (without it: {', '.join(SHARED_ARMS)})")
        rows = select_budget(real, cfg.budget, cfg.budget_seed)
        # Without --budget the whole train split is the budget: the results' budget column says how many.
        return rows, None, {"budget": len(rows) if cfg.budget is None else cfg.budget, "generator_seed": cfg.budget_seed,
                            "generator": cfg.generator_name or NO_GENERATOR}
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
    task, budget, generator, arm, seed, metric; test scores), ``EVAL/val_results.csv`` (the same
    checkpoints' val scores) and ``EVAL/run.json``. Finished (task, arm, seed)
    results in ``EVAL/runs/`` are reused, so an interrupted evaluation resumes."""
    started = time.time()
    real, classes = load_data(cfg.data)
    real_rows, syn, origin = _sources(cfg, real, classes)
    tasks = ["segmentation", "classification"] if cfg.task == "both" else [cfg.task]
    has_masks = bool((real["mask"] != "").all())
    if "segmentation" in tasks and not has_masks:
        raise DataError(f"`{cfg.data}` has images without masks; use --task classification")
    if COPYPASTE in cfg.arms and not has_masks:
        raise ConfigError(f"evaluate: arm `{COPYPASTE}` pastes lesions by their masks; `{cfg.data}` has images without masks")
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
    inputs = _inputs(cfg, real, real_rows, syn, parts)
    num_classes = max(classes) + 1
    highest = max(int(p.masks.max()) for p in parts.values() if p.masks is not None and len(p)) if has_masks else 0
    counts = np.bincount(parts["real"].labels, minlength=num_classes)
    rare = int(np.argmin(np.where(counts > 0, counts, np.iinfo(np.int64).max)))
    channels = parts["real"].images.shape[-1] if parts["real"].images.ndim == 4 else 1
    shapes = Shapes(channels, num_classes, max(2, highest + 1), rare, tuple(sorted(classes)))

    out = Path(cfg.out)
    existed, fresh = out.exists(), _check_out(out, cfg, inputs)
    try:
        return _run(cfg, out, tasks, parts, shapes, origin, rare, syn, started, echo, classes, inputs, fresh)
    except AugmentError:
        if fresh:
            discard(out, existed)  # a run that failed on its own input leaves nothing
        raise


def _digest(items) -> str:
    return hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()


def _inputs(cfg: EvaluateConfig, real: pd.DataFrame, real_rows: pd.DataFrame, syn: pd.DataFrame | None, parts: dict) -> dict:
    """Refuse val/test images among what the task models train on, and return what the
    evaluation is made from: ``{"data": {"path", "sha256"}, "synthetic": ...}`` (content hashes
    of the real training rows, the val/test rows and every synthetic pair, from disk).

    The real training rows get the check ``augment train`` runs
    (:func:`augment.data.guard.assert_no_heldout`: file bytes and decoded pixels against every
    val/test image). Every synthetic image and mask is compared the same way, so a set whose
    files were swapped for val/test images, or whose rows point at them, is refused by pair;
    then its images go through :func:`augment.data.guard.check_near_duplicates`."""
    root = Path(cfg.data)
    heldout = read_heldout(real, root)  # read once: the real rows' check and the synthetic pairs' use it
    trained = assert_no_heldout(real_rows, real, root, heldout)
    rows = [(r, sha) for r, sha in zip(real_rows.itertuples(), (t["sha256"] for t in trained))]
    rows += [(r, heldout.file_sha256[r.id]) for r in real[real["split"].isin(["val", "test"])].itertuples()]
    data = [[r.id, r.split, int(r.label), sha, sha256_file(root / r.mask) if r.mask else ""] for r, sha in rows]
    out = {"data": {"path": str(root), "sha256": _digest(data)}}
    if syn is None:
        return out
    syn_dir, split, pairs = Path(cfg.synthetic), parts["synthetic"], []
    masks = split.masks if split.masks is not None else [None] * len(split)
    for r, image, mask in zip(syn.itertuples(), split.images, masks):
        shas = []
        for what, rel, pixels in (("image", r.image, image), ("mask", r.mask, mask)):
            shas.append(sha256_file(syn_dir / rel) if rel else "")
            hit = heldout.copy_of(shas[-1], pixels)
            if hit is not None:
                raise DataError(f"synthetic pair {r.id}: its {what} is {hit[2]}-identical to {hit[1]} image {hit[0]} of `{root}`; a "
                                f"synthetic set must never hold val or test images (`{syn_dir}`: sample it again)")
        pairs.append([r.id, int(r.label), *shas])
    check_near_duplicates(zip(split.ids, split.images), heldout.images, "synthetic", cfg.allow_near_duplicates,
                          "`--set allow_near_duplicates=true`")
    out["synthetic"] = {"path": str(syn_dir), "sha256": _digest(pairs)}
    return out


def _check_inputs(out: Path, inputs: dict) -> None:
    """A resumed evaluation must be made from the same data and synthetic set (by content)."""
    path = out / "inputs.json"
    if not path.is_file():
        if any((out / "runs").glob("*.json")) or any((out / "filters").glob("*")):
            raise DataError(f"`{out}` does not record which data and synthetic set its results were made from "
                            "(no inputs.json: an older version made it); choose another --out")
        return  # stopped before it wrote inputs.json: nothing in it was made from other inputs
    saved = read_json(path, "evaluation inputs")
    for key, what in (("data", "data"), ("synthetic", "synthetic set")):
        old, new = saved.get(key), inputs.get(key)
        if not (old is None or isinstance(old, dict) and isinstance(old.get("sha256"), str)):
            raise DataError(f"`{path}` is not an evaluation's inputs record (corrupt); choose another --out")
        if (old or {}).get("sha256") != (new or {}).get("sha256"):
            raise DataError(f"`{out}` was made from {what} `{(old or new)['path']}` with sha256 {(old or {}).get('sha256', 'none')[:12]}; "
                            f"it now holds {(new or {}).get('sha256', 'none')[:12]}; choose another --out")


def _check_out(out: Path, cfg: EvaluateConfig, inputs: dict) -> bool:
    """Refuse an output that holds anything but an evaluation with the same fixed settings and
    inputs; True when ``out`` is new (absent or empty)."""
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
    _check_inputs(out, inputs)
    return False


def _result(path: Path) -> dict:
    """A finished (task, arm, seed) result from ``EVAL/runs/``; a corrupt one is named."""
    try:
        result = read_json(path, "result file")
    except DataError as exc:
        raise DataError(f"{exc}; delete it to train that arm again") from None
    for key, why in (("metrics", "undefined"), ("val_metrics", "val_undefined")):
        metrics, undefined = result.get(key), result.get(why, {})
        if key == "val_metrics" and metrics is None:
            continue  # a result from before val scores were kept: its arm has no val rows
        if not isinstance(metrics, dict) or not isinstance(undefined, dict) or not all(
                (v is None and k in undefined) or finite(v) for k, v in metrics.items()):
            raise DataError(f"result file `{path}` has no {'val ' if key == 'val_metrics' else ''}metrics (corrupt or "
                            "from another tool); delete it to train that arm again")
    return result


def _checked(result: dict, where: str, setting: str) -> dict:
    """A new result, before it is written: every metric finite or undefined with a reason."""
    undefined, val = result.get("undefined", {}), result.get("val_score")
    bad = [(f"test metric {k}", v) for k, v in result["metrics"].items() if not (finite(v) or (v is None and k in undefined))]
    bad += [(f"val metric {k}", v) for k, v in result["val_metrics"].items()
            if not (finite(v) or (v is None and k in result["val_undefined"]))]
    bad += [] if val is None or finite(val) else [("the val score", val)]
    if bad:
        raise DataError(f"{where}: {bad[0][0]} is {bad[0][1]} although the data define it; nothing was written "
                        f"(a model that diverged? lower {setting})")
    return result


#: the columns of ``results.csv`` (test scores) and ``val_results.csv`` (val scores of the same checkpoints)
RESULT_COLUMNS = ["task", "budget", "generator", "arm", "seed", "metric", "value"]


def _show(v) -> str:
    return "undefined" if v is None else f"{v:.3f}"


def _classic(cfg: EvaluateConfig, seed: int):
    return classic_transform(cfg.classic, seed=mix_seed(seed, 0xC1A5))


def _run(cfg: EvaluateConfig, out: Path, tasks: list[str], parts: dict, shapes: Shapes, origin: dict, rare: int,
         syn, started: float, echo, classes: dict[int, str], inputs: dict, fresh: bool) -> Path:
    (out / "runs").mkdir(parents=True, exist_ok=True)
    if fresh or not (out / "config.json").is_file():
        save_json(cfg, out / "config.json")  # the marker first; a resumed folder's config is updated at the end
    if not (out / "inputs.json").is_file():
        write_json(inputs, out / "inputs.json")
    rows = []
    for task in tasks:
        task_cfg = cfg.segmentation if task == "segmentation" else cfg.classification
        for arm in [*cfg.arms, *cfg.recipes]:
            for seed in cfg.seeds:
                path = out / "runs" / f"{task}__{arm.replace('+', '_')}__seed{seed}.json"
                where = f"{task} {'recipe' if arm in cfg.recipes else 'arm'} `{arm}` seed {seed}"
                weighted = arm in cfg.recipes and cfg.recipes[arm].synthetic_weight != 1.0
                setting = f"{task}.lr" + (f" or recipes.{arm}.synthetic_weight" if weighted else "")
                if path.is_file():
                    result = _result(path)
                    if arm in cfg.recipes and result.get("recipe") != cfg.recipes[arm].model_dump(mode="json"):
                        raise DataError(f"result file `{path}` was trained with other settings of recipe `{arm}`; "
                                        "rename the recipe, or delete the file to train it again")
                else:
                    try:
                        with stage(f"evaluate {task} {arm} seed {seed}"):
                            result = _train(cfg, out, task, task_cfg, arm, seed, parts, shapes, classes, inputs, echo)
                    except Diverged as exc:
                        raise Diverged(f"{where}: {exc}; lower {exc.setting or setting}", exc.step, exc.setting) from None
                    result.update(task=task, arm=arm, seed=seed, budget=origin["budget"], generator=origin["generator"])
                    write_json(_checked(result, where, setting), path)
                    echo(f"{task:14s} {arm:24s} seed {seed}: " + ", ".join(f"{k} {_show(v)}" for k, v in result["metrics"].items()))
                missing = [m for m in TASKS[task].reported if m not in result["metrics"]]
                if missing:
                    raise DataError(f"result file `{path}` lacks metric `{missing[0]}`; delete it to train that arm again")
                for metric in TASKS[task].reported:
                    for split, scores in (("test", result["metrics"]), ("val", result.get("val_metrics") or {})):
                        if scores.get(metric) is not None:  # undefined on this split: no row (never NaN)
                            rows.append({"split": split, "task": task, "budget": origin["budget"], "generator": origin["generator"],
                                         "arm": arm, "seed": seed, "metric": metric, "value": scores[metric]})
    # test and val scores go to two files, so that whatever picks a recipe on val cannot read test
    every = pd.DataFrame(rows, columns=["split", *RESULT_COLUMNS])
    for split, name in (("test", "results.csv"), ("val", "val_results.csv")):
        with atomic_path(out / name) as tmp:
            every[every["split"] == split][RESULT_COLUMNS].to_csv(tmp, index=False)
    if not fresh:
        save_json(cfg, out / "config.json")
    write_json(run_record("evaluate", cfg.model_dump(mode="json"), started, **origin,
                rare_class=rare, checkpoint_rule={t: (cfg.segmentation if t == "segmentation" else cfg.classification).selection for t in tasks},
                n_test=len(parts["test"]), n_val=len(parts["val"]), n_real=len(parts["real"]),
                n_synthetic=len(parts["synthetic"]) if syn is not None else 0, real_ids=parts["real"].ids,
                recipes={n: r.model_dump(mode="json") for n, r in cfg.recipes.items()}, inputs=inputs), out / "run.json")
    return out


def _train(cfg: EvaluateConfig, out: Path, task: str, task_cfg: TaskConfig, arm: str, seed: int, parts: dict, shapes: Shapes,
           classes: dict[int, str], inputs: dict, echo) -> dict:
    """One fixed arm or recipe for one seed, trained and tested."""
    if arm in cfg.recipes:
        return _train_recipe(cfg, out, task, arm, seed, parts, shapes, classes, inputs, echo)
    if arm == COPYPASTE:
        return _train_copypaste(cfg, out, task, task_cfg, seed, parts, shapes, classes)
    if arm in SHARED_ARMS:
        train = parts["real"]
    elif arm == "synthetic":
        train = parts["synthetic"]
    else:
        train = concat(parts["real"], parts["synthetic"])
    augment = _classic(cfg, seed) if arm.endswith("classic") else None
    return train_arm(task, train, parts["val"], parts["test"], task_cfg, shapes, seed, augment, names=classes)


def _train_copypaste(cfg: EvaluateConfig, out: Path, task: str, task_cfg: TaskConfig, seed: int, parts: dict, shapes: Shapes,
                     classes: dict[int, str]) -> dict:
    """The copy-paste arm for one seed: paste, mix as the frac50 recipe does, train, test."""
    from augment.copypaste import pasted
    from augment.recipes import schedule

    real = parts["real"]
    pairs, provenance = pasted(real, cfg.copypaste, mix_seed(seed, 0xC0B7))
    path = out / "copypaste" / f"seed{seed}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        provenance.to_csv(tmp, index=False)
    mix = RecipeConfig(mix="fraction", synthetic_fraction=cfg.copypaste.synthetic_fraction)
    batches = schedule(mix, len(real), len(pairs), task_cfg.batch_size, task_cfg.steps, seed)
    result = train_arm(task, concat(real, pairs), parts["val"], parts["test"], task_cfg, shapes, seed, _classic(cfg, seed),
                       batches, names=classes)
    return {**result, "n_synthetic": len(pairs), "copypaste": cfg.copypaste.model_dump(mode="json")}


def _filter_scores(cfg: EvaluateConfig, out: Path, kind: str, seed: int, parts: dict, shapes: Shapes, inputs: dict) -> pd.DataFrame:
    """Per-pair scores of one filter for one seed, cached in ``EVAL/filters/`` under a key of the
    inputs' content and the settings that made them."""
    from augment.plausibility import fit_scorer
    from augment.placement import region_boxes
    from augment.recipes import cached, segmenter_scores

    real, syn = parts["real"], parts["synthetic"]
    if kind == "segmenter":
        def compute():
            try:
                fitted = fit_split("segmentation", real, parts["val"], cfg.segmentation, shapes, seed, _classic(cfg, seed))
            except Diverged as exc:
                raise Diverged(f"its segmenter filter: {exc}", exc.step, "segmentation.lr") from None
            x, m, _ = syn.tensors()
            # an inpainted pair is judged inside its region: on its placed lesion, not its background's
            inside = torch.from_numpy(region_boxes(read_manifest(cfg.synthetic), tuple(m.shape[-2:])))
            return segmenter_scores(fitted.model, x, m, inside).assign(id=syn.ids)
    else:
        def compute():
            x_real, x_syn = real.tensors()[0], syn.tensors()[0]
            scorer = fit_scorer(x_real, cfg.scorer, seed)  # real images: out-of-fold scores
            return pd.concat([pd.DataFrame({"kind": "real", "id": real.ids, "score": scorer.own}),
                              pd.DataFrame({"kind": "synthetic", "id": syn.ids, "score": scorer.score(x_syn)})], ignore_index=True)
    settings = [cfg.segmentation, cfg.classic] if kind == "segmenter" else [cfg.scorer]
    key = _digest([{k: v["sha256"] for k, v in inputs.items()}, kind, seed, [s.model_dump(mode="json") for s in settings]])
    path = out / "filters" / f"{kind}__seed{seed}__{key[:16]}.csv"
    frame = cached(path, compute)
    ids = frame["id"].astype(str).tolist() if kind == "segmenter" else frame.loc[frame["kind"] == "synthetic", "id"].astype(str).tolist()
    if ids != [str(i) for i in syn.ids]:
        raise DataError(f"filter scores `{path}` are for another synthetic set; delete the file")
    return frame


def _train_recipe(cfg: EvaluateConfig, out: Path, task: str, name: str, seed: int, parts: dict, shapes: Shapes,
                  classes: dict[int, str], inputs: dict, echo) -> dict:
    """One recipe for one seed: filter, take, mix, train, test (see :mod:`augment.recipes`)."""
    from augment.recipes import apply_filters, schedule, take

    recipe = cfg.recipes[name]
    real, syn = parts["real"], parts["synthetic"]
    keep, records = apply_filters(recipe, lambda kind: _filter_scores(cfg, out, kind, seed, parts, shapes, inputs), len(syn))
    counts = {int(c): int(n) for c, n in zip(*np.unique(real.labels, return_counts=True))}
    idx, used = take(syn.labels, keep, counts, recipe.balance, classes)
    chosen = subset(syn, idx)
    train = concat(real, chosen)
    task_cfg = cfg.segmentation if task == "segmentation" else cfg.classification
    if recipe.selection is not None:
        task_cfg = task_cfg.model_copy(update={"selection": recipe.selection})
    batches = schedule(recipe, len(real), len(chosen), task_cfg.batch_size, task_cfg.steps, seed)
    weights = None
    if recipe.synthetic_weight != 1.0:
        weights = np.concatenate([np.ones(len(real)), np.full(len(chosen), recipe.synthetic_weight)])
    augment = _classic(cfg, seed) if recipe.classic else None
    result = train_arm(task, train, parts["val"], parts["test"], task_cfg, shapes, seed, augment, batches, weights, classes)
    for r in records:
        echo(f"{task:14s} {name:24s} seed {seed}: filter {r['filter']} dropped {r['dropped']} of {r['judged']} ({r['why']})")
    extra = {}
    if records and not keep.any():  # a finding, not an error (see augment.recipes)
        extra["note"] = (f"the filters kept none of the {len(syn)} synthetic pairs: trained on the real budget alone "
                         "(real+classic under this recipe's rule)")
        echo(f"{task:14s} {name:24s} seed {seed}: {extra['note']}")
    return {**result, "recipe": recipe.model_dump(mode="json"), "n_synthetic": len(chosen), "synthetic_per_class": used,
            "filters": records, **extra}


def _fixed(cfg: EvaluateConfig) -> dict:
    """What must not change when an evaluation folder is resumed (arms, seeds and recipes may
    grow; a recipe kept under its name must keep its settings)."""
    d = cfg.model_dump(mode="json")
    for key in ("arms", "seeds", "out", "recipes", "allow_near_duplicates"):
        d.pop(key)
    return d
