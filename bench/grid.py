"""Sample grid: real budget images vs generated ones, per class, masks outlined (used by benches)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from augment.data.dataset import PairDataset  # noqa: E402
from augment.generators.artifact import load_generator  # noqa: E402


def _show(ax, image: np.ndarray, mask: np.ndarray) -> None:
    ax.imshow(image.transpose(1, 2, 0).squeeze(), cmap="gray", vmin=0, vmax=1)
    if mask.any():
        ax.contour(mask, levels=[0.5], colors="r", linewidths=0.8)
    ax.set_axis_off()


def sample_grid(run: str | Path, out_png: str | Path, per_class: int = 6, seed: int = 0) -> Path:
    gen = load_generator(run)
    classes = {int(k): v for k, v in gen.run["classes"].items()}
    budget = gen.info.rows  # the exact rows the generator was trained on
    real = PairDataset(budget, gen.info.data_dir)
    fig, axes = plt.subplots(2 * len(classes), per_class, figsize=(1.4 * per_class, 2.9 * len(classes)))
    for r, (label, name) in enumerate(sorted(classes.items())):
        idx = np.flatnonzero(budget["label"].to_numpy() == label)[:per_class]
        for c in range(per_class):
            ax = axes[2 * r, c]
            if c < len(idx):
                item = real[int(idx[c])]
                _show(ax, item["image"].numpy(), item["mask"].numpy())
            ax.set_axis_off()
        axes[2 * r, 0].set_title(f"real: {name}", fontsize=8, loc="left")
        masks = None
        if gen.model.mask_conditioned:  # the image for each real mask shown above it
            masks = torch.stack([real[int(i)]["mask"] for i in np.resize(idx, per_class)]) if len(idx) else None
        if masks is None and gen.model.mask_conditioned:
            continue
        s = gen.model.sample(torch.full((per_class,), label), torch.Generator().manual_seed(seed + label), masks)
        for c in range(per_class):
            _show(axes[2 * r + 1, c], s.images[c].numpy(), s.masks[c].numpy())
        axes[2 * r + 1, 0].set_title(f"generated: {name}", fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)
