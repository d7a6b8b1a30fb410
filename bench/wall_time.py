"""Benchmark: wall time of a pipeline, per stage, from the run's own ``timings.json``.

Without ``--run``, runs the quickstart (``augment run pipelines/quickstart.yaml``) into a fresh
folder and prints its time per stage against the 120 s target. With ``--run RUN`` prints the
per-stage table of a finished ``augment run`` (e.g. a BUSI comparison). With ``--estimate SPEC``
as well, estimates SPEC's full wall time from RUN's measured stages: the mean time of each kind
of stage (train, sample, audit, evaluate real arms, evaluate per generator and seed) for each
generator family, times the number of such stages SPEC has (an estimate, printed as one).

    python bench/wall_time.py [--spec pipelines/quickstart.yaml] [--json PATH]
    python bench/wall_time.py --run runs/busi_mask [--estimate pipelines/busi_compare.yaml] [--target 7200]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from _results import conditions, default_json, describe, verdict, write  # bench/_results.py

ROOT = Path(__file__).resolve().parents[1]
STAGE = re.compile(r"^(?P<kind>[a-z ]+?)(?: \((?P<what>.*)\))?$")


def _kind(name: str) -> tuple[str, str | None]:
    """('train', 'cvae_mask') for 'train (cvae_mask budget 16 gseed 0)'; ('evaluate real arms', None)."""
    m = STAGE.match(name)
    kind, what = m.group("kind"), m.group("what")
    if kind == "evaluate real arms" or what is None:
        return kind, None
    return kind, what.split(" budget ")[0]


def table(timings: dict) -> list[dict]:
    """Per (stage kind, generator): count, total and mean seconds."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    for name, seconds in timings["stages"].items():
        groups[_kind(name)].append(seconds)
    return [{"stage": kind, "generator": gen or "-", "count": len(v), "total_s": round(sum(v), 1),
             "mean_s": round(sum(v) / len(v), 1)} for (kind, gen), v in groups.items()]


def estimate(rows: list[dict], spec_path: Path, run_spec: dict) -> tuple[float, list[dict]]:
    """SPEC's stage counts times the measured mean per (kind, family); a generator of SPEC that
    RUN lacks borrows the mean of RUN's generator of the same family (mode-blind)."""
    from augment.pipeline import load_pipeline

    spec = load_pipeline(spec_path)
    budgets, seeds = len(spec.budgets), len(spec.seeds)
    gseeds = len(dict.fromkeys(spec.generator_seed(s) for s in spec.seeds))
    families = {name: g["generator"]["family"] for name, g in run_spec["generators"].items()}
    mean = {(r["stage"], r["generator"]): r["mean_s"] for r in rows}
    out, total = [], 0.0
    real = mean.get(("evaluate real arms", "-"), 0.0)
    out.append({"stage": "evaluate real arms", "generator": "-", "count": budgets * seeds, "seconds": real * budgets * seeds})
    for name, entry in spec.generators.items():
        donor = name if name in families else next((g for g, f in families.items() if f == entry.generator.family), None)
        if donor is None:
            raise SystemExit(f"{spec_path}: generator {name} ({entry.generator.family}) has no measured stage of its family in the run")
        for kind, count in (("train", budgets * gseeds), ("sample", budgets * gseeds), ("audit", budgets * gseeds),
                            ("evaluate", budgets * seeds)):
            out.append({"stage": kind, "generator": name, "from": donor, "count": count,
                        "seconds": mean.get((kind, donor), 0.0) * count})
    total = sum(r["seconds"] for r in out) + mean.get(("prepare", "-"), 0.0) + mean.get(("report", "-"), 0.0)
    return total, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", type=Path, default=ROOT / "pipelines" / "quickstart.yaml", help="the spec to run (without --run)")
    ap.add_argument("--run", type=Path, default=None, help="a finished augment run folder to read instead of running")
    ap.add_argument("--estimate", type=Path, default=None, help="with --run: estimate this spec's wall time from the run")
    ap.add_argument("--target", type=float, default=None, help="seconds (default: 120 for a run made here, 7200 for --estimate)")
    ap.add_argument("--json", type=Path, default=default_json("wall_time"))
    args = ap.parse_args()
    cond = conditions()
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run
        if run is None:
            run = Path(tmp) / "run"
            t = time.perf_counter()
            res = subprocess.run([sys.executable, "-m", "augment", "run", str(args.spec), "--out", str(run)],
                                 capture_output=True, text=True, cwd=ROOT)
            if res.returncode != 0:
                sys.exit(res.stderr)
            print(f"augment run {args.spec.name}: {time.perf_counter() - t:.1f} s including start-up")
        timings = json.loads((run / "timings.json").read_text())
        run_spec = json.loads((run / "pipeline.json").read_text())
    rows = table(timings)
    print(f"\n{run_spec.get('name', run)}: wall {timings['wall_seconds']:.0f} s (this invocation); {describe(cond)}")
    print(f"{'stage':<20}{'generator':<14}{'count':>6}{'total s':>10}{'mean s':>9}")
    for r in rows:
        print(f"{r['stage']:<20}{r['generator']:<14}{r['count']:>6}{r['total_s']:>10.1f}{r['mean_s']:>9.1f}")
    measured = sum(timings["stages"].values())
    print(f"{'all stages':<34}{'':>6}{measured:>10.1f}")
    payload = {"benchmark": "wall_time", "run": str(args.run or args.spec), "conditions": cond, "timings": timings, "rows": rows}
    if args.estimate:
        total, parts = estimate(rows, args.estimate, run_spec)
        target = args.target or 7200
        print(f"\nESTIMATE for {args.estimate} from the stages measured above (mean per stage kind and family x its count):")
        for r in parts:
            print(f"  {r['stage']:<20}{r['generator']:<14}x{r['count']:<4}{r['seconds']:>9.0f} s")
        print(verdict(total <= target, f"estimated {total:.0f} s = {total / 3600:.2f} h (target {target:.0f} s)"))
        payload["estimate"] = {"spec": str(args.estimate), "seconds": round(total), "parts": parts, "target_s": target}
    elif args.run is None:
        target = args.target or 120
        print(verdict(timings["wall_seconds"] <= target, f"{args.spec.name}: {timings['wall_seconds']:.0f} s (target {target:.0f} s)"))
    write(payload, args.json)


if __name__ == "__main__":
    main()
