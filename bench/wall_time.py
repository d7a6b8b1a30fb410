"""Benchmark: wall time of a pipeline, per stage.

Without ``--run``, runs the quickstart (``augment run pipelines/quickstart.yaml``) into a fresh
folder (``--out`` keeps it) and prints its time per stage, from the run's ``timings.json``,
against the 120 s target. With ``--run RUN`` prints the per-stage table of an ``augment run``
folder (e.g. a BUSI comparison): a finished run's ``timings.json``, or, while a run is still
going, the stages its ``timings.json`` lists so far (written as each stage ends), or, for a run
from before that, the ``wall_seconds`` of each finished stage's own record (``run.json``; a stage
resumed after a kill counts only its last session).

With ``--estimate SPEC`` (or ``--estimate-full``) as well, estimates SPEC's full wall time from
RUN's measured stages. SPEC's stage list is the one ``augment run`` itself would walk; each stage
takes, in this order of preference: its own measured time (same name in RUN); the mean of RUN's
stages of the same kind and generator at the same budget (another seed); of the same kind and
generator at any budget; of the same kind and generator family (e.g. ``ldm`` from ``ldm_mask``);
of the same kind (stages without a generator). A stage none of these covers is listed as missing
and the total is then a lower bound. The table says which rule each group of stages used.

    python bench/wall_time.py [--spec pipelines/quickstart.yaml] [--out DIR] [--json PATH]
    python bench/wall_time.py --run runs/busi_mask [--estimate pipelines/busi_compare.yaml] [--target 7200]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from _results import conditions, default_json, describe, verdict, write  # bench/_results.py

ROOT = Path(__file__).resolve().parents[1]
STAGE = re.compile(r"^(?P<kind>[a-z ]+?)(?: \((?P<what>.*)\))?$")
BUDGET = re.compile(r"budget (\d+)")
KINDS = ("prepare", "evaluate real arms", "train", "sample", "audit", "evaluate", "report")  # the order a run goes in
BASIS = ("measured", "same stage, other seed", "same generator, other budget", "same family", "same kind", "missing")


def parse(name: str) -> tuple[str, str | None, int | None]:
    """('train', 'cvae_mask', 16) for 'train (cvae_mask budget 16 gseed 0)';
    ('evaluate real arms', None, 16); ('prepare', None, None)."""
    m = STAGE.match(name)
    kind, what = m.group("kind"), m.group("what") or ""
    budget = BUDGET.search(what)
    gen = None if kind == "evaluate real arms" or not what else what.split(" budget ")[0]
    return kind, gen, int(budget.group(1)) if budget else None


def _families(pipeline: dict) -> dict[str, str]:
    return {name: g["generator"]["family"] for name, g in pipeline["generators"].items()}


def _spec_stages(cfg, out: Path) -> list[tuple]:
    """(name, folder, call, marker, needs) of every stage ``augment run`` walks for ``cfg`` into
    ``out`` (building them writes nothing; each once), then the report."""
    from augment.pipeline import _stages

    return [*_stages(cfg, out), ("report", out, None, None, ())]


def stage_times(run: Path) -> tuple[dict[str, float], float | None, str]:
    """Seconds per stage name, the run's wall seconds (None while unfinished) and where they came from."""
    if (run / "timings.json").is_file():
        timings = json.loads((run / "timings.json").read_text())
        if timings.get("finished", True):  # written as each stage ends; a finished run adds its wall time
            return timings["stages"], timings["wall_seconds"], f"{run / 'timings.json'}"
        return timings["stages"], None, f"{run / 'timings.json'} (unfinished run: its finished stages)"
    from augment.config import load_json
    from augment.gather import _done
    from augment.pipeline import PipelineConfig

    cfg = load_json(PipelineConfig, run / "pipeline.json")
    times = {}
    for name, folder, _, marker, _ in _spec_stages(cfg, run):
        if marker is not None and _done(folder, marker) and (folder / "run.json").is_file():
            times[name] = json.loads((folder / "run.json").read_text())["wall_seconds"]
    return times, None, f"the finished stages' own run.json records ({run / 'timings.json'} does not exist yet: unfinished run)"


def table(stages: dict[str, float]) -> list[dict]:
    """Per (stage kind, generator): count, total and mean seconds."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    for name, seconds in stages.items():
        kind, gen, _ = parse(name)
        groups[kind, gen].append(seconds)
    order = {k: i for i, k in enumerate(KINDS)}
    keys = sorted(groups, key=lambda kg: (order.get(kg[0], len(order)), kg[1] or ""))  # timings.json is key-sorted
    return [{"stage": kind, "generator": gen or "-", "count": len(groups[kind, gen]), "total_s": round(sum(groups[kind, gen]), 1),
             "mean_s": round(statistics.mean(groups[kind, gen]), 1)} for kind, gen in keys]


def estimate(stages: dict[str, float], run_families: dict[str, str], spec_path: Path) -> tuple[list[dict], list[str]]:
    """Each stage of ``spec_path`` with its estimated seconds and the rule it came from (see the
    module docstring); and the names of the stages no rule covered."""
    from augment.pipeline import load_pipeline

    spec = load_pipeline(spec_path)
    families = {**run_families, **{name: e.generator.family for name, e in spec.generators.items()}}
    measured = [(parse(n), s, n) for n, s in stages.items()]
    rows, missing = [], []
    with tempfile.TemporaryDirectory() as tmp:
        names = [name for name, *_ in _spec_stages(spec, Path(tmp))]
    for name in names:
        kind, gen, budget = parse(name)
        fam = families.get(gen)
        rules = (
            lambda k, g, b, n: n == name,
            lambda k, g, b, n: (k, g, b) == (kind, gen, budget),
            lambda k, g, b, n: gen is not None and (k, g) == (kind, gen),
            lambda k, g, b, n: gen is not None and k == kind and g is not None and run_families.get(g) == fam,
            lambda k, g, b, n: gen is None and k == kind,
        )
        for basis, rule in zip(BASIS, rules):
            hits = [s for parsed, s, n in measured if rule(*parsed, n)]
            if hits:
                rows.append({"stage": name, "kind": kind, "generator": gen or "-", "seconds": statistics.mean(hits),
                             "basis": basis, "from_n": len(hits)})
                break
        else:
            rows.append({"stage": name, "kind": kind, "generator": gen or "-", "seconds": 0.0, "basis": "missing", "from_n": 0})
            missing.append(name)
    return rows, missing


def _run_quickstart(spec: Path, out: Path) -> float:
    if out.exists() and any(out.iterdir()):
        sys.exit(f"--out {out} is not empty: augment run would skip its finished stages; give a new folder")
    print(f"augment run {spec} --out {out} ...", flush=True)
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "augment", "run", str(spec), "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        how = f"killed by signal {-res.returncode}" if res.returncode < 0 else f"exit status {res.returncode}"
        tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-5:])
        sys.exit(f"augment run failed ({how}) after {time.perf_counter() - t:.0f} s; its last lines:\n{tail}")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", type=Path, default=ROOT / "pipelines" / "quickstart.yaml", help="the spec to run (without --run)")
    ap.add_argument("--out", type=Path, default=None, help="without --run: keep the run in this new folder (default: a temporary one)")
    ap.add_argument("--run", type=Path, default=None, help="an augment run folder to read instead of running (finished or not)")
    ap.add_argument("--estimate", "--estimate-full", type=Path, default=None, metavar="SPEC",
                    help="with --run: estimate this spec's full wall time from the run's measured stages")
    ap.add_argument("--target", type=float, default=None, help="seconds (default: 120 for a run made here, 7200 for --estimate)")
    ap.add_argument("--json", type=Path, default=default_json("wall_time"))
    args = ap.parse_args()
    if args.estimate and args.run is None:
        sys.exit("--estimate needs --run RUN (the run whose measured stages it scales)")
    cond = conditions()
    payload = {"benchmark": "wall_time", "conditions": cond}
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or args.out or Path(tmp) / "run"
        if args.run is None:
            payload["process_seconds"] = round(_run_quickstart(args.spec, run), 2)
        stages, wall, source = stage_times(run)
        pipeline = json.loads((run / "pipeline.json").read_text())
    rows = table(stages)
    total = sum(stages.values())
    head = f"wall {wall:.0f} s (timings.json)" if wall is not None else f"unfinished; {len(stages)} stages done"
    print(f"\n{pipeline.get('name', run)} ({run}): {head}; {describe(cond)}")
    print(f"per stage, from {source}")
    if "process_seconds" in payload:
        print(f"the augment run process took {payload['process_seconds']:.1f} s including interpreter start-up and imports")
    print(f"{'stage':<20}{'generator':<14}{'count':>6}{'total s':>10}{'mean s':>9}")
    for r in rows:
        print(f"{r['stage']:<20}{r['generator']:<14}{r['count']:>6}{r['total_s']:>10.1f}{r['mean_s']:>9.1f}")
    print(f"{'all stages':<34}{'':>6}{total:>10.1f}")
    payload.update(run=str(args.run or args.out or "(temporary)"), spec=pipeline.get("name"), source=source,
                   wall_seconds=wall, stages=stages, rows=rows)
    if args.estimate:
        parts, missing = estimate(stages, _families(pipeline), args.estimate)
        seconds = sum(p["seconds"] for p in parts)
        target = args.target or 7200
        groups: dict[tuple, list[dict]] = defaultdict(list)
        for p in parts:
            groups[p["kind"], p["generator"]].append(p)
        print(f"\nESTIMATE (not a measurement) of the full wall time of {args.estimate}: {len(parts)} stages, each "
              f"timed from {run}'s measured stages by the first rule that applies (see bench/wall_time.py)")
        print(f"{'stage':<20}{'generator':<14}{'count':>6}{'est. s':>9}  basis (stages)")
        for (kind, gen), ps in groups.items():
            basis = ", ".join(f"{b} {sum(p['basis'] == b for p in ps)}" for b in BASIS if any(p["basis"] == b for p in ps))
            print(f"{kind:<20}{gen:<14}{len(ps):>6}{sum(p['seconds'] for p in ps):>9.0f}  {basis}")
        if missing:
            print(f"{len(missing)} stages have no measured stage of their kind to go by (e.g. {missing[0]}); "
                  f"the estimate {seconds:.0f} s = {seconds / 3600:.2f} h is a lower bound: no verdict")
        else:
            print(verdict(seconds <= target, f"estimated {seconds:.0f} s = {seconds / 3600:.2f} h (target {target:.0f} s)"))
        payload["estimate"] = {"spec": str(args.estimate), "seconds": round(seconds), "target_s": target,
                               "missing": missing, "stages": parts}
    elif args.run is None:
        target = args.target or 120
        print(verdict(wall <= target, f"{args.spec.name}: {wall:.0f} s in timings.json (target {target:.0f} s)"))
        payload["target_s"] = target
    write(payload, args.json)


if __name__ == "__main__":
    main()
