"""Task models trained on real (and synthetic) pairs: a MONAI UNet segmenter and a small CNN
classifier. Fixed step budgets, seeded, no global RNG. The audit uses them too: the classifier
as the default domain feature encoder, the segmenter to check synthetic masks against images.

Tensors: images (N, C, H, W) float32 in [0, 1]; masks (N, H, W) int64; labels (N,) int64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from augment.seeding import mix_seed


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


def _batches(n: int, batch_size: int, steps: int, seed: int):
    """Seeded index batches, epoch after epoch (a pure function of the seed)."""
    step, epoch = 0, 0
    while step < steps:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(seed, epoch)))
        for i in range(0, n, batch_size):
            if step >= steps:
                return
            idx = perm[i:i + batch_size]
            if len(idx) < min(batch_size, n):
                break
            yield step, idx
            step += 1
        epoch += 1


def train_classifier(
    images: torch.Tensor, labels: torch.Tensor, num_classes: int, steps: int = 300, batch_size: int = 32,
    lr: float = 1e-3, seed: int = 0, width: int = 16, class_weighted: bool = True,
) -> SmallCNN:
    """A SmallCNN trained with (class-weighted) cross-entropy; returned in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallCNN(images.shape[1], num_classes, width)
    counts = torch.bincount(labels, minlength=num_classes).float()
    weight = (counts.sum() / counts.clamp(min=1) / num_classes) if class_weighted else None
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _, idx in _batches(len(labels), batch_size, steps, seed):
        loss = F.cross_entropy(model(images[idx]), labels[idx], weight=weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


def segmenter(channels: int, mask_classes: int, base: int = 16) -> nn.Module:
    """MONAI's 2D UNet with four levels."""
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=channels, out_channels=mask_classes,
                channels=(base, base * 2, base * 4, base * 8), strides=(2, 2, 2), num_res_units=1)


def train_segmenter(
    images: torch.Tensor, masks: torch.Tensor, mask_classes: int, steps: int = 300, batch_size: int = 16,
    lr: float = 1e-3, seed: int = 0, base: int = 16,
) -> nn.Module:
    """MONAI UNet trained with Dice + cross-entropy (MONAI DiceCELoss); returned in eval mode."""
    from monai.losses import DiceCELoss

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = segmenter(images.shape[1], mask_classes, base)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _, idx in _batches(len(masks), batch_size, steps, seed):
        loss = loss_fn(model(images[idx]), masks[idx].unsqueeze(1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def predict_masks(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """(N, C, H, W) -> (N, H, W) int64 argmax predictions."""
    return torch.cat([model(images[i:i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])


def dice_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Foreground (any class > 0) Dice per image; 1.0 when both masks are empty."""
    p, t = (pred > 0).flatten(1).float(), (target > 0).flatten(1).float()
    inter, total = (p * t).sum(1), p.sum(1) + t.sum(1)
    return torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))
