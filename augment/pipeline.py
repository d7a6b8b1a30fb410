"""``augment run pipelines/X.yaml``: prepare -> train -> sample -> audit -> evaluate -> report for
every generator, label budget and seed, skipping stages whose outputs are complete and resuming
the rest.

A spec names one generator (``generator: {family: cvae, ...}``) or several side by side
(``generators: {cvae: {family: cvae}, cvae_mask: {family: cvae, mode: mask, balance: {mask_source:
real}}}``); an entry may override ``train``, ``balance`` (merged over the spec's) and ``sampler``.
``generator_seeds`` (default: ``seeds``) are the seeds generators are trained with; task seed
``seeds[i]`` uses generator seed ``generator_seeds[i % len]`` and that seed's budget subset, so
a user can train fewer generators than task models; an override ``generators.NAME: null`` (``--set
generators.cvae=null``) runs the spec without that entry. The arms without synthetic data (``real``,
``real+classic``) are trained once per (budget, seed) and shared by every generator;
``evaluate.recipes`` (:mod:`augment.recipes`) are trained for every generator, beside its arms.
Entries with the same family config and loop share one trained generator (the first entry's,
:meth:`PipelineConfig.trainer`): ``rare_only`` beside ``match_max`` costs a sampling, not a training.

Layout: ``OUT/data``; ``OUT/generators/{name}/b{budget}_g{gseed}/{generator,synthetic,audit}`` (no
``generator`` for an entry that shares another's);
``OUT/evaluate/b{budget}_s{seed}/{real,<name>}``; the report in ``OUT/`` (``report.json``,
``report.md``, ``report.html``, ``figures/``, ``tables/``) and ``timings.json``. A stage is
complete when its ``run.json`` (``audit.json`` for the audit) exists (for an evaluation: and
covers every arm and recipe of the spec); it is then skipped.
Each stage names the stages whose output it reads (:class:`Stage`), so ``executor:`` (``augment run
--executor local|slurm``, :mod:`augment.dispatch`) can run independent stages at once; the
default runs them here, one after another, in the order listed.
Every stage's config is built, and so validated, before anything is written; each stage is
called in its own room (:mod:`augment.data.prepare`, :mod:`augment.training`, :mod:`augment.sampling`,
:mod:`augment.audit`, :mod:`augment.evaluate`), holding the lock of its own output folder.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Annotated, Any, NamedTuple

from pydantic import Field, field_validator, model_validator

from augment.audit import AuditSettings
from augment.balance import BalanceConfig, asks_for_nothing
from augment.config import PrepareSettings, Seed, Strict, load_json, load_yaml, merge, save_json, validate
from augment.dispatch import Dispatch, ExecutorConfig, begin_span, end_span, run_serial, set_threads
from augment.errors import AugmentError, ConfigError, DataError
from augment.evaluate import SHARED_ARMS, EvaluationSettings, unique
from augment.generators import GeneratorConfig
from augment.generators.loop import LoopConfig
from augment.gather import _done, build_report, generator_dir
from augment.lock import locked
from augment.output import discard, read_json, resumable_output
from augment.recipes import RecipeConfig
from augment.runinfo import run_record, write_json
from augment.sampling import SampleSettings

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
RESERVED = ("real", "none")


class DataSpec(PrepareSettings):
    """A pipeline's ``data:``: where from (``source``) and every ``augment prepare`` setting
    (:class:`~augment.config.PrepareSettings`: size, thresholds, column names ...)."""

    source: str = Field(description="phantom, or a path (relative to where `augment run` is started)")


class AuditSpec(AuditSettings):
    """A pipeline's ``audit:``: every ``augment audit`` setting (:class:`~augment.audit.AuditSettings`),
    and whether to audit at all."""

    enabled: bool = True


#: the recipe a pipeline trains unless its spec names others: half of every batch synthetic. On
#: BUSI (pipelines/busi_recipes.yaml: mask-conditioned cVAE, a pool of 5 synthetic pairs per real
#: image, budgets 16/32/64, 3 seeds) it ranked first of 13 recipes, +0.050 [+0.026, +0.074] Dice
#: vs real+classic pooled over 9 pairs, with no evidence of a change in false-positive rate.
DEFAULT_RECIPES = {"frac50": {"mix": "fraction", "synthetic_fraction": 0.5}}


class EvaluateSpec(EvaluationSettings):
    """A pipeline's ``evaluate:``: the arms and recipes of every (budget, seed), shared real arms
    once. Without ``recipes`` the spec trains :data:`DEFAULT_RECIPES`; ``recipes: {}`` trains none."""

    recipes: dict[str, RecipeConfig] = Field(
        default_factory=lambda: {k: RecipeConfig(**v) for k, v in DEFAULT_RECIPES.items()},
        description="named recipes for every generator (augment.recipes; default: frac50)")


class GeneratorSpec(Strict):
    """One generator of a pipeline, resolved: its family config, loop, balancing plan and sampler."""

    generator: GeneratorConfig
    train: LoopConfig = Field(default_factory=LoopConfig)
    balance: BalanceConfig
    sampler: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _masks_agree(self) -> "GeneratorSpec":
        mode = getattr(self.generator, "mode", "joint")
        if mode in ("mask", "inpaint") and self.balance.mask_source != "real":
            raise ValueError(f"a generator in {mode} mode makes images for given masks: set its balance.mask_source to real")
        if mode not in ("mask", "inpaint") and self.balance.mask_source == "real":
            raise ValueError("balance.mask_source real needs a mask-conditioned generator (mode: mask or inpaint)")
        nothing = asks_for_nothing(self.balance)
        if nothing is not None:  # found now, not after the generator has trained for an hour
            raise ValueError(f"balance asks for no synthetic pairs whatever the data ({nothing}); give a plan that adds some")
        return self


class PipelineConfig(Strict):
    name: str = "pipeline"
    data: DataSpec
    generators: dict[str, GeneratorSpec] = Field(min_length=1)
    train: LoopConfig = Field(default_factory=LoopConfig)
    budgets: list[Annotated[int, Field(ge=1)]] = Field(min_length=1)
    seeds: list[Seed] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    generator_seeds: list[Seed] | None = Field(
        None, min_length=1, description="seeds generators are trained with (default: seeds)")
    balance: BalanceConfig
    sample: SampleSettings = Field(default_factory=SampleSettings)
    audit: AuditSpec = Field(default_factory=AuditSpec)
    evaluate: EvaluateSpec = Field(default_factory=EvaluateSpec)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig, description="where the stages run (augment.dispatch; "
                                     "not part of the experiment: a run may resume under another)")

    @field_validator("budgets", "seeds", "generator_seeds")
    @classmethod
    def _once(cls, values: list | None) -> list | None:
        return values if values is None else unique(values)

    @field_validator("generators")
    @classmethod
    def _plain_names(cls, value: dict[str, GeneratorSpec]) -> dict[str, GeneratorSpec]:
        for name in value:
            if not NAME.match(name) or name in RESERVED:
                raise ValueError(f"generator name {name!r} must be a plain folder name (letters, digits, _ . -; "
                                 f"not {' or '.join(RESERVED)})")
        return value

    def trainer(self, name: str) -> str:
        """The entry whose trained generator entry ``name`` samples from: the first entry with the
        same family config and loop, so that entries differing only in their balancing plan or
        sampler (``match_max`` beside ``rare_only``) share one trained generator."""
        spec = self.generators[name]
        return next(n for n, s in self.generators.items() if s.generator == spec.generator and s.train == spec.train)

    def generator_seed(self, seed: int) -> int:
        """The generator seed (and budget subset) that task seed ``seed`` uses."""
        gseeds = self.generator_seeds or self.seeds
        return gseeds[self.seeds.index(seed) % len(gseeds)]


def _balance_file(ref: str, spec_path: Path) -> dict:
    tried = [Path(ref), spec_path.parent / ref, spec_path.parent.parent / ref]
    for cand in tried:
        if cand.is_file():
            return load_yaml(cand)
    raise ConfigError(f"pipeline `{spec_path}`: balance manifest `{ref}` does not exist (looked in: {', '.join(map(str, tried))})")


def load_pipeline(path: str | Path, overrides: dict | None = None) -> PipelineConfig:
    """A pipeline spec (see the module docstring). Keys are checked before anything is looked
    up, so a typo is reported as a typo; ``balance`` may name a manifest file (relative to the
    working directory, the spec's folder or its parent)."""
    path = Path(path)
    spec, overrides = _drop_entries(load_yaml(path), overrides or {}, path)
    spec = merge(spec, overrides)
    allowed = set(PipelineConfig.model_fields) | {"generator"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ConfigError(f"pipeline `{path}`: unknown key `{unknown[0]}` (allowed: {', '.join(sorted(allowed))})")
    if "generator" in spec:
        if "generators" in spec:
            raise ConfigError(f"pipeline `{path}`: give `generator` (one) or `generators` (several), not both")
        one = spec.pop("generator")
        spec["generators"] = {one.get("family", "generator") if isinstance(one, dict) else "generator": one}
    if isinstance(spec.get("balance"), str):
        spec["balance"] = _balance_file(spec["balance"], path)
    _mapping(spec, ("train", "balance"), "", path)
    if isinstance(spec.get("generators"), dict):
        resolved = {}
        for name, entry in spec["generators"].items():
            if not isinstance(entry, dict):
                raise ConfigError(f"pipeline `{path}`: generators.{name} must be a mapping (e.g. {{family: cvae}}), or null in an override to drop it")
            entry = dict(entry)
            if isinstance(entry.get("balance"), str):
                entry["balance"] = _balance_file(entry["balance"], path)
            _mapping(entry, ("train", "balance"), f"generators.{name}.", path)
            resolved[name] = {
                "generator": entry,
                "train": merge(spec.get("train") or {}, entry.pop("train", None) or {}),
                "balance": merge(spec.get("balance") or {}, entry.pop("balance", None) or {}),
                "sampler": entry.pop("sampler", None) or {},
            }
        spec["generators"] = resolved
    cfg = validate(PipelineConfig, spec, f"pipeline `{path}`")
    _check_families(cfg, path)
    return cfg


def _check_families(cfg: PipelineConfig, path: Path) -> None:
    """What only a generator's family can judge, checked at load so a typo fails before any stage
    runs (not after hours of training): each entry's ``sampler`` against its family's ``Sampler``
    schema, its ``train.phases`` names against the family's phases, and (when ``data.image_size``
    is set) its shape settings against the image size."""
    from augment.generators import REGISTRY
    from augment.generators.loop import check_phases

    import torch

    from augment.generators.base import DataSpec

    for name, entry in cfg.generators.items():
        family = entry.generator.family
        network = REGISTRY[family][1]
        validate(network.Sampler, entry.sampler, f"pipeline `{path}`: generators.{name}.sampler ({family})")
        try:
            check_phases(entry.train, network.phases)
            if cfg.data.image_size is not None:  # shapes that cannot fit the images: built on the meta device, no memory
                spec = DataSpec(image_size=cfg.data.image_size, channels=3 if cfg.data.rgb else 1, num_classes=2, mask_classes=2)
                with torch.device("meta"):
                    network(entry.generator, spec)
        except ConfigError as exc:
            raise ConfigError(f"pipeline `{path}`: generators.{name}: {exc}") from None


def _drop_entries(spec: dict, overrides: dict, path: Path) -> tuple[dict, dict]:
    """(spec, overrides) without the generator entries ``overrides`` sets to null (``--set
    generators.cvae=null`` runs a spec without its ``cvae`` entry). A null for an entry the spec
    does not have, or for every entry, is a ConfigError."""
    entries = overrides.get("generators")
    if not isinstance(entries, dict) or None not in entries.values():
        return spec, overrides
    have = spec.get("generators") if isinstance(spec.get("generators"), dict) else {}
    dropped = [n for n, v in entries.items() if v is None]
    for name in dropped:
        if name not in have:
            raise ConfigError(f"pipeline `{path}`: generators.{name}=null drops an entry, but the spec has none "
                              f"named `{name}` (it has: {', '.join(have) or 'none'})")
    kept = {n: v for n, v in have.items() if n not in dropped}
    if not kept:
        raise ConfigError(f"pipeline `{path}`: every generator entry was dropped with =null; keep at least one")
    rest = {n: v for n, v in entries.items() if v is not None}
    # no override left for the kept entries: leave the key out (an empty mapping would replace them all)
    overrides = {**overrides, "generators": rest} if rest else {k: v for k, v in overrides.items() if k != "generators"}
    return {**spec, "generators": kept}, overrides


def _mapping(spec: dict, keys: tuple[str, ...], prefix: str, path: Path) -> None:
    """Keys that are merged key by key must hold mappings (a ConfigError naming the key otherwise)."""
    for key in keys:
        value = spec.get(key)
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"pipeline `{path}`: `{prefix}{key}` must be a mapping of settings (got {value!r})")


def _evaluated(folder: Path, arms: list[str], recipes: list[str]) -> bool:
    """An evaluation stage is complete when its run.json covers every arm and recipe asked for
    (arms and recipes added to a spec later make it run again, training only the new ones)."""
    record = folder / "run.json"
    if not record.is_file():
        return False
    config = read_json(record, "evaluation record").get("config") or {}
    return set(arms) <= set(config.get("arms") or []) and set(recipes) <= set(config.get("recipes") or {})


class Stage(NamedTuple):
    """One stage of a pipeline: ``call()`` writes ``folder``, complete when ``marker`` (a file name
    in it, or a test of it) says so; ``needs`` are the names of the stages whose output it reads."""

    name: str
    folder: Path
    call: Callable[[], object]
    marker: str | Callable[[Path], bool]
    needs: tuple[str, ...] = ()


def _stages(cfg: PipelineConfig, out: Path) -> list[Stage]:
    """Every stage, once each, in the serial order (a stage comes after every stage it needs).
    Building them validates every stage's config, so a bad spec fails before anything is written."""
    from augment.audit import AuditConfig, audit
    from augment.config import PrepareConfig
    from augment.data.prepare import prepare
    from augment.evaluate import EvaluateConfig, evaluate
    from augment.generators import TrainConfig
    from augment.sampling import SampleConfig, sample
    from augment.training import train

    def make(model, what: str, **fields):
        return validate(model, fields, f"pipeline: {what}")

    def quiet(*_):
        return None

    data = out / "data"
    prep = make(PrepareConfig, "data", **cfg.data.model_dump(), out=data, overwrite=not _done(data))
    stages = {"prepare": Stage("prepare", data, partial(prepare, prep), "run.json")}

    def add(name: str, folder: Path, call, marker, *needs: str) -> None:
        stages.setdefault(name, Stage(name, folder, call, marker, needs))  # a generator shared by task seeds: once

    ev = cfg.evaluate
    shared = [a for a in ev.arms if a in SHARED_ARMS]
    own = [a for a in ev.arms if a not in SHARED_ARMS]
    # Seeds outermost: an interrupted run already holds whole budget curves for the first seeds.
    for seed in cfg.seeds:
        gseed = cfg.generator_seed(seed)
        for budget in cfg.budgets:
            where = out / "evaluate" / f"b{budget}_s{seed}"
            common = dict(data=data, task=ev.task, seeds=[seed], segmentation=ev.segmentation,
                          classification=ev.classification, classic=ev.classic)
            if shared:
                rcfg = make(EvaluateConfig, "evaluate", out=where / "real", arms=shared, budget=budget, budget_seed=gseed, **common)
                add(f"evaluate real arms (budget {budget} seed {seed})", where / "real",
                    partial(evaluate, rcfg, echo=quiet), partial(_evaluated, arms=shared, recipes=[]), "prepare")
            for name, spec in cfg.generators.items():
                tag = f"{name} budget {budget} gseed {gseed}"
                run = generator_dir(out, name, budget, gseed)
                trained = generator_dir(out, cfg.trainer(name), budget, gseed) / "generator"
                if cfg.trainer(name) == name:
                    tcfg = make(TrainConfig, f"generators.{name}", data=data, out=trained, budget=budget, seed=gseed,
                                generator=spec.generator, train=spec.train)
                    add(f"train ({tag})", trained, partial(train, tcfg, resume=True), "run.json", "prepare")
                syn = run / "synthetic"
                scfg = make(SampleConfig, f"generators.{name}", **cfg.sample.model_dump(), generator=trained,
                            balance=spec.balance, out=syn, seed=gseed, sampler=spec.sampler)
                add(f"sample ({tag})", syn, partial(sample, scfg, resume=True, echo=quiet), "run.json",
                    f"train ({cfg.trainer(name)} budget {budget} gseed {gseed})")
                if cfg.audit.enabled:
                    acfg = make(AuditConfig, "audit", **cfg.audit.model_dump(exclude={"enabled"}), data=data, synthetic=syn,
                                out=run / "audit", seed=gseed, overwrite=True)
                    add(f"audit ({tag})", run / "audit", partial(audit, acfg, echo=quiet), "audit.json", f"sample ({tag})")
                if own or ev.recipes:
                    ecfg = make(EvaluateConfig, "evaluate", out=where / name, synthetic=syn, arms=own, generator_name=name,
                                recipes=ev.recipes, scorer=ev.scorer, **common)
                    add(f"evaluate ({name} budget {budget} seed {seed})", where / name, partial(evaluate, ecfg, echo=quiet),
                        partial(_evaluated, arms=own, recipes=list(ev.recipes)), f"sample ({tag})")
    return list(stages.values())


def run_stage(out: str, name: str, cwd: str, threads: int | None, device: str) -> bool:
    """An executor's job (:mod:`augment.dispatch`): run stage ``name`` of the pipeline saved in
    ``out`` (rebuilt from its ``pipeline.json``, so it is the serial stage), from ``cwd`` (where
    ``augment run`` was started, for relative data paths), with ``threads`` torch threads. Where
    and when it ran, and a failure's error, go to its span file; it returns whether it finished
    and never raises, so the executor's result file holds nothing but that bool."""
    import traceback

    from augment.progress import stage

    os.chdir(cwd)
    set_threads(threads)
    root = Path(out)
    span = begin_span(root, name, device)
    try:
        found = [s for s in _stages(load_json(PipelineConfig, root / "pipeline.json"), root) if s.name == name]
        if not found:
            raise AugmentError(f"`{root / 'pipeline.json'}` has no stage named {name!r}")
        with stage(name):
            found[0].call()
    except BaseException as exc:  # noqa: BLE001 -- a job reports every failure in its span, never by raising
        traceback.print_exc()
        end_span(root, span, exc)
        return False
    end_span(root, span)
    return True


@locked(lambda cfg, out, *_, **__: out, "run")
def run_pipeline(cfg: PipelineConfig, out: str | Path, echo=print) -> Path:
    """Run (or continue) a pipeline into ``out``: see the module docstring. ``out`` must be new,
    empty or an earlier run of the same spec (budgets and seeds may change; generators,
    evaluation arms and recipes may be added)."""
    started = time.time()
    out = Path(out)
    saved = out / "pipeline.json"
    existed, fresh = out.exists(), resumable_output(out, saved.name, "the output of `augment run`")
    if saved.is_file():
        old = load_json(PipelineConfig, saved).model_dump(mode="json")
        new = cfg.model_dump(mode="json")
        changed = [k for k in new if new[k] != old.get(k)]
        before = old.get("generators") or {}
        if "generators" in changed and all(new["generators"].get(g) == spec for g, spec in before.items()):
            changed.remove("generators")  # generators were only added: the finished ones stay valid
        old_ev, new_ev = dict(old.get("evaluate") or {}), dict(new["evaluate"])
        old_recipes, new_recipes = old_ev.pop("recipes", {}) or {}, new_ev.pop("recipes")
        old_arms, new_arms = old_ev.pop("arms", []), new_ev.pop("arms")
        grown = set(old_arms) <= set(new_arms) and all(new_recipes.get(r) == v for r, v in old_recipes.items())
        if "evaluate" in changed and old_ev == new_ev and grown:
            changed.remove("evaluate")  # arms or recipes were only added: finished results stay valid
        if set(changed) - {"budgets", "seeds", "generator_seeds", "name", "executor"}:
            raise DataError(f"`{out}` was made from a different pipeline spec (changed: {', '.join(changed)}); use another --out")
    stages = _stages(cfg, out)
    out.mkdir(parents=True, exist_ok=True)
    save_json(cfg, saved)
    earlier = out / "timings.json"  # stages an earlier invocation ran keep their times
    before = read_json(earlier, "pipeline timings") if earlier.is_file() else {}
    ran_before, spans = dict(before.get("stages") or {}), dict(before.get("spans") or {})
    timings: dict[str, float] = {}

    def record(name: str, span: dict) -> None:
        """Kept as each stage ends, so an invocation that is killed or fails later loses none."""
        timings[name] = round(span["end"] - span["start"], 2)
        spans[name] = {k: span[k] for k in ("start", "end", "where")}
        write_json({"stages": {**ran_before, **timings}, "spans": spans, "finished": False}, earlier)

    try:
        if cfg.executor.kind == "serial":
            run_serial(stages, out, record, echo)
        else:
            Dispatch(stages, out, cfg.executor, run_stage, record, echo).run()
    except AugmentError:
        if fresh and not timings:
            discard(out, existed)  # nothing finished: a failed first stage leaves nothing
        raise
    t = time.time()
    build_report(cfg, out)
    timings["report"] = round(time.time() - t, 2)
    timings = {**{k: v for k, v in ran_before.items() if k not in timings}, **timings}
    by_kind: dict[str, float] = {}
    for name, seconds in timings.items():
        kind = name.split(" (")[0]
        by_kind[kind] = round(by_kind.get(kind, 0.0) + seconds, 2)
    timing = {"wall_seconds": round(time.time() - started, 2), "by_stage": by_kind, "stages": timings, "spans": spans,
              "executor": cfg.executor.kind}
    write_json(timing, out / "timings.json")
    write_json(run_record("run", cfg.model_dump(mode="json"), started, generators=list(cfg.generators),
                          generator_seeds=cfg.generator_seeds or cfg.seeds, timings=timing), out / "run.json")
    return out


@locked(lambda spec, out, *_, **__: out, "run")
def run_spec(spec: str | Path, out: str | Path, overrides: dict | None = None, echo=print) -> Path:
    """``augment run``: load the spec at ``spec`` (with ``overrides``, see :func:`load_pipeline`)
    and run it into ``out`` (:func:`run_pipeline`), holding ``out``'s lock from the start."""
    return run_pipeline(load_pipeline(spec, overrides), out, echo=echo)


@locked(lambda out, *_, **__: out, "report")
def rebuild_report(out: str | Path) -> Path:
    """``augment report``: rebuild the report of an ``augment run`` output folder from what its
    stages left (its spec is the ``pipeline.json`` the run saved)."""
    out = Path(out)
    if not (out / "pipeline.json").is_file():
        raise ConfigError(f"`{out}` is not the output of `augment run` (no pipeline.json)")
    build_report(load_json(PipelineConfig, out / "pipeline.json"), out)
    return out
