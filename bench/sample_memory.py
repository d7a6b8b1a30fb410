"""Benchmark: peak memory and wall time of `augment sample` for 500 and 5,000 synthetic pairs.

Runs `augment sample` in a fresh process for each N (strategy `total`, equal class weights) and
reads that process's peak RSS, so the figures show whether memory grows with N (it should not:
batches are streamed to disk). A run of ``--n-min`` pairs measures the fixed cost of a process
(imports, loading the generator, the first batch); time linearity compares the per-pair time
beyond that fixed cost at the largest N with the one at the smallest N.

Targets: peak RSS at the largest N <= 1.1x the one at the smallest; per-pair time within 10% of
linear. Without ``--generator`` a cVAE is trained for a few steps on the built-in phantom at
64 px (sampling cost does not depend on how well it was trained).

    python bench/sample_memory.py [--generator RUN] [--n 500 5000] [--batch-size 16] [--repeats 1] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import conditions, default_json, describe, verdict, write  # bench/_results.py

CODE = ("import resource, sys; from augment.cli import main; rc = main(sys.argv[1:]); "
        "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")


def _cli(args: list[str]) -> tuple[float, int, str]:
    """(wall seconds, peak RSS KiB, stdout) of ``augment ARGS`` in a fresh process."""
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", CODE, *args], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if res.returncode != 0:
        sys.exit(f"augment {' '.join(args)} failed:\n{res.stderr.strip()}")
    return wall, int(res.stdout.split("PEAK_RSS_KB")[1].split()[0]), res.stdout


def _tiny_cvae(tmp: Path) -> Path:
    data, run = tmp / "data", tmp / "gen"
    _cli(["prepare", "--source", "phantom", "--out", str(data), "--image-size", "64", "--count", "200"])
    _cli(["train", "--data", str(data), "--generator", "cvae", "--out", str(run), "--budget", "64",
          "--set", "train.max_steps=5", "--set", "train.checkpoint_every=5"])
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--generator", default=None, help="a trained generator run (default: a 5-step cVAE on the phantom)")
    ap.add_argument("--n", type=int, nargs="+", default=[500, 5000])
    ap.add_argument("--n-min", type=int, default=16, help="pairs of the run that measures the fixed per-process cost")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=1, help="fresh processes per N: the fastest wall time and the largest peak RSS count")
    ap.add_argument("--json", type=Path, default=default_json("sample_memory"))
    args = ap.parse_args()
    cond = conditions()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generator = Path(args.generator) if args.generator else _tiny_cvae(tmp)
        classes = json.loads((generator / "run.json").read_text())["classes"]
        mode = json.loads((generator / "config.json").read_text())["generator"].get("mode", "joint")
        masks = "mask_source: real\n" if mode == "mask" else ""  # a mask-conditioned generator draws on real masks
        for n in [args.n_min, *args.n]:
            manifest = tmp / f"total_{n}.yaml"
            manifest.write_text(f"strategy: total\ntotal: {n}\nweights: {{{', '.join(f'{c}: 1' for c in classes)}}}\n{masks}")
            walls, peaks = [], []
            for rep in range(args.repeats):
                out = tmp / f"syn_{n}_{rep}"
                wall, peak, _ = _cli(["sample", "--generator", str(generator), "--balance", str(manifest), "--out", str(out),
                                      "--batch-size", str(args.batch_size)])
                walls.append(round(wall, 2))
                peaks.append(round(peak / 1024, 1))
                made = len((out / "manifest.csv").read_text().splitlines()) - 1
                shutil.rmtree(out)
                print(f"N={n}: {wall:.1f} s, peak RSS {peak / 1024:.0f} MiB", flush=True)
            # the fastest run is the least disturbed by other work; the largest peak is the safe one
            rows.append({"n": n, "pairs_written": made, "wall_s": min(walls), "peak_rss_mib": max(peaks),
                         "wall_s_runs": walls, "peak_rss_mib_runs": peaks})
    fixed = rows[0]["wall_s"]
    for r in rows[1:]:
        r["ms_per_pair_beyond_fixed"] = round(1000 * (r["wall_s"] - fixed) / (r["n"] - args.n_min), 3)
    small, large = rows[1], rows[-1]
    memory_ratio = large["peak_rss_mib"] / small["peak_rss_mib"]
    linearity = large["ms_per_pair_beyond_fixed"] / small["ms_per_pair_beyond_fixed"]
    print(f"\naugment sample, {generator}, batch {args.batch_size}, fastest of {args.repeats} fresh process(es) per N; "
          f"{describe(cond)}")
    print(f"{'N':>6}{'written':>9}{'wall s':>9}{'ms/pair beyond fixed':>22}{'peak RSS MiB':>14}")
    for r in rows:
        per = r.get("ms_per_pair_beyond_fixed")
        print(f"{r['n']:>6}{r['pairs_written']:>9}{r['wall_s']:>9.1f}{'(fixed cost)' if per is None else f'{per:.2f}':>22}"
              f"{r['peak_rss_mib']:>14.0f}")
    print(verdict(memory_ratio <= 1.1, f"peak RSS ratio N={large['n']} / N={small['n']}: {memory_ratio:.3f} (target <= 1.1)"))
    print(verdict(abs(linearity - 1) <= 0.1, f"time per pair at N={large['n']} / at N={small['n']}: {linearity:.3f} "
                                             "(target within 10% of linear: 0.9 .. 1.1)"))
    write({"benchmark": "sample_memory", "generator": str(generator), "batch_size": args.batch_size, "conditions": cond,
           "rows": rows, "memory_ratio": round(memory_ratio, 3), "time_linearity": round(linearity, 3)}, args.json)


if __name__ == "__main__":
    main()
