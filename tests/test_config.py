"""Config at the edge: overrides, unknown keys, clear messages, JSON round trip."""

from __future__ import annotations

import pytest

from augment.config import PrepareConfig, Strict, load_json, load_yaml, merge, parse_overrides, save_json, validate
from augment.errors import ConfigError


def test_parse_overrides_nested_and_typed():
    got = parse_overrides(["split.val=0.15", "seed=3", "source=phantom", "priors=[0.2, 0.3, 0.5]", "rgb=true"])
    assert got == {"split": {"val": 0.15}, "seed": 3, "source": "phantom", "priors": [0.2, 0.3, 0.5], "rgb": True}


@pytest.mark.parametrize("raw,value", [
    ("16,32", [16, 32]), ("0.1, 0.2,0.7", [0.1, 0.2, 0.7]), ("-1,2e3", [-1, 2000.0]), ("[16,32]", [16, 32]),
    ("a,b", "a,b"), ("16,", "16,"), ("1,x", "1,x"), ("1,000", "1,000"), ('"1,2"', "1,2"), ("scan 1,2.png", "scan 1,2.png"),
])
def test_parse_overrides_reads_a_comma_list_of_numbers_as_a_list(raw, value):
    assert parse_overrides([f"k={raw}"]) == {"k": value}


def test_pipeline_budgets_from_a_comma_list():
    from pathlib import Path

    from augment.pipeline import load_pipeline

    spec = Path(__file__).resolve().parents[1] / "pipelines" / "quickstart.yaml"
    assert load_pipeline(spec, parse_overrides(["budgets=16,32"])).budgets == [16, 32]


def test_shipped_pipeline_specs_load():
    """Every spec under pipelines/ validates (family settings, loops, balancing plans, sampler keys),
    so a spec the README points at cannot rot unnoticed; the inpainting comparison holds every
    family in both mask-conditioned modes."""
    from pathlib import Path

    from augment.pipeline import load_pipeline

    shipped = {p.name: load_pipeline(p) for p in sorted((Path(__file__).resolve().parents[1] / "pipelines").glob("*.yaml"))}
    assert set(shipped) >= {"quickstart.yaml", "busi_compare.yaml", "busi_inpaint.yaml"}
    modes = {(spec.generator.family, spec.generator.mode) for spec in shipped["busi_inpaint.yaml"].generators.values()}
    assert modes == {(f, m) for f in ("cvae", "ldm", "vqvae2", "gan") for m in ("mask", "inpaint")}


def test_a_string_where_a_list_belongs_says_how_to_write_a_list():
    with pytest.raises(ConfigError, match=r"`priors`: .*valid list \(got '0.5,x'\); write a list as \[a, b\]"):
        validate(PrepareConfig, {"source": "phantom", "out": "x", "priors": "0.5,x"}, "prepare")


@pytest.mark.parametrize("bad", ["noequals", "=3", "a..b=1", "x=[1,"])
def test_parse_overrides_rejects_malformed(bad):
    with pytest.raises(ConfigError, match="--set"):
        parse_overrides([bad])


def test_merge_is_recursive_and_pure():
    base = {"a": {"b": 1, "c": 2}, "d": 1}
    out = merge(base, {"a": {"b": 5}})
    assert out == {"a": {"b": 5, "c": 2}, "d": 1} and base["a"]["b"] == 1


def test_unknown_key_names_it_and_lists_allowed():
    with pytest.raises(ConfigError, match=r"prepare: unknown key `imagesize` \(allowed: image_size, seed, .*, source, out, overwrite\)"):
        validate(PrepareConfig, {"source": "phantom", "out": "x", "imagesize": 3}, "prepare")


def test_unknown_nested_key():
    with pytest.raises(ConfigError, match=r"unknown key `split.holdout` \(allowed: train, val, test\)"):
        validate(PrepareConfig, {"source": "phantom", "out": "x", "split": {"holdout": 0.1}}, "prepare")


def test_bad_value_and_missing_key():
    with pytest.raises(ConfigError, match=r"`image_size`: .*greater than or equal to 8 \(got 4\)"):
        validate(PrepareConfig, {"source": "phantom", "out": "x", "image_size": 4}, "prepare")
    with pytest.raises(ConfigError, match=r"`out` is required"):
        validate(PrepareConfig, {"source": "phantom"}, "prepare")
    with pytest.raises(ConfigError, match=r"split fractions must sum to 1"):
        validate(PrepareConfig, {"source": "phantom", "out": "x", "split": {"train": 0.5}}, "prepare")


def test_json_round_trip(tmp_path):
    cfg = validate(PrepareConfig, {"source": "phantom", "out": "d", "image_size": 32, "split": {"val": 0.2, "test": 0.1}}, "p")
    save_json(cfg, tmp_path / "config.json")
    assert load_json(PrepareConfig, tmp_path / "config.json") == cfg


def test_load_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_yaml(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_yaml(tmp_path / "list.yaml")


@pytest.mark.parametrize("extra,needle", [
    ({"train": {"phases": {"main": {"lrr": 1}}}}, "unknown key `train.phases.main.lrr` (allowed: max_steps, batch_size, lr,"),
    ({"generator": {"family": "cvae", "foo": 1}}, "unknown key `generator.foo` (allowed: family, latent_dim,"),
])
def test_unknown_keys_in_nested_maps_and_families_name_what_is_allowed(extra, needle):
    from augment.generators import TrainConfig

    with pytest.raises(ConfigError) as exc:
        validate(TrainConfig, {"data": "x", "out": "y", "generator": {"family": "cvae"}, **extra}, "train")
    assert needle in str(exc.value)


BOMB = "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefg", "bcdefgh"))


def test_a_yaml_alias_bomb_is_refused_in_a_file_and_in_a_set(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text('a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + BOMB + "name: *h\n")
    assert len(path.read_text()) < 1000
    with pytest.raises(ConfigError, match=r"expands to more than 100,000 values \(nested YAML aliases\?\)"):
        load_yaml(path)
    with pytest.raises(ConfigError, match=r"--set `name` expands to more than"):
        parse_overrides(["name=" + "{a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1], " + BOMB.replace("\n", ", ").replace(": &", ": &") + "z: *h}"])
    few = tmp_path / "few.yaml"
    few.write_text("base: &b {lr: 0.1}\ntrain: *b\n")  # ordinary anchors still work
    assert load_yaml(few)["train"] == {"lr": 0.1}


def test_an_empty_mapping_override_replaces_instead_of_merging():
    spec = {"evaluate": {"recipes": {"frac50": {"synthetic_fraction": 0.5}}, "seeds": [0]}}
    assert merge(spec, parse_overrides(["evaluate.recipes={}"])) == {"evaluate": {"recipes": {}, "seeds": [0]}}
    assert merge(spec, parse_overrides(["evaluate.seeds=[1]"]))["evaluate"]["recipes"] == spec["evaluate"]["recipes"]


def test_a_huge_bad_value_is_shown_short():
    class M(Strict):
        n: int = 0

    with pytest.raises(ConfigError) as exc:
        validate(M, {"n": "x" * 100_000}, "m")
    assert len(str(exc.value)) < 300 and str(exc.value).endswith("...)")


def test_nan_and_infinity_are_refused_by_every_config_model():
    class M(Strict):
        x: float = 1.0
        y: dict[str, float] | float = 1.0

    for data, key in [({"x": float("nan")}, "`x`"), ({"x": float("-inf")}, "`x`"), ({"y": {"a": float("inf")}}, "`y.a`")]:
        with pytest.raises(ConfigError, match=f"{key} must be a finite number"):
            validate(M, data, "m")


def test_a_bool_is_never_read_as_a_number():
    class Inner(Strict):
        steps: int = 1
        flag: bool = False
        either: bool | float = 0.5

    class M(Strict):
        x: float | None = 1.0
        inner: Inner = Inner()

    with pytest.raises(ConfigError, match=r"^m: `x` must be a number, not true$"):
        validate(M, {"x": True}, "m")
    with pytest.raises(ConfigError, match=r"^m: `inner.steps` must be a number, not false$"):
        validate(M, {"inner": {"steps": False}}, "m")
    assert validate(M, {"inner": {"flag": True, "either": True}}, "m").inner.either is True


def test_a_key_inside_a_family_is_named_as_written_without_the_union_tag():
    from augment.generators import TrainConfig

    with pytest.raises(ConfigError, match=r"^train: `generator.base_channels`: Input should be less than or equal to 2048"):
        validate(TrainConfig, {"data": "d", "out": "o", "generator": {"family": "cvae", "base_channels": 10**6}}, "train")
    with pytest.raises(ConfigError, match=r"^train: `generator.unet_channels`: give 1 to 8 widths"):
        validate(TrainConfig, {"data": "d", "out": "o", "generator": {"family": "ldm", "unet_channels": [8, 10**6]}}, "train")
