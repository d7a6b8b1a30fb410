"""Sampling a synthetic set under a balancing manifest: exact plans, per-sample provenance,
streaming, atomic files, resume, and sharding across processes.

Sample ``k`` of class ``c`` is seeded by ``mix_seed(run_seed, c, k, attempt)`` (``attempt`` > 0
only when ``--filter`` rejected earlier draws) and always decoded in a batch padded to the
same ``batch_size``, so its pixels do not depend on which process or batch made it: one row can
be regenerated alone from its provenance, byte for byte.

With ``mask_source: real`` (a mask-conditioned generator) sample ``k`` of class ``c`` takes the
mask of a training row of that class from the generator's own budget (a seeded permutation per
pass over the class, so every real mask is used equally often), moves it with a seeded jitter
(:mod:`augment.masks`) and generates the image for it; ``source_mask_id`` and ``jitter_seed``
are recorded. A generator in ``inpaint`` mode also takes a background from its budget and a placement
(:mod:`augment.inpainting`): it generates inside the region only, the real background is put back
around it, and ``background_id`` and ``placement`` (centre, scale, region box, the lesion shape's
id) are recorded. Sampler settings (``--set sampler.KEY=VALUE``) are validated by the family's own
``Sampler`` schema and recorded in every row's ``sampler`` column.

Each process appends finished rows to its own journal (``SYN/.journal/rank<r>.jsonl``) after
both PNGs are renamed into place; a resumed run trusts a journal row only if its files are
present and hash-equal, and makes the rest again. The manifest is written once, at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import Field

from augment.balance import BalanceConfig, plan
from augment.config import Seed, Strict, load_json, load_yaml, save_json, validate
from augment import inpainting
from augment.data.images import read_image, read_mask, sha256_file, write_png
from augment.data.manifest import CLASSES, COLUMNS, MANIFEST, read_manifest, write_classes, write_manifest
from augment.errors import AugmentError, ConfigError, DataError
from augment.lock import locked
from augment.generators.artifact import GeneratorRun, LoadedGenerator, load_generator
from augment.generators.base import Context
from augment.masks import jitter_mask
from augment.output import atomic_path, resumable_output
from augment.placement import Backgrounds, Placement
from augment.runinfo import run_record, write_json
from augment.seeding import mix_seed, process_state

PROVENANCE = ["source", "generator", "generator_sha256", "seed", "sampler", "source_mask_id", "jitter_seed", "background_id", "placement"]
JOURNAL = ".journal"


class SampleSettings(Strict):
    """How a synthetic set is drawn, whatever the generator: a pipeline's ``sample:`` section."""

    batch_size: int = Field(16, ge=1, le=4096)
    filter: bool = Field(False, description="drop and redraw implausible pairs (empty lesion masks, lesion area outside the real range)")
    max_attempts: int = Field(20, ge=1, description="draws per sample before --filter gives up")


class SampleConfig(SampleSettings):
    """Options of ``augment sample`` (written to ``SYN/sample.json``)."""

    generator: Path
    balance: BalanceConfig
    out: Path
    seed: Seed | None = Field(None, description="run seed (default: the balancing manifest's seed)")
    sampler: dict[str, Any] = Field(default_factory=dict, description="family sampler settings, checked against its Sampler schema")


def load_balance(path: str | Path) -> BalanceConfig:
    return validate(BalanceConfig, load_yaml(path), f"balancing manifest `{path}`")


@dataclass(frozen=True)
class Item:
    id: str
    label: int
    index: int  # position within its class


def plan_items(table: pd.DataFrame) -> list[Item]:
    """The planned samples in a fixed order: by class, then index."""
    return [Item(f"syn_c{int(r['class'])}_{k:06d}", int(r["class"]), k) for _, r in table.iterrows() for k in range(int(r["synthetic"]))]


def sampler_settings(gen: LoadedGenerator, cfg: SampleConfig):
    """The family's validated sampler settings for this run (one ConfigError line otherwise)."""
    what = f"sample: sampler ({gen.config.generator.family})"
    settings = validate(gen.model.Sampler, cfg.sampler, what)
    top_k = getattr(settings, "top_k", 0)
    sizes = getattr(gen.model, "codebook_sizes", {})
    if sizes and top_k > max(sizes.values()):  # at or above one level's size it means all of that level's codes
        raise ConfigError(f"{what}: `top_k` {top_k} is above every codebook of this generator ({sizes}); 0 means all codes")
    return settings


def check_mask_source(gen: LoadedGenerator, mask_source: str) -> None:
    conditioned = bool(getattr(gen.model, "mask_conditioned", False))
    if conditioned and mask_source != "real":
        raise ConfigError(f"generator `{gen.info.path}` makes images for given masks; set `mask_source: real` in the balancing manifest")
    if not conditioned and mask_source == "real":
        raise ConfigError(f"generator `{gen.info.path}` makes its own masks; `mask_source: real` needs a mask-conditioned "
                          "generator (e.g. generator.mode=mask)")


def real_masks(info: GeneratorRun) -> dict[int, list[tuple[str, np.ndarray]]]:
    """Per class, the (id, mask) pairs of the generator's own training rows, in training order."""
    out: dict[int, list[tuple[str, np.ndarray]]] = {}
    for r in info.rows.itertuples():
        out.setdefault(int(r.label), []).append((str(r.id), read_mask(info.data_dir / r.mask)))
    return out


def source_mask(pool: dict[int, list[tuple[str, np.ndarray]]], seed: int, label: int, index: int) -> tuple[str, np.ndarray]:
    """The real mask behind sample ``index`` of class ``label``: pass ``index // n`` over the
    class is a seeded permutation of its ``n`` masks, so each is used equally often."""
    masks = pool.get(label)
    if not masks:
        raise DataError(f"class {label} has no real mask in the generator's budget, so mask_source real cannot sample it")
    n = len(masks)
    perm = np.random.default_rng(mix_seed(seed, label, index // n, 0x5A5C)).permutation(n)
    return masks[int(perm[index % n])]


def draw(gen: LoadedGenerator, labels: list[int], seeds: list[int], batch_size: int,
         masks: list[np.ndarray] | None = None, settings=None,
         context: tuple[list[np.ndarray], list[np.ndarray]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode up to ``batch_size`` pairs, padded to exactly ``batch_size`` so every pair is made
    by the same computation. ``masks`` (n of (H, W) uint8): the given masks of a mask-conditioned
    generator; ``context``: an inpainting generator's backgrounds (n of (H, W[, C]) uint8) and
    regions (n of (H, W) bool). Returns images (n, H, W[, C]) uint8 and masks (n, H, W) uint8
    (empty for a generator trained on a set without masks)."""
    n = len(labels)
    pad = batch_size - n
    gens = [torch.Generator().manual_seed(s) for s in seeds] + [torch.Generator().manual_seed(0) for _ in range(pad)]
    given = None
    if masks is not None:
        given = torch.from_numpy(np.stack(list(masks) + [masks[0]] * pad)).to(torch.int64)
    ctx = None
    if context is not None:
        backgrounds, regions = context
        pixels = torch.from_numpy(np.stack(list(backgrounds) + [backgrounds[0]] * pad)).float() / 255.0
        pixels = pixels[:, None] if pixels.ndim == 3 else pixels.permute(0, 3, 1, 2)
        ctx = Context(pixels.contiguous(), torch.from_numpy(np.stack(list(regions) + [regions[0]] * pad)))
    extra = {} if ctx is None else {"context": ctx}
    out = gen.model.sample(torch.tensor(labels + [labels[0]] * pad, dtype=torch.int64), gens, given, settings, **extra)
    if not bool(torch.isfinite(out.images[:n]).all()):  # rounding would write NaN as black: refuse instead
        raise DataError(f"generator `{gen.info.path}` produced non-finite pixels (NaN or inf) for class(es) "
                        f"{sorted(set(labels))} with sampler settings {settings.model_dump() if settings is not None else 'default'}; "
                        "try milder sampler settings, or retrain the generator")
    images = (out.images[:n] * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    if images.shape[-1] == 1:
        images = images[..., 0]
    if not (gen.info.rows["mask"] != "").any():  # trained on a classification set: its masks mean nothing
        return images, np.zeros(images.shape[:3], np.uint8)
    return images, out.masks[:n].to(torch.uint8).numpy()


def regenerate(syn_dir: str | Path, sample_id: str) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic pair made again from its manifest row and the run it came from."""
    syn = Path(syn_dir)
    cfg = load_json(SampleConfig, syn / "sample.json")
    df = read_manifest(syn)
    row = df[df["id"] == sample_id]
    if row.empty:
        raise DataError(f"`{sample_id}` is not in `{syn / MANIFEST}`")
    gen = load_generator(cfg.generator)
    r = row.iloc[0]
    if gen.weights_sha256 != r["generator_sha256"]:
        raise DataError(f"`{sample_id}` was made by other weights than `{cfg.generator}` holds now")
    given = None
    if r.get("background_id", ""):  # inpaint mode: the recorded placement on the recorded background
        record = json.loads(r["placement"])
        pool = dict((i, m) for ms in real_masks(gen.info).values() for i, m in ms)
        backgrounds = inpaint_backgrounds(gen, cfg)
        shape = inpainting.jittered_shape(pool[record["shape"]], cfg.balance.jitter, int(r["jitter_seed"]))
        s = inpainting.build(backgrounds, backgrounds.index(r["background_id"]), record["shape"], shape, bool(record["lesion"]),
                             Placement.from_record(record), cfg.balance.placement)
        images, _ = draw(gen, [int(r["label"])], [int(r["seed"])], cfg.batch_size, [s.given], sampler_settings(gen, cfg),
                         ([backgrounds.images[s.background]], [s.region]))
        return inpainting.finish(backgrounds, s, images[0], cfg.balance.placement)
    if r["source_mask_id"]:
        pool = dict((i, m) for ms in real_masks(gen.info).values() for i, m in ms)
        given = [jitter_mask(pool[r["source_mask_id"]], cfg.balance.jitter, int(r["jitter_seed"]))]
    images, masks = draw(gen, [int(r["label"])], [int(r["seed"])], cfg.batch_size, given, sampler_settings(gen, cfg))
    return images[0], masks[0]


def inpaint_backgrounds(gen: LoadedGenerator, cfg: SampleConfig):
    """The generator's own budget images as backgrounds (:class:`augment.placement.Backgrounds`)."""
    rows = gen.info.rows
    images = [read_image(gen.info.data_dir / p) for p in rows["image"]]
    masks = [read_mask(gen.info.data_dir / p) for p in rows["mask"]]
    return Backgrounds.of([str(i) for i in rows["id"]], images, masks, list(rows["label"]), cfg.balance.placement)


def inpaint_batch(cfg: SampleConfig, backgrounds: Backgrounds, pool, seed: int, batch: list) -> tuple[list, list, list]:
    """The scenes of a batch of (item, attempt): source ids, jitter seeds and scenes."""
    sources, jitter_seeds, scenes = [], [], []
    for it, attempt in batch:
        src, mask = source_mask(pool, seed, it.label, it.index)
        js = mix_seed(seed, it.label, it.index, attempt, 0x717E)
        lesion = bool((mask > 0).any())
        shape_id, shape_mask = (src, mask) if lesion else inpainting.lesion_shape(pool, mix_seed(js, 0x54A9))
        shape = inpainting.jittered_shape(shape_mask, cfg.balance.jitter, js)
        scenes.append(inpainting.scene(backgrounds, it.label, shape_id, shape, lesion, cfg.balance.placement,
                                       mix_seed(seed, it.label, it.index, attempt, 0x91AC), f"sample {it.id}"))
        sources.append(src)
        jitter_seeds.append(js)
    return sources, jitter_seeds, scenes


def lesion_ranges(gen: LoadedGenerator) -> dict[int, tuple[float, float]]:
    """Per class, the min and max lesion-area fraction over the real masks the generator saw."""
    areas: dict[int, list[float]] = {}
    for label, masks in real_masks(gen.info).items():
        areas[label] = [float((m > 0).mean()) for _, m in masks]
    return {c: (min(a), max(a)) for c, a in areas.items()}


def passes(mask: np.ndarray, label: int, ranges: dict[int, tuple[float, float]]) -> bool:
    """The filter predicate: a lesion class (some real mask non-empty) needs a non-empty mask;
    every class needs its lesion area inside the real range of that class."""
    lo, hi = ranges[label]
    area = float((mask > 0).mean())
    if hi > 0 and area == 0:
        return False
    return lo <= area <= hi


def _journal_rows(out: Path) -> dict[str, dict]:
    """Journal rows whose files are present and hash-equal; later duplicates win (none expected)."""
    rows: dict[str, dict] = {}
    for path in sorted((out / JOURNAL).glob("rank*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill
                continue
            if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("id", "image", "mask", "sha256")):
                continue  # not a row this module wrote: the pair is made again
            if (out / row["image"]).is_file() and (out / row["mask"]).is_file() and sha256_file(out / row["image"]) == row["sha256"]:
                rows[row["id"]] = row
    return rows


def _claim(cfg: SampleConfig, resume: bool, state) -> None:
    out = cfg.out
    saved = out / "sample.json"
    if not resumable_output(out, saved.name, "a synthetic set"):
        if load_json(SampleConfig, saved) != cfg:
            raise DataError(f"`{out}` already holds a different sampling run (see its sample.json); choose another --out")
        if not resume and not (out / "run.json").is_file():
            raise DataError(f"`{out}` holds an unfinished sampling run; pass --resume to continue it")
    state.wait_for_everyone()  # every process has checked before the main one writes
    if state.is_main_process:
        (out / JOURNAL).mkdir(parents=True, exist_ok=True)
        save_json(cfg, saved)
    state.wait_for_everyone()


@locked(lambda cfg, *_, **__: cfg.out, "sample")
def sample(cfg: SampleConfig, resume: bool = False, echo=print) -> Path:
    """``augment sample``: see the module docstring. Returns ``cfg.out``."""
    started = time.time()
    state = process_state()
    gen = load_generator(cfg.generator)
    classes = {int(k): v for k, v in gen.run["classes"].items()}
    real = {int(k): v for k, v in gen.run["class_counts"].items()}
    table = plan(real, cfg.balance, classes)
    if int(table["synthetic"].sum()) == 0:
        raise DataError(f"the balancing plan ({cfg.balance.strategy}) asks for no synthetic pairs for the real counts "
                        f"{dict(sorted(real.items()))} of `{cfg.generator}` (match_max adds none when every class is already "
                        "as large as the largest, e.g. one class); use strategy ratio, target or total")
    check_mask_source(gen, cfg.balance.mask_source)
    sampler_settings(gen, cfg)
    seed = cfg.balance.seed if cfg.seed is None else cfg.seed
    done = all((cfg.out / f).is_file() for f in ("run.json", "sample.json"))
    if done and load_json(SampleConfig, cfg.out / "sample.json") == cfg:
        if state.is_main_process:
            echo(f"`{cfg.out}` is already complete; nothing to do")
        return cfg.out
    fresh = not cfg.out.exists()
    state.wait_for_everyone()
    _claim(cfg, resume, state)
    try:
        return _run(cfg, gen, table, classes, seed, resume, state, started, echo)
    except AugmentError:
        if fresh and state.num_processes == 1:
            shutil.rmtree(cfg.out, ignore_errors=True)  # a run that failed on its own input leaves nothing
        raise


def _run(cfg: SampleConfig, gen: LoadedGenerator, table: pd.DataFrame, classes: dict[int, str], seed: int,
         resume: bool, state, started: float, echo) -> Path:
    if state.is_main_process:
        echo(table.to_string(index=False))
        with atomic_path(cfg.out / "plan.csv") as tmp:
            table.to_csv(tmp, index=False)

    items = plan_items(table)
    done = _journal_rows(cfg.out) if resume else {}
    mine = [it for i, it in enumerate(items) if i % state.num_processes == state.process_index and it.id not in done]
    ranges = lesion_ranges(gen) if cfg.filter else {}
    family = gen.config.generator.family
    sampler = sampler_settings(gen, cfg)
    settings = {**sampler.model_dump(mode="json"), "batch_size": cfg.batch_size, "mask_source": cfg.balance.mask_source}
    pool = real_masks(gen.info) if cfg.balance.mask_source == "real" else None
    inpaints = bool(getattr(gen.model, "inpaints", False))
    backgrounds = inpaint_backgrounds(gen, cfg) if inpaints else None
    journal = open(cfg.out / JOURNAL / f"rank{state.process_index}.jsonl", "a")
    for stray in list((cfg.out / "images").glob(".*.tmp")) + list((cfg.out / "masks").glob(".*.tmp")):
        stray.unlink(missing_ok=True)  # from a kill mid-write; the pair is made again

    queue = deque((it, 0) for it in mine)
    t0, made = time.time(), 0
    with _bar(len(mine), state.is_main_process) as bar:
        while queue:
            batch = [queue.popleft() for _ in range(min(cfg.batch_size, len(queue)))]
            seeds = [mix_seed(seed, it.label, it.index, attempt) for it, attempt in batch]
            sources, jitter_seeds, given, context, scenes = [""] * len(batch), [""] * len(batch), None, None, [None] * len(batch)
            if inpaints:
                sources, jitter_seeds, scenes = inpaint_batch(cfg, backgrounds, pool, seed, batch)
                given = [s.given for s in scenes]
                context = ([backgrounds.images[s.background] for s in scenes], [s.region for s in scenes])
            elif pool is not None:
                picked = [source_mask(pool, seed, it.label, it.index) for it, _ in batch]
                sources = [i for i, _ in picked]
                jitter_seeds = [mix_seed(seed, it.label, it.index, attempt, 0x717E) for it, attempt in batch]
                given = [jitter_mask(m, cfg.balance.jitter, js) for (_, m), js in zip(picked, jitter_seeds)]
            images, masks = draw(gen, [it.label for it, _ in batch], seeds, cfg.batch_size, given, sampler, context)
            if inpaints:
                done_pairs = [inpainting.finish(backgrounds, s, im, cfg.balance.placement) for s, im in zip(scenes, images)]
                images, masks = [p[0] for p in done_pairs], [p[1] for p in done_pairs]
            for (it, attempt), s, image, mask, src, js, sc in zip(batch, seeds, images, masks, sources, jitter_seeds, scenes):
                if cfg.filter and not passes(mask, it.label, ranges):
                    if attempt + 1 >= cfg.max_attempts:
                        raise AugmentError(
                            f"--filter rejected {cfg.max_attempts} draws for {it.id} (class {it.label}); the generator "
                            "cannot meet the filter for this class (train longer, or sample without --filter)"
                        )
                    queue.append((it, attempt + 1))
                    continue
                image_rel, mask_rel = f"images/{it.id}.png", f"masks/{it.id}.png"
                write_png(image, cfg.out / image_rel)
                write_png(mask, cfg.out / mask_rel)
                row = {"id": it.id, "label": it.label, "index": it.index, "seed": s, "attempt": attempt,
                       "image": image_rel, "mask": mask_rel, "sha256": sha256_file(cfg.out / image_rel),
                       "source_mask_id": src, "jitter_seed": js,
                       "background_id": "" if sc is None else backgrounds.ids[sc.background],
                       "placement": "" if sc is None else json.dumps(sc.record(backgrounds), sort_keys=True)}
                journal.write(json.dumps(row) + "\n")
                made += 1
                bar.advance(made, time.time() - t0)
            journal.flush()
            os.fsync(journal.fileno())
    journal.close()
    state.wait_for_everyone()

    if state.is_main_process:
        rows = _journal_rows(cfg.out)
        missing = [it.id for it in items if it.id not in rows]
        if missing:
            raise AugmentError(f"sampling ended without {len(missing)} planned pair(s) (e.g. {missing[0]}); run again with --resume")
        df = pd.DataFrame([rows[it.id] for it in items])
        df = df.assign(
            split="train", group=df["id"], source="synthetic", generator=family,
            generator_sha256=gen.weights_sha256,
            sampler=[json.dumps({**settings, "attempt": int(a)}, sort_keys=True) for a in df["attempt"]],
        )
        write_manifest(df[COLUMNS + PROVENANCE], cfg.out / MANIFEST)
        write_classes(classes, cfg.out / CLASSES)
        counts = df["label"].value_counts().to_dict()
        if any(counts.get(int(r["class"]), 0) != int(r["synthetic"]) for _, r in table.iterrows()):
            raise AugmentError("internal error: the synthetic counts differ from the plan")
        write_json(run_record(
            "sample", cfg.model_dump(mode="json"), started,
            plan=table.to_dict("records"), seed=seed, generator_run=str(Path(cfg.generator).resolve()),
            generator_family=family, generator_sha256=gen.weights_sha256,
            generator_trained_on_sha256=[t["sha256"] for t in gen.run["trained_on"]],
            sampler=sampler.model_dump(mode="json"), mask_source=cfg.balance.mask_source,
            n_synthetic=len(df), processes=state.num_processes,
            # Each row's attempt number is how many draws the filter rejected before it.
            dropped_by_filter={str(int(c)): int(n) for c, n in df.groupby("label")["attempt"].sum().items()},
            # every process's pairs: the rows there now that were not there before this session
            samples_per_s_this_session=round((len(rows) - len(done)) / max(time.time() - t0, 1e-9), 3),
        ), cfg.out / "run.json")
        shutil.rmtree(cfg.out / JOURNAL, ignore_errors=True)
    state.wait_for_everyone()
    return cfg.out


class _bar:
    """Sampling progress on the main process: a rich bar with samples/s on a terminal, else a
    :class:`augment.progress.Lines` line every ~30 s with an ETA."""

    def __init__(self, total: int, enabled: bool) -> None:
        import sys

        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from augment.progress import Lines, console

        self.progress = Progress(
            TextColumn("[bold]sample"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:.1f} samples/s"), TimeRemainingColumn(),
            console=console(), transient=True, disable=not (enabled and sys.stderr.isatty()),
        )
        self.task = self.progress.add_task("sample", total=total, rate=0.0)
        self.lines = Lines("sample", total, "pairs", enabled=enabled)

    def __enter__(self) -> "_bar":
        self.progress.__enter__()
        return self

    def __exit__(self, kind, *exc) -> None:
        self.progress.__exit__(kind, *exc)
        if kind is None:
            self.lines.finish()

    def advance(self, done: int, seconds: float) -> None:
        rate = done / max(seconds, 1e-9)
        self.progress.update(self.task, completed=done, rate=rate)
        self.lines.update(done, f"{rate:.1f} pairs/s")
