"""Sample grid of lesions on real backgrounds: for each shown pair, its background with the field
of view outlined (blue), then the output with the region box (yellow) and the output mask (red).

    python bench/inpaint_grid.py SYN_DIR out.png            # an inpaint-mode synthetic set
    python bench/inpaint_grid.py --copypaste DATA B out.png  # copy-paste on budget B of a prepared set

Prints where the grid went and how many of the shown pairs kept their background byte for byte
outside the region (all of them should).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from augment.data.images import read_image, read_mask  # noqa: E402
from augment.data.manifest import load_data, read_manifest  # noqa: E402
from augment.placement import PlacementConfig, field_of_view  # noqa: E402


def _panel(ax, image, mask=None, box=None, fov=None, title=""):
    ax.imshow(image, cmap="gray", vmin=0, vmax=255)
    if fov is not None:
        ax.contour(fov, levels=[0.5], colors="c", linewidths=0.6)
    if mask is not None and mask.any():
        ax.contour(mask > 0, levels=[0.5], colors="r", linewidths=0.7)
    if box is not None:
        y0, x0, y1, x1 = box
        ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="y", lw=0.7))
    ax.set_title(title, fontsize=6)
    ax.set_axis_off()


def grid(pairs: list[dict], out: Path, cols: int = 6) -> tuple[Path, int]:
    """``pairs``: dicts of background, bmask, image, mask, box, label. Returns (png, kept)."""
    rows = (len(pairs) + cols - 1) // cols
    fig, axes = plt.subplots(2 * rows, cols, figsize=(1.5 * cols, 3.1 * rows), squeeze=False)
    kept = 0
    for ax in axes.flat:  # the panels of a short last row stay blank
        ax.set_axis_off()
    for k, p in enumerate(pairs):
        r, c = 2 * (k // cols), k % cols
        _panel(axes[r, c], p["background"], p["bmask"], None, field_of_view(p["background"], PlacementConfig().fov_threshold),
               "background")
        _panel(axes[r + 1, c], p["image"], p["mask"], p["box"], None, f"placed (class {p['label']})")
        y0, x0, y1, x1 = p["box"]
        outside = np.ones(p["mask"].shape, bool)
        outside[y0:y1, x0:x1] = False
        kept += bool(np.array_equal(p["image"][outside], p["background"][outside]))
    fig.tight_layout()
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out, kept


def from_synthetic(syn: Path, n: int) -> list[dict]:
    from augment.generators.artifact import load_run

    record = json.loads((syn / "run.json").read_text())
    info = load_run(record["generator_run"])
    rows = info.rows.set_index("id")
    df = read_manifest(syn)
    df = df[df["background_id"] != ""].head(n)
    out = []
    for r in df.itertuples():
        placement = json.loads(r.placement)
        out.append({"background": read_image(info.data_dir / rows.loc[r.background_id, "image"]),
                    "bmask": read_mask(info.data_dir / rows.loc[r.background_id, "mask"]),
                    "image": read_image(syn / r.image), "mask": read_mask(syn / r.mask), "box": placement["region"],
                    "label": r.label})
    return out


def from_copypaste(data: Path, budget: int, n: int) -> list[dict]:
    from augment.copypaste import CopyPasteConfig, pasted
    from augment.data.splits import select_budget
    from augment.downstream import Split

    real, _ = load_data(data)
    split = Split(select_budget(real, budget, 0), data, True)
    pairs, records = pasted(split, CopyPasteConfig(ratio=max(1.0, n / len(split))), 0)
    index = {i: k for k, i in enumerate(split.ids)}
    return [{"background": split.images[index[r.background]], "bmask": split.masks[index[r.background]],
             "image": pairs.images[k], "mask": pairs.masks[k], "box": r.region, "label": r.label}
            for k, r in enumerate(records.head(n).itertuples())]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copypaste", nargs=2, metavar=("DATA", "BUDGET"))
    ap.add_argument("synthetic", nargs="?")
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=12)
    args = ap.parse_args()
    pairs = from_copypaste(Path(args.copypaste[0]), int(args.copypaste[1]), args.n) if args.copypaste else \
        from_synthetic(Path(args.synthetic), args.n)
    png, kept = grid(pairs, Path(args.out))
    print(f"wrote {png}: {len(pairs)} pairs, {kept} kept their background byte for byte outside the region")


if __name__ == "__main__":
    main()
