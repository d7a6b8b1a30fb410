"""Balancing manifests: how many synthetic pairs each class gets. Pure functions over counts.

A manifest is YAML validated into :class:`BalanceConfig`; :func:`plan` turns it and the real
class counts of the generator's budget subset into a table of exact integer counts.

Strategies:
* ``match_max``: every touched class up to the largest class's real count;
* ``target``: ``{class: n}`` final totals (real + synthetic);
* ``ratio``: ``r`` synthetic per real image, for all classes or per class (``{class: r}``),
  rounded half up per class;
* ``total``: ``N`` synthetic pairs split by ``weights`` (default: inverse real frequency) with
  largest remainders, so the counts add up to exactly ``N``.
``max_synthetic_per_class`` caps each class (for ``total``, capped excess moves to the other
classes); ``classes`` limits which classes get synthetic pairs. Ratios and weights must be finite
numbers, and a plan may ask for at most ``max_synthetic_total`` pairs (default 1,000,000: a typo
such as ``total: 1000000000`` is refused, not sampled for a week; raise it when you mean it).

``mask_source`` says where masks come from: ``generated`` (the generator makes image and mask
together) or ``real`` (masks drawn from the generator's own budget subset, each moved by a seeded
``jitter``, and the generator makes the image for it; needs a mask-conditioned generator). A
generator in ``inpaint`` mode also takes a background from the budget and a ``placement``
(:mod:`augment.placement`) for each jittered mask.
"""

from __future__ import annotations

import math
from typing import Literal

import pandas as pd
from pydantic import Field, StrictFloat, StrictInt, model_validator

from augment.config import Seed, Strict
from augment.errors import ConfigError
from augment.masks import JitterConfig
from augment.placement import PlacementConfig

Count = StrictInt
_ONLY = {"target": "target", "ratio": "ratio", "total": "total", "weights": "total"}
MAX_TOTAL = 1_000_000
_HUGE = 10**16  # stands for an overflowing count


class BalanceConfig(Strict):
    strategy: Literal["match_max", "target", "ratio", "total"]
    target: dict[int, Count] | None = None
    ratio: StrictFloat | StrictInt | dict[int, StrictFloat | StrictInt] | None = None
    total: Count | None = None
    weights: dict[int, StrictFloat | StrictInt] | None = None
    max_synthetic_per_class: Count | None = None
    max_synthetic_total: Count = Field(MAX_TOTAL, ge=1, le=10**9, description="the most synthetic pairs a plan may ask for")
    classes: list[int] | None = None
    seed: Seed = 0
    mask_source: Literal["generated", "real"] = "generated"
    jitter: JitterConfig = Field(default_factory=JitterConfig, description="mask_source real: how real masks are moved")
    placement: PlacementConfig = Field(default_factory=PlacementConfig,
                                       description="inpaint mode: where a lesion goes on a background (augment.placement)")

    @model_validator(mode="after")
    def _consistent(self) -> "BalanceConfig":
        for key, strategy in _ONLY.items():
            if getattr(self, key) is not None and self.strategy != strategy:
                raise ValueError(f"`{key}` applies only to strategy {strategy}, not {self.strategy}")
        if self.strategy in ("target", "ratio", "total") and getattr(self, self.strategy) is None:
            raise ValueError(f"strategy {self.strategy} needs `{self.strategy}`")
        negatives = {
            "target": [v for v in (self.target or {}).values() if v < 0],
            "total": [self.total] if self.total is not None and self.total < 0 else [],
            "max_synthetic_per_class": [self.max_synthetic_per_class] if (self.max_synthetic_per_class or 0) < 0 else [],
            "ratio": [r for r in (self.ratio.values() if isinstance(self.ratio, dict) else [self.ratio or 0]) if r < 0],
            "weights": [w for w in (self.weights or {}).values() if w < 0],
        }
        for key in ("ratio", "weights"):
            value = getattr(self, key)
            for v in (value.values() if isinstance(value, dict) else [value] if value is not None else []):
                if not math.isfinite(v):
                    raise ValueError(f"`{key}` must be a finite number (got {v}); give e.g. 1.0")
        for key, bad in negatives.items():
            if bad:
                raise ValueError(f"`{key}` must not be negative (got {bad[0]})")
        asked = {"total": self.total or 0, "target": sum((self.target or {}).values())}
        for key, n in asked.items():
            if n > self.max_synthetic_total:
                raise ValueError(f"`{key}` asks for {n} synthetic pairs, above max_synthetic_total "
                                 f"({self.max_synthetic_total}); raise it (balance.max_synthetic_total=N) if you mean it")
        if self.weights is not None and not any(self.weights.values()):
            raise ValueError("`weights` must not all be zero")
        return self


def asks_for_nothing(cfg: BalanceConfig) -> str | None:
    """Why ``cfg`` plans no synthetic pair whatever the real counts (None when it may plan some):
    fine for a recipe (the real budget alone), an error for a sampling run."""
    ratios = cfg.ratio.values() if isinstance(cfg.ratio, dict) else [cfg.ratio]
    if cfg.classes == []:
        return "`classes` is empty"
    if cfg.strategy == "ratio" and not any(ratios):
        return "`ratio` is 0"
    if cfg.strategy == "total" and cfg.total == 0:
        return "`total` is 0"
    if cfg.max_synthetic_per_class == 0:
        return "`max_synthetic_per_class` is 0"
    return None


def _largest_remainder(total: int, weights: dict[int, float], caps: dict[int, int | None]) -> dict[int, int]:
    """Split ``total`` into integers proportional to ``weights`` (exact sum), never above a cap;
    what a capped class cannot take goes to the others (water-filling)."""
    out = dict.fromkeys(weights, 0)
    remaining, open_ = total, {c for c, w in weights.items() if w > 0}
    while remaining > 0 and open_:
        wsum = sum(weights[c] for c in open_)
        share = {c: remaining * weights[c] / wsum for c in open_}
        add = {c: math.floor(share[c]) for c in open_}
        left = remaining - sum(add.values())
        for c in sorted(open_, key=lambda c: (-(share[c] - add[c]), c))[:left]:
            add[c] += 1
        progressed = 0
        for c in sorted(open_):
            room = math.inf if caps.get(c) is None else caps[c] - out[c]
            take = int(min(add[c], room))
            out[c] += take
            progressed += take
            if caps.get(c) is not None and out[c] >= caps[c]:
                open_.discard(c)
        remaining -= progressed
        if progressed == 0:
            break
    if remaining > 0:
        raise ConfigError(f"balance: total {total} is impossible: the caps and weights allow at most {total - remaining}")
    return out


def plan(real_counts: dict[int, int], cfg: BalanceConfig, class_names: dict[int, str]) -> pd.DataFrame:
    """Synthetic pairs per class: a frame with columns ``class, name, real, synthetic, total``
    (one row per class in ``class_names``, sorted), totals exact.

    ``real_counts`` are the real images per class in the generator's budget subset.
    """
    known = sorted(class_names)
    allowed = ", ".join(map(str, known))
    for key in ("target", "ratio", "weights"):
        value = getattr(cfg, key)
        for c in value if isinstance(value, dict) else []:
            if c not in class_names:
                raise ConfigError(f"balance: `{key}` names class {c}, which is not a class (allowed: {allowed})")
    for c in cfg.classes or []:
        if c not in class_names:
            raise ConfigError(f"balance: `classes` names class {c}, which is not a class (allowed: {allowed})")
    touched = set(cfg.classes) if cfg.classes is not None else set(known)
    if cfg.strategy == "target" and cfg.classes is not None:
        outside = sorted(set(cfg.target) - touched)
        if outside:
            raise ConfigError(f"balance: `target` names class {outside[0]} but `classes` excludes it")
    real = {c: int(real_counts.get(c, 0)) for c in known}
    cap = cfg.max_synthetic_per_class

    if cfg.strategy == "match_max":
        top = max(real.values())
        syn = {c: top - real[c] if c in touched else 0 for c in known}
    elif cfg.strategy == "target":
        syn = {}
        for c in known:
            want = cfg.target.get(c)
            if want is None or c not in touched:
                syn[c] = 0
            elif want < real[c]:
                raise ConfigError(
                    f"balance: target {want} for class {c} is below its {real[c]} real images "
                    "(targets are final totals, real + synthetic)"
                )
            else:
                syn[c] = want - real[c]
    elif cfg.strategy == "ratio":
        r = cfg.ratio if isinstance(cfg.ratio, dict) else dict.fromkeys(known, cfg.ratio)
        raw = {c: r.get(c, 0) * real[c] if c in touched else 0.0 for c in known}
        # A huge finite ratio times a count can overflow to inf; such a plan is refused below.
        syn = {c: math.floor(v + 0.5) if math.isfinite(v) else _HUGE for c, v in raw.items()}
    else:
        if cfg.weights is not None:
            w = {c: float(cfg.weights.get(c, 0)) if c in touched else 0.0 for c in known}
        else:
            missing = [c for c in known if c in touched and real[c] == 0]
            if missing:
                raise ConfigError(f"balance: class {missing[0]} has no real images, so inverse-frequency weights are undefined; give `weights`")
            w = {c: 1.0 / real[c] if c in touched else 0.0 for c in known}
        if not any(w.values()):
            raise ConfigError("balance: `weights` give every touched class weight 0")
        syn = _largest_remainder(cfg.total, w, dict.fromkeys(known, cap))

    if cap is not None:
        syn = {c: min(n, cap) for c, n in syn.items()}
    asked = sum(syn.values())
    if asked > cfg.max_synthetic_total:
        shown = str(asked) if asked < _HUGE else f"over {_HUGE:.0e}"
        raise ConfigError(f"balance: the plan asks for {shown} synthetic pairs, above max_synthetic_total "
                          f"({cfg.max_synthetic_total}); lower it (e.g. max_synthetic_per_class) or raise the limit "
                          "(--set balance.max_synthetic_total=N)")
    empty = [c for c in known if syn[c] > 0 and real[c] == 0]
    if empty:
        raise ConfigError(
            f"balance: class {empty[0]} gets synthetic pairs but has no real image in the generator's budget "
            "(the generator never saw it); drop it from the plan"
        )
    rows = [{"class": c, "name": class_names[c], "real": real[c], "synthetic": syn[c], "total": real[c] + syn[c]} for c in known]
    return pd.DataFrame(rows, columns=["class", "name", "real", "synthetic", "total"])
