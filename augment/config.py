"""Config is data, validated at the edge.

YAML files and ``--set key=value`` overrides become plain dicts, then pydantic v2 models with
``extra="forbid"``. A validation failure becomes one :class:`~augment.errors.ConfigError` line
that names the key and says what is allowed. Every config is written as JSON beside what it
produced and loads back equal.
"""

from __future__ import annotations

import json
import math
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from augment.errors import ConfigError

M = TypeVar("M", bound=BaseModel)

MAX_SEED = 2**32 - 1
#: a user's seed: 0 to 4294967295 (numpy, torch and our mix_seed all take it; larger ones overflow torch)
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]


class Strict(BaseModel):
    """Base for every config model: unknown keys are errors, NaN and infinities are errors (no
    float setting anywhere has a meaning for them), values are re-validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, data: Any) -> Any:
        # pydantic's lax mode reads `temperature: yes` as 1.0 and `max_steps: true` as 1: never coerce
        if isinstance(data, dict):
            for name, value in data.items():
                field = cls.model_fields.get(name) if isinstance(name, str) else None
                if isinstance(value, bool) and field is not None and _numbers_only(field.annotation):
                    raise ValueError(f"`{name}` must be a number, not {str(value).lower()}")
        return data


def in_range(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False):
    """A float setting that must be finite and inside ``[lo, hi]`` (``(`` / ``)`` with the open
    flags); the error states the range, e.g. ``must be a finite number in [0.001, 100]``."""
    text = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"

    def check(value: float) -> float:
        inside = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
        if not (math.isfinite(value) and inside):
            raise ValueError(f"must be a finite number in {text}")
        return value

    return Annotated[float, AfterValidator(check)]


def _numbers_only(annotation: Any) -> bool:
    """Whether a field's type admits numbers and nothing else (``float``, ``int | None`` ...)."""
    leaves: list[Any] = []
    todo = [annotation]
    while todo:
        node = todo.pop()
        args = typing.get_args(node)
        if typing.get_origin(node) is typing.Annotated:
            todo.append(args[0])
        elif args and typing.get_origin(node) in (typing.Union, types.UnionType):
            todo.extend(args)
        else:
            leaves.append(node)
    kinds = [leaf for leaf in leaves if leaf is not type(None)]
    return bool(kinds) and all(leaf in (int, float) for leaf in kinds)


class SplitFractions(Strict):
    """Fractions for a seeded, stratified, group-aware split when the source has none."""

    train: float = Field(0.7, gt=0, lt=1)
    val: float = Field(0.1, ge=0, lt=1)
    test: float = Field(0.2, gt=0, lt=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> "SplitFractions":
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions must sum to 1, got {total:g} (train+val+test)")
        return self


class PrepareSettings(Strict):
    """How a source is read, converted and split: every option of ``augment prepare`` except
    where from and where to. A pipeline's ``data:`` section is these plus ``source``."""

    image_size: int | None = Field(None, ge=8, le=4096, description="resize to N x N (images bilinear, masks nearest)")
    seed: Seed = 0
    count: int | None = Field(None, ge=1, le=1_000_000, description="phantom only: number of pairs (default 300, at most 1,000,000)")
    rgb: bool = Field(False, description="phantom only: RGB instead of grayscale")
    priors: list[float] | None = Field(None, description="phantom only: class priors (default 0.5, 0.35, 0.15)")
    split: SplitFractions = Field(default_factory=SplitFractions)
    binary_masks: bool = Field(False, description="map every non-zero mask value to 1 (for 0/255 masks)")
    mask_threshold: int | None = Field(
        None, ge=1, le=255, description="mask = (pixel >= N) as 0/1, for lossy (JPEG) or anti-aliased masks"
    )
    class_name: str | None = Field(
        None, min_length=1, description="folder without labels.csv: name of its one class (default lesion)"
    )
    allow_near_duplicates: bool = Field(
        False, description="accept train images that are near-copies of val/test images (the pairs are recorded in run.json)"
    )
    drop_near_duplicates: bool = Field(
        False, description="leave out of train the images that are near-copies of val/test images (recorded in run.json)"
    )

    @model_validator(mode="after")
    def _one_way_with_near_duplicates(self) -> "PrepareSettings":
        if self.allow_near_duplicates and self.drop_near_duplicates:
            raise ValueError("give allow_near_duplicates or drop_near_duplicates, not both")
        return self
    image_column: str = "image"
    mask_column: str | None = "mask"
    label_column: str = "label"
    split_column: str | None = "split"
    group_column: str | None = "group"


class PrepareConfig(PrepareSettings):
    """Options of ``augment prepare``.

    ``source`` is ``phantom`` or a path: a folder in the BUSI layout (``images/``, ``masks/``,
    ``labels.csv``, ``classes.csv``), a plain segmentation folder (``images/`` and ``masks/`` only:
    one class), a MedMNIST ``.npz``, or a Hugging Face dataset saved with ``save_to_disk``.
    """

    source: str
    out: Path
    overwrite: bool = False


MAX_VALUES = 100_000  # values a config may hold once YAML aliases are expanded (a real one has hundreds)


def _count(node: Any, limit: int) -> int:
    """How many values ``node`` holds with every alias expanded, counting no further than ``limit``
    (a shared reference is walked each time it appears, as a consumer would see it)."""
    seen, stack = 0, [node]
    while stack and seen <= limit:
        item = stack.pop()
        seen += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return seen


def safe_yaml(text: str, what: str) -> Any:
    """``yaml.safe_load`` that refuses an alias bomb: a few hundred bytes of nested ``&a [*b, *b]``
    anchors expand to billions of values in whatever walks them (a validator, an error message)."""
    try:
        data = yaml.safe_load(text)
    except RecursionError:  # PyYAML's composer recurses once per nesting level
        raise ConfigError(f"{what} nests too deeply (thousands of levels of [ or {{); write the values out") from None
    if _count(data, MAX_VALUES) > MAX_VALUES:
        raise ConfigError(f"{what} expands to more than {MAX_VALUES:,} values (nested YAML aliases?); write the values out")
    return data


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing, unreadable or non-mapping file is a ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file `{p}` does not exist")
    try:
        data = safe_yaml(p.read_text(), f"config file `{p}`")
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file `{p}` is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file `{p}` must hold a mapping of keys to values, got {type(data).__name__}")
    return data


_NUMBER = re.compile(r"[+-]?(0|[1-9][0-9]*)(\.[0-9]*)?([eE][+-]?[0-9]+)?")


def _numbers(raw: str) -> list[int | float] | None:
    """``16,32`` -> ``[16, 32]``: a bare comma list of decimal numbers is the list a user means.
    Anything else (``a,b``, ``16,``, ``1,x``; ``1,000``, as ``000`` is no plain number) is None,
    and the value stays the string YAML reads, so a comma in a name or a path is kept."""
    parts = [part.strip() for part in raw.split(",")]
    if not all(_NUMBER.fullmatch(part) for part in parts):
        return None
    return [float(part) if any(c in part for c in ".eE") else int(part) for part in parts]


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """Turn ``["train.max_steps=100", "seed=1", "budgets=16,32"]`` into a nested dict; values
    are parsed as YAML, and a bare comma list of numbers is a list (:func:`_numbers`)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set `{item}` must look like key=value (dotted keys allowed, e.g. split.val=0.15)")
        try:
            value = safe_yaml(raw, f"--set `{key}`") if raw.strip() else None
        except yaml.YAMLError:
            raise ConfigError(f"--set `{item}`: value `{raw}` is not valid YAML") from None
        if isinstance(value, str) and "," in raw:
            value = _numbers(raw) or value
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set `{item}` conflicts with an earlier --set of `{part}`")
            node = nxt
        node[parts[-1]] = value
    return out


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``overrides`` wins, and an empty mapping in ``overrides`` replaces
    (``--set evaluate.recipes={}`` means no recipes, not the spec's). Neither input is modified."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and value and isinstance(out.get(key), dict):  # an empty {} replaces: `recipes={}` means none
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _model_in(annotation: Any) -> Any:
    """The pydantic model inside ``X | None``, ``Annotated[X, ...]`` (else the annotation)."""
    if getattr(annotation, "model_fields", None):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if getattr(found, "model_fields", None):
            return found
    return annotation


def _union_member(annotation: Any, tag: Any) -> Any:
    """The member of a union of models whose ``family`` (discriminator) default is ``tag``."""
    for arg in [annotation, *typing.get_args(annotation)]:
        for member in [arg, *typing.get_args(arg)]:
            field = getattr(member, "model_fields", {}).get("family")
            if field is not None and field.default == tag:
                return member
    return None


def _describe(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """Allowed keys at the level of ``loc`` (for unknown-key messages); follows optional models
    and ``dict[str, Model]`` fields (whose keys are names, not fields)."""
    node: Any = model
    parts = list(loc[:-1])
    while parts:
        part = parts.pop(0)
        if typing.get_origin(node) is dict:
            node = _model_in(typing.get_args(node)[1])
            continue
        tagged = _union_member(node, part)
        if tagged is not None:  # a discriminated union: pydantic puts the tag in the location
            node = tagged
            continue
        fields = getattr(node, "model_fields", None)
        if not fields or part not in fields:
            return ""
        annotation = fields[part].annotation
        node = annotation if typing.get_origin(annotation) is dict or _union_member(annotation, parts[0] if parts else None) \
            else _model_in(annotation)
    fields = getattr(node, "model_fields", None)
    return ", ".join(fields) if fields else ""


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


_UNION_MEMBER = re.compile(r"(float|int|str|bool|(list|dict|tuple|set)\[.*\]|function-\w+\[.*\])")  # pydantic's loc names a union's member


def _as_written(loc: tuple[Any, ...], data: Any) -> list[str]:
    """pydantic's error location as the user wrote the key: without a union member's type name
    (``float``) or a discriminated union's tag (``generator.cvae.lr`` is ``generator.lr``)."""
    parts, node = [], data
    for part in loc:
        if isinstance(node, dict) and part not in node and node.get("family") == part:
            continue  # the tag pydantic puts in the location: the user's dict has no such key
        if _UNION_MEMBER.fullmatch(str(part)) and not (isinstance(node, dict) and part in node):
            continue
        parts.append(str(part))
        node = node.get(part) if isinstance(node, dict) else node[part] if isinstance(node, list) and isinstance(part, int) \
            and part < len(node) else None
    return parts


def validate(model: type[M], data: dict[str, Any], what: str) -> M:
    """Build ``model`` from ``data`` or raise one ConfigError line naming the first bad key."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        # A union's members each report; a non-finite number inside one of them is the real culprit.
        err = next((e for e in errors if e["type"] == "finite_number"), errors[0])
        loc = tuple(err["loc"])
        key = ".".join(_as_written(loc, data)) or "(top level)"
        if err["type"] == "extra_forbidden":
            allowed = _describe(model, loc)
            raise ConfigError(f"{what}: unknown key `{key}` (allowed: {allowed})") from None
        if err["type"] == "union_tag_invalid":
            ctx = err.get("ctx", {})
            raise ConfigError(
                f"{what}: `{key}` has unknown {ctx.get('discriminator', 'tag')} {ctx.get('tag')!r} "
                f"(allowed: {ctx.get('expected_tags')})"
            ) from None
        if err["type"] == "missing":
            raise ConfigError(f"{what}: `{key}` is required") from None
        if err["type"] == "finite_number":
            raise ConfigError(f"{what}: `{key}` must be a finite number (got {err.get('input')!r})") from None
        msg = err["msg"].removeprefix("Value error, ")
        if msg.startswith("`") and " must be a number, not " in msg:  # _no_bool_for_a_number names its key
            name, _, rest = msg[1:].partition("`")
            raise ConfigError(f"{what}: `{name if key == '(top level)' else f'{key}.{name}'}`{rest}") from None
        got = err.get("input")
        shown = "" if isinstance(got, dict) else f" (got {_short(repr(got))})"
        if err["type"] == "list_type" and isinstance(got, str):  # e.g. --set arms=real,classic
            shown += "; write a list as [a, b] (a,b also works for numbers)"
        raise ConfigError(f"{what}: `{key}`: {msg}{shown}") from None


def save_json(model: BaseModel, path: str | Path) -> None:
    """Write a config as JSON (the form that lives beside what it produced)."""
    from augment.output import write_text

    write_text(json.dumps(model.model_dump(mode="json"), indent=2, sort_keys=True) + "\n", path)


# Settings added after folders were already being written, with the value a saved config that
# lacks them was made with (a new default must not rewrite what a finished folder holds).
_WRITTEN_BEFORE = {"placement": {"backgrounds": "any"}}


def _as_made(data):
    """A saved config with every setting it predates filled in as it behaved (``_WRITTEN_BEFORE``)."""
    if isinstance(data, list):
        return [_as_made(v) for v in data]
    if not isinstance(data, dict):
        return data
    out = {k: _as_made(v) for k, v in data.items()}
    for key, then in _WRITTEN_BEFORE.items():
        if isinstance(out.get(key), dict):
            out[key] = {**then, **out[key]}
    return out


def load_json(model: type[M], path: str | Path, what: str | None = None) -> M:
    """Load a config written by :func:`save_json`; it validates exactly like YAML input. A setting
    added since the file was written takes the value the folder was made with (``_WRITTEN_BEFORE``),
    not today's default."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config `{p}` does not exist")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config `{p}` is not valid JSON (line {exc.lineno})") from None
    return validate(model, _as_made(data), what or str(p))
