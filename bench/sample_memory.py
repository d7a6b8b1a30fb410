"""Benchmark: sampling throughput and peak memory at two sizes of synthetic set.

Runs `augment sample` in a fresh process for each N (strategy `total`, equal class weights) and
reads that process's peak RSS, so the figures show whether memory grows with N (it should not:
batches are streamed to disk).

    python bench/sample_memory.py --generator RUN [--n 200 2000] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--generator", required=True)
    ap.add_argument("--n", type=int, nargs="+", default=[200, 2000])
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    classes = json.loads((Path(args.generator) / "run.json").read_text())["classes"]
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.n:
            manifest = Path(tmp) / f"total_{n}.yaml"
            manifest.write_text(f"strategy: total\ntotal: {n}\nweights: {{{', '.join(f'{c}: 1' for c in classes)}}}\n")
            out = Path(tmp) / f"syn_{n}"
            code = (
                "import resource, sys; from augment.cli import main; rc = main(sys.argv[1:]); "
                "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)"
            )
            t = time.time()
            res = subprocess.run([sys.executable, "-c", code, "sample", "--generator", args.generator, "--balance", str(manifest),
                                  "--out", str(out), "--batch-size", str(args.batch_size)], capture_output=True, text=True)
            wall = time.time() - t
            if res.returncode != 0:
                sys.exit(res.stderr)
            peak = int(res.stdout.split("PEAK_RSS_KB")[1].split()[0])
            info = json.loads((out / "run.json").read_text())
            print(f"N={n:5d}: wall {wall:6.1f} s (incl. start-up), sampling {info['samples_per_s_this_session']:.1f} samples/s, "
                  f"peak RSS {peak / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
