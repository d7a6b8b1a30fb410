"""Task models trained on real (and synthetic) pairs, through one small task registry and one
trainer: the evaluation arms and the audit's helper models all go through :func:`fit`.

* ``segmentation``: MONAI 2D UNet (four levels), Dice + cross-entropy (MONAI ``DiceCELoss``);
  scored by Dice over images with a lesion, the false-positive rate over images whose mask is
  empty, and Dice over all images (the val selection metric).
* ``classification``: :class:`SmallCNN`, class-weighted cross-entropy; scored by balanced
  accuracy (the selection metric), macro-F1, recall of the rarest class and macro AUROC.

Fixed step budgets, batches from one seeded epoch shuffler (:func:`epoch_batches`), no global
RNG. A loss or weights that stop being finite stop the run (:class:`Diverged`), and a score the
test split cannot define (:func:`undefined_metrics`: AUROC without every class, the recall of a
class without test images, Dice without a lesion image) is None, never a number.
:class:`Split` holds the pixels of manifest rows. Tensors: images (N, C, H, W) float32 in
[0, 1]; masks (N, H, W) int64; labels (N,) int64.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from augment.config import Strict, in_range
from augment.data.dataset import read_rows, to_tensor
from augment.errors import ConfigError, DataError
from augment.metrics import dice_per_image
from augment.progress import track
from augment.seeding import mix_seed

#: draw_batch(indices) -> (images, masks or None, labels) for one training step
BatchFn = Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]]


#: checkpoint rules (see :func:`selection_score`)
Selection = Literal["best_val", "best_val_dice_fpr", "last"]


#: a learning rate: above 1 AdamW diverges at once, below 1e-7 nothing is learnt in any step budget
LearningRate = in_range(1e-7, 1.0)


class TaskConfig(Strict):
    steps: int = Field(600, ge=1)
    batch_size: int = Field(16, ge=1, le=4096)
    lr: LearningRate = Field(1e-3, description="AdamW learning rate, in [1e-07, 1]")
    eval_every: int = Field(50, ge=1, description="steps between val checks")
    selection: Selection = Field(
        "best_val", description="checkpoint rule: best_val (the task's val score), best_val_dice_fpr (segmentation: "
        "best mean of val lesion Dice and 1 - val false-positive rate), last")
    base_channels: int = Field(16, ge=4)
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: the model runs under bfloat16 autocast in channels_last layout (the loss, the "
        "optimiser and the weights stay float32); about 1.3x faster per step on a CPU with AVX512-BF16")


class SmallCNN(nn.Module):
    """Four stride-2 conv stages, global average pooling, a linear head. ``features`` returns
    the pooled ``width * 8`` vector (the audit's feature space)."""

    def __init__(self, channels: int, num_classes: int, width: int = 16) -> None:
        super().__init__()
        layers, cin = [], channels
        for i in range(4):
            cout = width * 2**i
            layers += [nn.Conv2d(cin, cout, 3, 2, 1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                       nn.Conv2d(cout, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            cin = cout
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(cin, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def segmenter(channels: int, mask_classes: int, base: int = 16) -> nn.Module:
    """MONAI's 2D UNet with four levels."""
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=channels, out_channels=mask_classes,
                channels=(base, base * 2, base * 4, base * 8), strides=(2, 2, 2), num_res_units=1)


def epoch_batches(n: int, batch_size: int, steps: int, seed: int) -> list[np.ndarray]:
    """``steps`` index batches: seeded permutations of ``range(n)`` laid end to end, each epoch
    cut into full batches of ``min(batch_size, n)`` (a short tail is dropped). A pure function of
    its arguments: the one shuffler of every task model."""
    size = min(batch_size, n)
    out, epoch = [], 0
    while len(out) < steps:
        perm = np.random.default_rng(mix_seed(seed, epoch)).permutation(n)
        for s in range(0, n - size + 1, size):
            out.append(perm[s:s + size])
            if len(out) == steps:
                break
        epoch += 1
    return out


@torch.no_grad()
def predict_masks(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """(N, C, H, W) -> (N, H, W) int64 argmax predictions."""
    return torch.cat([model(images[i:i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])


def seg_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Dice over images with a lesion; false-positive rate over images whose mask is empty."""
    lesion = target.flatten(1).gt(0).any(1)
    dice = dice_per_image(pred, target)
    fpr = pred[~lesion].flatten(1).gt(0).any(1).float().mean() if (~lesion).any() else torch.tensor(float("nan"))
    return {"dice": float(dice[lesion].mean()) if lesion.any() else float("nan"), "fpr": float(fpr),
            "dice_all": float(dice.mean())}


def cls_metrics(logits: torch.Tensor, labels: torch.Tensor, num_classes: int, rare: int,
                classes: Sequence[int] | None = None) -> dict[str, float | None]:
    """Balanced accuracy and macro-F1; the recall of class ``rare``, None when no label is
    ``rare``; macro one-vs-rest AUROC over ``classes`` (default: all ``num_classes``), None unless
    every one of them has a label (as sklearn's ``roc_auc_score``, which refuses a class without
    positives: its AUROC is undefined, and counting it as 0 would drag the mean down)."""
    from torchmetrics.functional.classification import binary_auroc, multiclass_f1_score, multiclass_recall

    classes = list(range(num_classes)) if classes is None else [int(c) for c in classes]
    pred = logits.argmax(1)
    recall = multiclass_recall(pred, labels, num_classes, average=None)
    counts = torch.bincount(labels, minlength=num_classes)
    present = counts > 0
    auroc = None
    if all(counts[c] > 0 for c in classes):
        probs = logits.softmax(1)
        auroc = float(np.mean([float(binary_auroc(probs[:, c], (labels == c).long())) for c in classes]))
    return {
        "balanced_accuracy": float(recall[present].mean()),
        "macro_f1": float(multiclass_f1_score(pred, labels, num_classes, average="macro")),
        "minority_recall": float(recall[rare]) if present[rare] else None,
        "auroc": auroc,
    }


def undefined_metrics(task: str, masks: torch.Tensor | None, labels: torch.Tensor, shapes: Shapes,
                      names: dict[int, str]) -> dict[str, str]:
    """``{metric: why}`` for each reported metric a test split cannot define, whatever the model
    predicts: Dice without a lesion image, the false-positive rate without an empty mask, AUROC
    without an image of every class, the minority recall without an image of the rarest class."""
    why = {}
    if task == "segmentation":
        lesion = masks.flatten(1).gt(0).any(1)
        if not lesion.any():
            why["dice"] = "no test image has a lesion"
        if lesion.all():
            why["fpr"] = "every test image has a lesion (no empty mask to count false positives on)"
        return why
    counts = torch.bincount(labels, minlength=shapes.num_classes)
    absent = [c for c in sorted(names) if counts[c] == 0]
    if absent:
        listed = ", ".join(f"{c} ({names[c]})" for c in absent)
        why["auroc"] = f"class {listed} has no test images" if len(absent) == 1 else f"classes {listed} have no test images"
    if counts[shapes.rare] == 0:
        why["minority_recall"] = f"the rarest training class {shapes.rare} ({names.get(shapes.rare, '?')}) has no test images"
    return why


@dataclass(frozen=True)
class Shapes:
    """What a task model is built for: image channels, class labels, mask values, the rarest class."""

    channels: int
    num_classes: int
    mask_classes: int
    rare: int = 0
    classes: tuple[int, ...] = ()  # the labels classes.csv lists (default: 0 .. num_classes - 1)


@dataclass(frozen=True)
class Task:
    """One downstream task: how its model is built, its loss, its scores and which score picks
    the checkpoint on val. ``reported`` are the scores that go into results tables."""

    name: str
    build: Callable[[Shapes, int], nn.Module]
    loss: Callable[[Shapes, torch.Tensor], Callable[[nn.Module, torch.Tensor, torch.Tensor | None, torch.Tensor], torch.Tensor]]
    score: Callable[[nn.Module, Shapes, torch.Tensor, torch.Tensor | None, torch.Tensor], dict[str, float]]
    selection_metric: str
    reported: tuple[str, ...]
    needs_masks: bool


def _weighted(per_sample: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (per_sample * w).sum() / w.sum()


def _seg_loss(shapes: Shapes, train_labels: torch.Tensor):
    """DiceCE; with per-sample weights ``w`` the weighted mean of each image's Dice + CE (equal
    to MONAI's DiceCELoss when every weight is 1)."""
    from monai.losses import DiceCELoss, DiceLoss

    fn = DiceCELoss(to_onehot_y=True, softmax=True)
    dice = DiceLoss(to_onehot_y=True, softmax=True, reduction="none")

    def loss(model, x, m, y, w=None):
        logits = model(x)
        if w is None:
            return fn(logits, m.unsqueeze(1))
        per = dice(logits, m.unsqueeze(1)).flatten(1).mean(1) + F.cross_entropy(logits, m, reduction="none").mean((1, 2))
        return _weighted(per, w)

    return loss


def _cls_loss(shapes: Shapes, train_labels: torch.Tensor):
    """Class-weighted CE; per-sample weights ``w`` multiply the class weights."""
    counts = torch.bincount(train_labels, minlength=shapes.num_classes).float()
    weight = counts.sum() / counts.clamp(min=1) / shapes.num_classes

    def loss(model, x, m, y, w=None):
        if w is None:
            return F.cross_entropy(model(x), y, weight=weight)
        return _weighted(F.cross_entropy(model(x), y, reduction="none"), weight[y] * w)

    return loss


@torch.no_grad()
def _seg_score(model, shapes, x, m, y):
    return seg_metrics(predict_masks(model, x), m)


@torch.no_grad()
def _cls_score(model, shapes, x, m, y):
    logits = torch.cat([model(x[i:i + 128]) for i in range(0, len(x), 128)])
    return cls_metrics(logits, y, shapes.num_classes, shapes.rare, shapes.classes or None)


TASKS: dict[str, Task] = {
    "segmentation": Task("segmentation", lambda s, w: segmenter(s.channels, s.mask_classes, w), _seg_loss, _seg_score,
                         "dice_all", ("dice", "fpr"), True),
    "classification": Task("classification", lambda s, w: SmallCNN(s.channels, s.num_classes, w), _cls_loss, _cls_score,
                           "balanced_accuracy", ("balanced_accuracy", "macro_f1", "minority_recall", "auroc"), False),
}


class _Bf16(nn.Module):
    """``inner`` run under bfloat16 autocast in channels_last layout, its output cast back to
    float32 so the loss and the scores are computed as in float32."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return self.inner(x).float()


class Diverged(DataError):
    """A task model's loss, or its weights after a step, stopped being finite at ``step``;
    ``setting`` names the setting to lower when the caller knows it."""

    def __init__(self, message: str, step: int, setting: str | None = None) -> None:
        super().__init__(message)
        self.step, self.setting = step, setting


def _finite(params: list[torch.Tensor]) -> bool:
    return bool(torch.stack([torch.isfinite(p).all() for p in params]).all())


@dataclass
class Fitted:
    model: nn.Module  # in eval mode, with the selected checkpoint's weights
    selected_step: int
    val_score: float | None
    seconds: float


def selection_score(task: Task, rule: str, metrics: dict[str, float]) -> float:
    """The val score a checkpoint rule maximises: ``task.selection_metric`` for ``best_val``;
    for ``best_val_dice_fpr`` the mean of lesion Dice and 1 - false-positive rate (either alone
    when val has no lesion image or no empty one)."""
    if rule != "best_val_dice_fpr":
        return metrics[task.selection_metric]
    parts = [v for v in (metrics["dice"], 1.0 - metrics["fpr"]) if not np.isnan(v)]
    return float(np.mean(parts)) if parts else float("nan")


def fit(task: Task, shapes: Shapes, draw_batch: BatchFn, n: int, train_labels: torch.Tensor, cfg: TaskConfig, seed: int,
        val: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor] | None = None, batches: list[np.ndarray] | None = None,
        weights: np.ndarray | None = None) -> Fitted:
    """Train ``task``'s model for ``cfg.steps`` AdamW steps on ``n`` examples drawn by
    ``draw_batch`` (batches from :func:`epoch_batches`, or the given ``batches`` schedule, one
    index array per step); ``weights`` (one per example) weight each example's loss. With
    ``val`` and a ``best_val*`` rule keep the checkpoint with the best val score
    (:func:`selection_score`, checked every ``eval_every`` steps and at the end), otherwise the
    last one. A loss, or weights after a step, that are not finite raise :class:`Diverged`
    naming the step (callers add which model it was and the setting to lower)."""
    t = time.time()
    if cfg.selection == "best_val_dice_fpr" and "fpr" not in task.reported:
        raise ConfigError(f"selection best_val_dice_fpr counts false positives of a segmenter; task {task.name} has none "
                         "(use best_val or last)")
    batches = epoch_batches(n, cfg.batch_size, cfg.steps, seed) if batches is None else batches
    if len(batches) != cfg.steps:
        raise ValueError(f"a batch schedule of {len(batches)} steps for a {cfg.steps}-step run")
    with torch.random.fork_rng(devices=[]):  # seeded init, the caller's RNG untouched
        torch.manual_seed(mix_seed(seed, 0x7A5C))
        model = task.build(shapes, cfg.base_channels)
    run = _Bf16(model) if cfg.precision == "bf16" else model
    loss_fn = task.loss(shapes, train_labels)
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    select = val is not None and cfg.selection != "last"
    best, best_state, best_step = -np.inf, None, cfg.steps
    for step, idx in enumerate(track(batches, len(batches), "train", "steps"), start=1):
        run.train()
        x, m, y = draw_batch(idx)
        w = None if weights is None else torch.as_tensor(weights[idx], dtype=torch.float32)
        loss = loss_fn(run, x, m, y, w)
        if not torch.isfinite(loss):
            raise Diverged(f"the loss is {loss.item()} at step {step} of {cfg.steps}", step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if not _finite(params):
            raise Diverged(f"the weights are not finite after step {step} of {cfg.steps} (the loss was {loss.item():.4g})", step)
        if select and (step % cfg.eval_every == 0 or step == cfg.steps):
            run.eval()
            value = selection_score(task, cfg.selection, task.score(run, shapes, *val))
            if value > best:
                best, best_state, best_step = value, copy.deepcopy(model.state_dict()), step
    if best_state is not None:
        model.load_state_dict(best_state)
    if run is not model:
        model = model.to(memory_format=torch.contiguous_format)  # callers predict in float32
    return Fitted(model.eval(), best_step, float(best) if select else None, time.time() - t)


def fit_tensors(task_name: str, images: torch.Tensor, masks: torch.Tensor | None, labels: torch.Tensor, shapes: Shapes,
                cfg: TaskConfig, seed: int) -> nn.Module:
    """A task model trained on in-memory tensors without augmentation or val selection (the
    audit's domain encoder and mask-consistency segmenter); returned in eval mode."""
    def draw_batch(idx: np.ndarray):
        i = torch.from_numpy(idx)
        return images[i], (None if masks is None else masks[i]), labels[i]

    return fit(TASKS[task_name], shapes, draw_batch, len(labels), labels, cfg.model_copy(update={"selection": "last"}), seed).model


class Split:
    """Pixels of a manifest subset: images uint8 (N, H, W[, C]), masks uint8 (N, H, W) or None,
    labels (N,), and the rows' ``ids``."""

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


def concat(a: Split, b: Split) -> Split:
    """``a``'s rows, then ``b``'s (both non-empty or of the same image size)."""
    out = copy.copy(a)
    out.ids = a.ids + b.ids
    out.images = np.concatenate([a.images, b.images])
    out.masks = None if a.masks is None or b.masks is None else np.concatenate([a.masks, b.masks])
    out.labels = np.concatenate([a.labels, b.labels])
    return out


def subset(split: Split, idx: np.ndarray) -> Split:
    out = copy.copy(split)
    out.ids = [split.ids[i] for i in idx]
    out.images, out.labels = split.images[idx], split.labels[idx]
    out.masks = None if split.masks is None else split.masks[idx]
    return out


def batch_fn(split: Split, augment) -> BatchFn:
    """draw_batch for :func:`fit`: uint8 pixels of ``split``, optionally augmented
    (``augment(image, mask) -> (image, mask)``), as tensors."""
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
              batches: list[np.ndarray] | None = None, weights: np.ndarray | None = None) -> Fitted:
    """Train task ``task``'s model on ``train`` (optionally augmented, on a batch schedule, with
    per-example loss weights) and select its checkpoint on ``val`` (:func:`fit`)."""
    return fit(TASKS[task], shapes, batch_fn(train, augment), len(train), torch.from_numpy(train.labels), cfg, seed,
               val=val.tensors(), batches=batches, weights=weights)


def score_split(task: str, model: nn.Module, shapes: Shapes, test: Split, names: dict[int, str] | None = None
                 ) -> tuple[dict[str, float | None], dict[str, str]]:
    """``task``'s scores of ``model`` on ``test``, those the split cannot define None, and why
    (:func:`undefined_metrics`; ``names``: class names, for the reasons)."""
    x, m, y = test.tensors()
    metrics = TASKS[task].score(model, shapes, x, m, y)
    names = names or {c: str(c) for c in shapes.classes or range(shapes.num_classes)}
    undefined = undefined_metrics(task, m, y, shapes, names)
    return {k: None if k in undefined else v for k, v in metrics.items()}, undefined


def finite(value) -> bool:
    """A real number (not a bool) that is neither NaN nor infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
