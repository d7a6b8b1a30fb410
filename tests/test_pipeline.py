"""Pipeline specs: several generators side by side, shared real arms, generator seeds, and the
checks a copied spec meets before anything runs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from augment.errors import ConfigError
from augment.pipeline import load_pipeline
from tests.conftest import TINY, TINY_SPEC_TASK, run_cli, yaml_items

ROOT = Path(__file__).resolve().parents[1]
BALANCE = ROOT / "manifests" / "match_max.yaml"
CVAE = yaml_items(TINY["cvae"])
TASK = yaml_items(TINY_SPEC_TASK)


def _spec(tmp_path, body: str) -> Path:
    p = tmp_path / "p.yaml"
    p.write_text(f"data: {{source: phantom, image_size: 16, count: 60, seed: 1}}\nbudgets: [12]\nbalance: {BALANCE}\n" + body)
    return p


def test_one_generator_is_shorthand_and_entries_override_train_balance_sampler(tmp_path):
    one = load_pipeline(_spec(tmp_path, "generator: {family: cvae}\ntrain: {max_steps: 7}\n"))
    assert list(one.generators) == ["cvae"] and one.generators["cvae"].train.max_steps == 7
    many = load_pipeline(_spec(tmp_path, f"""train: {{max_steps: 7, batch_size: 4}}
generators:
  a: {{family: cvae, {CVAE}}}
  b: {{family: cvae, mode: mask, train: {{max_steps: 9}}, balance: {{mask_source: real}}, sampler: {{temperature: 0.8}}}}
"""))
    a, b = many.generators["a"], many.generators["b"]
    assert a.train.max_steps == 7 and b.train.max_steps == 9 and b.train.batch_size == 4  # merged over the spec's train
    assert a.balance.mask_source == "generated" and b.balance.mask_source == "real" and b.balance.strategy == "match_max"
    assert b.sampler == {"temperature": 0.8} and b.generator.mode == "mask"


def test_a_typo_is_reported_before_the_balance_file_is_looked_up(tmp_path):
    spec = tmp_path / "p.yaml"
    spec.write_text("data: {source: phantom}\ngenerator: {family: cvae}\nbudgetz: [16]\nbalance: nowhere/missing.yaml\n")
    with pytest.raises(ConfigError, match=r"unknown key `budgetz`"):
        load_pipeline(spec)
    spec.write_text("data: {source: phantom}\ngenerator: {family: cvae}\nbudgets: [16]\nbalance: nowhere/missing.yaml\n")
    with pytest.raises(ConfigError, match=r"balance manifest `nowhere/missing.yaml` does not exist \(looked in"):
        load_pipeline(spec)


@pytest.mark.parametrize("body,needle", [
    ("generators: {'../x': {family: cvae}}\n", "must be a plain folder name"),
    ("generators: {real: {family: cvae}}\n", "must be a plain folder name"),
    ("generators: {m: {family: cvae, mode: mask}}\n", "set its balance.mask_source to real"),
    ("generators: {j: {family: cvae, balance: {mask_source: real}}}\n", "needs a mask-conditioned generator"),
    ("generators: {j: {family: flow}}\n", "has unknown 'family' 'flow' (allowed: 'cvae', 'gan', 'ldm', 'vqvae2')"),
    ("generator: {family: cvae}\ngenerators: {j: {family: cvae}}\n", "not both"),
])
def test_bad_generator_entries_are_one_clear_line(tmp_path, body, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        load_pipeline(_spec(tmp_path, body))


def test_an_override_to_null_drops_a_generator_entry(tmp_path):
    spec = _spec(tmp_path, f"""generators:
  a: {{family: cvae, {CVAE}}}
  b: {{family: cvae, mode: mask, balance: {{mask_source: real}}}}
  c: {{family: cvae, {CVAE}}}
""")
    cfg = load_pipeline(spec, {"generators": {"a": None, "c": None, "b": {"latent_dim": 3}}})
    assert list(cfg.generators) == ["b"] and cfg.generators["b"].generator.latent_dim == 3
    assert list(load_pipeline(spec).generators) == ["a", "b", "c"]  # the file itself is untouched
    # nulls alone (the README's three-family command): the kept entries stay as the spec has them
    only = load_pipeline(spec, {"generators": {"a": None, "c": None}})
    assert list(only.generators) == ["b"] and only.generators["b"] == load_pipeline(spec).generators["b"]
    with pytest.raises(ConfigError, match=r"generators.x=null drops an entry, but the spec has none named `x` \(it has: a, b, c\)"):
        load_pipeline(spec, {"generators": {"x": None}})
    with pytest.raises(ConfigError, match="every generator entry was dropped"):
        load_pipeline(spec, {"generators": {"a": None, "b": None, "c": None}})
    cli = run_cli("run", spec, "--out", tmp_path / "o", "--set", "generators.q=null")
    assert cli.returncode == 2 and "none named `q`" in cli.stderr and not (tmp_path / "o").exists()


def test_audit_inception_weights_reach_every_audit_stage(tmp_path):
    from augment.pipeline import _stages

    weights = tmp_path / "inception.pt"
    cfg = load_pipeline(_spec(tmp_path, f"generator: {{family: cvae}}\naudit: {{inception_weights: {weights}}}\n"))
    audits = [call.args[0] for name, _, call, _, _ in _stages(cfg, tmp_path / "out") if name.startswith("audit")]
    assert audits and all(Path(a.inception_weights) == weights for a in audits)
    plain = load_pipeline(_spec(tmp_path, "generator: {family: cvae}\n"))
    assert all(call.args[0].inception_weights is None for name, _, call, _, _ in _stages(plain, tmp_path / "o2") if name.startswith("audit"))


def test_generator_seeds_map_task_seeds(tmp_path):
    cfg = load_pipeline(_spec(tmp_path, "generator: {family: cvae}\nseeds: [0, 1, 2]\ngenerator_seeds: [5, 6]\n"))
    assert [cfg.generator_seed(s) for s in cfg.seeds] == [5, 6, 5]
    cfg = load_pipeline(_spec(tmp_path, "generator: {family: cvae}\nseeds: [3, 4]\n"))
    assert [cfg.generator_seed(s) for s in cfg.seeds] == [3, 4]


def test_two_generators_side_by_side_share_the_real_arms(tmp_path):
    spec = _spec(tmp_path, f"""name: side by side
train: {{max_steps: 4, batch_size: 8, checkpoint_every: 2}}
generators:
  joint: {{family: cvae, {CVAE}}}
  masked: {{family: cvae, mode: mask, {CVAE}, balance: {{mask_source: real}}}}
seeds: [0, 1]
generator_seeds: [0]
audit: {{encoder_steps: 5, segmenter_steps: 5}}
evaluate: {{arms: [real, real+classic, real+synthetic+classic], segmentation: {{{TASK}}}}}
""")
    out = tmp_path / "out"
    res = run_cli("run", spec, "--out", out)
    assert res.returncode == 0, res.stderr[-3000:]
    # one generator per family and budget (generator seed 0 only), shared arms once per (budget, seed)
    assert sorted(p.name for p in (out / "generators" / "joint").iterdir()) == ["b12_g0"]
    for seed in (0, 1):
        assert sorted(p.name for p in (out / "evaluate" / f"b12_s{seed}").iterdir()) == ["joint", "masked", "real"]
        real = json.loads((out / "evaluate" / f"b12_s{seed}" / "real" / "run.json").read_text())
        gen = json.loads((out / "evaluate" / f"b12_s{seed}" / "masked" / "run.json").read_text())
        assert real["real_ids"] == gen["real_ids"]  # the same budget subset as the generator's
    rows = pd.read_csv(out / "tables" / "downstream.csv")
    # the spec names no recipes: every generator gets the default one (frac50)
    assert set(zip(rows["generator"], rows["arm"])) == {("none", "real"), ("none", "real+classic"),
                                                         ("joint", "real+synthetic+classic"), ("masked", "real+synthetic+classic"),
                                                         ("joint", "frac50"), ("masked", "frac50")}
    rep = json.loads((out / "report.json").read_text())
    assert {r["generator"] for r in rep["quality"]} == {"joint", "masked"}
    assert "generator seeds [0]" in rep["meta"]["protocol"]
    n = pd.read_csv(out / "data" / "manifest.csv")["split"].value_counts()  # the report names the data it ran on
    assert rep["meta"]["protocol"].startswith(f"Data: phantom at 16 px: {n['train']} train, {n['val']} val, {n['test']} test images. ")
    assert (out / "figures" / "samples_joint.png").is_file() and (out / "figures" / "samples_masked.png").is_file()
    assert "masked: real+synthetic+classic" in res.stdout and "paired delta vs real+classic" in res.stdout
    timings = json.loads((out / "timings.json").read_text())
    assert {"prepare", "train", "sample", "audit", "evaluate", "evaluate real arms", "report"} <= set(timings["by_stage"])
    syn = pd.read_csv(out / "generators" / "masked" / "b12_g0" / "synthetic" / "manifest.csv", dtype=str, keep_default_na=False)
    assert (syn["source_mask_id"] != "").all() and (pd.read_csv(out / "generators" / "joint" / "b12_g0" / "synthetic" / "manifest.csv",
                                                                 dtype=str, keep_default_na=False)["source_mask_id"] == "").all()

    # A generator added to the spec later runs alone: the finished ones and the shared arms are reused.
    spec.write_text(spec.read_text().replace("generators:\n", f"generators:\n  diffusion: {{family: ldm, {yaml_items(TINY['ldm'])}, "
                                             "sampler: {steps: 3}}\n"
                                             f"  tokens: {{family: vqvae2, {yaml_items(TINY['vqvae2'])}}}\n"))
    again = run_cli("run", spec, "--out", out)
    assert again.returncode == 0, again.stderr[-3000:]
    ran = [line for line in again.stdout.splitlines() if line.startswith("[run]")]
    assert ran and all("diffusion" in line or "tokens" in line for line in ran), ran
    assert "[skip] train (joint budget 12 gseed 0)" in again.stdout and "[skip] evaluate real arms (budget 12 seed 1)" in again.stdout
    rows = pd.read_csv(out / "tables" / "downstream.csv")
    assert ("diffusion", "real+synthetic+classic") in set(zip(rows["generator"], rows["arm"]))
    # two-stage generators' own held-out figures join the quality table (codebooks and priors for vqvae2)
    quality = pd.DataFrame(json.loads((out / "report.json").read_text())["quality"])
    own = quality[quality["extractor"] == "generator"]
    assert set(own["generator"]) == {"diffusion", "tokens"}
    tokens = own[own["generator"] == "tokens"].set_index("metric")["value"]
    assert 0 < tokens["top_codebook_usage"] <= 1
    for split in ("train", "val"):
        assert 0 <= tokens[f"prior_bottom_accuracy_{split}"] <= 1
    assert {"autoencoder_psnr", "autoencoder_ssim"} <= set(own.loc[own["generator"] == "diffusion", "metric"])
    assert "top_codebook_usage" in (out / "report.md").read_text()
    stages = json.loads((out / "timings.json").read_text())["stages"]
    assert "train (joint budget 12 gseed 0)" in stages and "train (diffusion budget 12 gseed 0)" in stages


def test_recipes_run_for_every_generator_and_can_be_added_later(tmp_path):
    spec = _spec(tmp_path, f"""name: recipes
train: {{max_steps: 3, batch_size: 8, checkpoint_every: 100}}
generators:
  masked: {{family: cvae, mode: mask, {CVAE}, balance: {{strategy: ratio, ratio: 2, mask_source: real}}}}
seeds: [0]
audit: {{enabled: false}}
evaluate:
  arms: [real+classic]
  segmentation: {{{TASK}}}
  recipes:
    half: {{mix: fraction, synthetic_fraction: 0.5}}
""")
    out = tmp_path / "out"
    cmd = ["run", spec, "--out", out]
    res = run_cli(*cmd)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "ranked by paired delta vs real+classic" in res.stdout and "masked: half" in res.stdout
    rep = json.loads((out / "report.json").read_text())
    assert [r["arm"] for r in rep["ranking"]["segmentation"]] == ["masked: half"]
    assert "half: all of the synthetic set, 50% of each batch synthetic, classic augmentation" in rep["meta"]["protocol"]
    # a recipe added to the spec trains alone; the finished recipe is reused, a changed one is refused
    spec.write_text(spec.read_text() + "    fpr: {balance: {strategy: ratio, ratio: 0}, selection: best_val_dice_fpr}\n")
    again = run_cli(*cmd)
    assert again.returncode == 0, again.stderr[-3000:]
    ran = [line for line in again.stdout.splitlines() if line.startswith("[run]")]
    assert len(ran) == 1 and "evaluate (masked budget 12 seed 0)" in ran[0], ran
    runs = sorted(p.name for p in (out / "evaluate" / "b12_s0" / "masked" / "runs").iterdir())
    assert runs == ["segmentation__fpr__seed0.json", "segmentation__half__seed0.json"]
    assert {r["recipe"] for r in json.loads((out / "report.json").read_text())["ranking"]["segmentation"]} == {"half", "fpr"}
    spec.write_text(spec.read_text().replace("synthetic_fraction: 0.5", "synthetic_fraction: 0.25"))
    changed = run_cli(*cmd)
    assert changed.returncode == 2 and "different pipeline spec (changed: evaluate)" in changed.stderr


def test_the_pick_is_made_on_val_scores_and_entries_differing_in_balance_share_a_generator(tmp_path):
    spec = _spec(tmp_path, f"""name: picks
train: {{max_steps: 4, batch_size: 8, checkpoint_every: 2}}
generators:
  masked: {{family: cvae, mode: mask, {CVAE}, balance: {{strategy: ratio, ratio: 1, mask_source: real}}}}
  masked_more: {{family: cvae, mode: mask, {CVAE}, balance: {{strategy: ratio, ratio: 2, mask_source: real}}}}
seeds: [0, 1]
generator_seeds: [0]
audit: {{enabled: false}}
evaluate: {{arms: [real+classic, real+synthetic+classic], segmentation: {{{TASK}}}}}
""")
    out = tmp_path / "out"
    res = run_cli("run", spec, "--out", out)
    assert res.returncode == 0, res.stderr[-3000:]
    # one training for both entries: masked_more samples masked's generator
    assert "train (masked_more" not in res.stdout and not (out / "generators" / "masked_more" / "b12_g0" / "generator").exists()
    record = json.loads((out / "generators" / "masked_more" / "b12_g0" / "synthetic" / "run.json").read_text())
    assert Path(record["config"]["generator"]).resolve() == (out / "generators" / "masked" / "b12_g0" / "generator").resolve()
    more = pd.read_csv(out / "generators" / "masked_more" / "b12_g0" / "synthetic" / "manifest.csv")
    assert len(more) == 2 * len(pd.read_csv(out / "generators" / "masked" / "b12_g0" / "synthetic" / "manifest.csv"))
    # every evaluation keeps its val scores beside its test scores, for the same (arm, seed, metric)
    evals = sorted((out / "evaluate").glob("b12_s*/*"))
    for folder in evals:
        test, val = pd.read_csv(folder / "results.csv"), pd.read_csv(folder / "val_results.csv")
        keys = ["arm", "seed", "metric"]
        assert set(map(tuple, val[keys].to_numpy())) == set(map(tuple, test[keys].to_numpy()))
    rep = json.loads((out / "report.json").read_text())
    picked = rep["selection"]["segmentation"]
    assert picked["overall"][0] in ("masked", "masked_more") and rep["verdicts"][0]["headline"]
    assert rep["verdicts"][0]["selected_on"] == "validation" and "1 generator seed" in rep["verdicts"][0]["line"]
    # poison the test split's scores so that every arm but the pick wins on test: the pick stays
    pick = tuple(picked["overall"])
    for folder in evals:
        test = pd.read_csv(folder / "results.csv")
        chosen = (test["generator"] == pick[0]) & (test["arm"] == pick[1])
        test.loc[test["arm"] != "real+classic", "value"] = 0.99
        test.loc[chosen, "value"] = 0.0
        test.to_csv(folder / "results.csv", index=False)
    again = run_cli("report", out)
    assert again.returncode == 0, again.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    assert rep["selection"]["segmentation"] == picked
    assert rep["ranking"]["segmentation"][-1]["arm"] == f"{pick[0]}: {pick[1]}"  # last on test
    assert rep["verdicts"][0]["generator"] == pick[0] and rep["verdicts"][0]["arm"] == pick[1]


def test_stage_times_of_a_failed_invocation_are_kept_for_the_next(tmp_path, monkeypatch):
    import augment.evaluate
    from augment.errors import DataError
    from augment.pipeline import run_pipeline

    spec = _spec(tmp_path, f"""train: {{max_steps: 2, batch_size: 8, checkpoint_every: 100}}
generators:
  g: {{family: cvae, {CVAE}}}
seeds: [0]
audit: {{enabled: false}}
evaluate: {{arms: [real+synthetic+classic], recipes: {{}}, segmentation: {{{TASK}}}}}
""")
    out = tmp_path / "out"
    real_evaluate = augment.evaluate.evaluate

    def failing(*args, **kwargs):
        raise DataError("evaluation failed on purpose")

    monkeypatch.setattr(augment.evaluate, "evaluate", failing)
    with pytest.raises(DataError, match="on purpose"):
        run_pipeline(load_pipeline(spec), out, echo=lambda *_: None)
    kept = json.loads((out / "timings.json").read_text())
    assert kept["finished"] is False and set(kept["stages"]) == {"prepare", "train (g budget 12 gseed 0)", "sample (g budget 12 gseed 0)"}
    monkeypatch.setattr(augment.evaluate, "evaluate", real_evaluate)
    run_pipeline(load_pipeline(spec), out, echo=lambda *_: None)
    final = json.loads((out / "timings.json").read_text())
    assert final["stages"]["train (g budget 12 gseed 0)"] == kept["stages"]["train (g budget 12 gseed 0)"]
    assert "evaluate (g budget 12 seed 0)" in final["stages"] and "wall_seconds" in final
