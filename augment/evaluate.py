"""Downstream evaluation: does synthetic data help a task model on untouched real test data?

For one synthetic set (made from a generator trained on a label budget), train the same task
model on each arm, with each seed, and test on the real test split:

* ``real``: the budget subset the generator was trained on;
* ``real+classic``: the same, with classic paired augmentation (albumentations);
* ``real+synthetic``: the budget subset plus the synthetic pairs;
* ``real+synthetic+classic``: both;
* ``synthetic``: the synthetic pairs alone (a reference, not a recipe).

Model selection uses the real val split (never seen by the generator); the checkpoint rule is
recorded (``best_val`` by default; ``last`` inflates the classic gain, see DESIGN.md).
Segmentation: MONAI UNet, Dice + CE; Dice over test images with a lesion, false-positive rate over
test images whose mask is empty. Classification: SmallCNN, class-weighted CE; balanced accuracy,
macro-F1, recall of the rarest class, macro one-vs-rest AUROC. Each (task, arm, seed) result is
its own JSON file, so an interrupted evaluation resumes where it stopped.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import Field

from augment.classic import ClassicConfig, classic_transform
from augment.config import Strict, save_json
from augment.data.dataset import to_tensor
from augment.data.images import read_image, read_mask
from augment.data.manifest import load_data
from augment.data.splits import select_budget
from augment.downstream import SmallCNN, dice_per_image, predict_masks, segmenter
from augment.errors import DataError
from augment.runinfo import write_json
from augment.seeding import mix_seed

ARMS = ("real", "real+classic", "real+synthetic", "real+synthetic+classic", "synthetic")
Arm = Literal["real", "real+classic", "real+synthetic", "real+synthetic+classic", "synthetic"]


class TaskConfig(Strict):
    steps: int = Field(600, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0)
    eval_every: int = Field(50, ge=1, description="steps between val checks")
    selection: Literal["best_val", "last"] = "best_val"
    base_channels: int = Field(16, ge=4)


class EvaluateConfig(Strict):
    data: Path
    synthetic: Path
    out: Path
    task: Literal["segmentation", "classification", "both"] = "segmentation"
    arms: list[Arm] = Field(default_factory=lambda: list(ARMS))
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    segmentation: TaskConfig = Field(default_factory=TaskConfig)
    classification: TaskConfig = Field(default_factory=lambda: TaskConfig(steps=400, batch_size=32))
    classic: ClassicConfig = Field(default_factory=ClassicConfig)


class Split:
    """Pixels of a manifest subset: images uint8 (N, H, W[, C]), masks uint8 (N, H, W) or None, labels (N,)."""

    def __init__(self, df: pd.DataFrame, root: Path, masks: bool) -> None:
        self.ids = df["id"].tolist()
        self.images = np.stack([read_image(root / p) for p in df["image"]]) if len(df) else np.zeros((0, 1, 1), np.uint8)
        self.masks = np.stack([read_mask(root / p) for p in df["mask"]]) if masks and len(df) else None
        self.labels = df["label"].to_numpy().astype(np.int64)

    def __len__(self) -> int:
        return len(self.labels)


def _concat(a: Split, b: Split) -> Split:
    out = copy.copy(a)
    out.ids = a.ids + b.ids
    out.images = np.concatenate([a.images, b.images])
    out.masks = None if a.masks is None or b.masks is None else np.concatenate([a.masks, b.masks])
    out.labels = np.concatenate([a.labels, b.labels])
    return out


def _tensor_images(images: np.ndarray) -> torch.Tensor:
    return torch.stack([to_tensor(i) for i in images]) if len(images) else torch.zeros(0)


def _batch(split: Split, idx: np.ndarray, augment) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    images, masks = [], []
    for i in idx:
        image, mask = split.images[i], None if split.masks is None else split.masks[i]
        if augment is not None:
            image, mask = augment(image, mask)
        images.append(to_tensor(image))
        if mask is not None:
            masks.append(torch.from_numpy(np.ascontiguousarray(mask)).to(torch.int64))
    y = torch.from_numpy(split.labels[idx])
    return torch.stack(images), (torch.stack(masks) if masks else None), y


def _order(n: int, batch: int, steps: int, seed: int):
    """Seeded index batches, reshuffled every epoch; a pure function of (n, batch, steps, seed)."""
    out, epoch = [], 0
    while len(out) < steps:
        perm = np.random.default_rng(mix_seed(seed, epoch)).permutation(n)
        for s in range(0, n - min(batch, n) + 1, min(batch, n)):
            out.append(perm[s:s + min(batch, n)])
            if len(out) == steps:
                break
        epoch += 1
    return out


def seg_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Dice over images with a lesion; false-positive rate over images whose mask is empty."""
    lesion = target.flatten(1).gt(0).any(1)
    dice = dice_per_image(pred, target)
    fpr = pred[~lesion].flatten(1).gt(0).any(1).float().mean() if (~lesion).any() else torch.tensor(float("nan"))
    return {"dice": float(dice[lesion].mean()) if lesion.any() else float("nan"), "fpr": float(fpr),
            "dice_all": float(dice.mean())}


def cls_metrics(logits: torch.Tensor, labels: torch.Tensor, num_classes: int, rare: int) -> dict[str, float]:
    from torchmetrics.functional.classification import multiclass_auroc, multiclass_f1_score, multiclass_recall

    pred = logits.argmax(1)
    recall = multiclass_recall(pred, labels, num_classes, average=None)
    present = torch.bincount(labels, minlength=num_classes) > 0
    return {
        "balanced_accuracy": float(recall[present].mean()),
        "macro_f1": float(multiclass_f1_score(pred, labels, num_classes, average="macro")),
        "minority_recall": float(recall[rare]),
        "auroc": float(multiclass_auroc(logits.softmax(1), labels, num_classes, average="macro")),
    }


def train_arm(task: str, train: Split, val: Split, test: Split, cfg: TaskConfig, num_classes: int, mask_classes: int,
              rare: int, seed: int, augment) -> dict:
    """Train one task model on ``train``, select on ``val``, return test metrics and the record."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(mix_seed(seed, 0x7A5C))
        if task == "segmentation":
            from monai.losses import DiceCELoss

            model = segmenter(train.images.shape[-1] if train.images.ndim == 4 else 1, mask_classes, cfg.base_channels)
            loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        else:
            model = SmallCNN(train.images.shape[-1] if train.images.ndim == 4 else 1, num_classes, cfg.base_channels)
            counts = np.bincount(train.labels, minlength=num_classes).astype(np.float32)
            weight = torch.tensor(counts.sum() / np.maximum(counts, 1) / num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    val_x, test_x = _tensor_images(val.images), _tensor_images(test.images)

    def score(x: torch.Tensor, split: Split) -> tuple[float, dict]:
        model.eval()
        with torch.no_grad():
            if task == "segmentation":
                m = seg_metrics(predict_masks(model, x), torch.from_numpy(split.masks).to(torch.int64))
                return m["dice_all"], m
            logits = torch.cat([model(x[i:i + 128]) for i in range(0, len(x), 128)])
            m = cls_metrics(logits, torch.from_numpy(split.labels), num_classes, rare)
            return m["balanced_accuracy"], m

    best, best_state, best_step, t = -1.0, None, 0, time.time()
    for step, idx in enumerate(_order(len(train), cfg.batch_size, cfg.steps, seed), start=1):
        model.train()
        x, m, y = _batch(train, idx, augment)
        if task == "segmentation":
            loss = loss_fn(model(x), m.unsqueeze(1))
        else:
            loss = F.cross_entropy(model(x), y, weight=weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if cfg.selection == "best_val" and (step % cfg.eval_every == 0 or step == cfg.steps):
            value, _ = score(val_x, val)
            if value > best:
                best, best_state, best_step = value, copy.deepcopy(model.state_dict()), step
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_step = cfg.steps
    _, metrics = score(test_x, test)
    return {"metrics": metrics, "selected_step": best_step, "val_score": best, "n_train": len(train),
            "train_seconds": round(time.time() - t, 2)}


def evaluate(cfg: EvaluateConfig, echo=print) -> Path:
    """``augment evaluate``: every (task, arm, seed) on one synthetic set; writes
    ``EVAL/results.csv`` (one row per task, budget, arm, seed, metric) and ``EVAL/run.json``."""
    started = time.time()
    real, classes = load_data(cfg.data)
    syn, syn_classes = load_data(cfg.synthetic)
    if syn_classes != classes:
        raise DataError(f"`{cfg.synthetic}` and `{cfg.data}` have different classes.csv")
    run = json.loads((Path(cfg.synthetic) / "run.json").read_text()) if (Path(cfg.synthetic) / "run.json").is_file() else None
    if run is None:
        raise DataError(f"`{cfg.synthetic}` has no run.json: evaluate needs a synthetic set made by `augment sample`")
    gen_cfg = json.loads((Path(run["generator_run"]) / "config.json").read_text())
    budget, gen_seed = gen_cfg["budget"], gen_cfg["seed"]
    budget_df = select_budget(real, budget, gen_seed)
    tasks = ["segmentation", "classification"] if cfg.task == "both" else [cfg.task]
    has_masks = bool((real["mask"] != "").all())
    if "segmentation" in tasks and not has_masks:
        raise DataError(f"`{cfg.data}` has images without masks; use --task classification")
    root, syn_root = Path(cfg.data), Path(cfg.synthetic)
    parts = {
        "real": Split(budget_df, root, has_masks),
        "synthetic": Split(syn, syn_root, has_masks),
        "val": Split(real[real["split"] == "val"], root, has_masks),
        "test": Split(real[real["split"] == "test"], root, has_masks),
    }
    if not len(parts["val"]) or not len(parts["test"]):
        raise DataError(f"`{cfg.data}` needs non-empty val and test splits for a downstream evaluation")
    num_classes = max(classes) + 1
    mask_classes = max(2, int(max(parts["real"].masks.max(), parts["synthetic"].masks.max())) + 1) if has_masks else 2
    counts = np.bincount(parts["real"].labels, minlength=num_classes)
    rare = int(np.argmin(np.where(counts > 0, counts, np.iinfo(np.int64).max)))

    out = Path(cfg.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    save_json(cfg, out / "config.json")
    rows = []
    for task in tasks:
        task_cfg = cfg.segmentation if task == "segmentation" else cfg.classification
        for arm in cfg.arms:
            for seed in cfg.seeds:
                path = out / "runs" / f"{task}__{arm.replace('+', '_')}__seed{seed}.json"
                if path.is_file():
                    result = json.loads(path.read_text())
                else:
                    if arm in ("real", "real+classic"):
                        train = parts["real"]
                    elif arm == "synthetic":
                        train = parts["synthetic"]
                    else:
                        train = _concat(parts["real"], parts["synthetic"])
                    augment = classic_transform(cfg.classic, seed=mix_seed(seed, 0xC1A5)) if arm.endswith("classic") else None
                    result = train_arm(task, train, parts["val"], parts["test"], task_cfg, num_classes, mask_classes, rare, seed, augment)
                    result.update(task=task, arm=arm, seed=seed, budget=budget)
                    write_json(result, path)
                    echo(f"{task:14s} {arm:24s} seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in result["metrics"].items()))
                for metric, value in result["metrics"].items():
                    if metric == "dice_all":
                        continue
                    rows.append({"task": task, "budget": budget, "arm": arm, "seed": seed, "metric": metric, "value": value})
    results = pd.DataFrame(rows)
    results.to_csv(out / "results.csv", index=False)
    write_json({"stage": "evaluate", "config": cfg.model_dump(mode="json"), "budget": budget, "generator_seed": gen_seed,
                "rare_class": rare, "checkpoint_rule": {t: (cfg.segmentation if t == "segmentation" else cfg.classification).selection for t in tasks},
                "n_test": len(parts["test"]), "n_val": len(parts["val"]), "n_real": len(parts["real"]),
                "n_synthetic": len(parts["synthetic"]), "wall_seconds": round(time.time() - started, 2)}, out / "run.json")
    return out
