#!/usr/bin/env bash
# Every benchmark in sequence, each printing its table and writing bench/results/<name>.json.
#   bash bench/run_all.sh [--quick]          # --quick: fewer steps, repeats and pairs (a smoke run, ~10 min)
#   BUSI_RUN=runs/busi bash bench/run_all.sh # also the per-stage table of that run (finished or not) and the
#                                            # estimate for pipelines/busi_compare.yaml
# Timings are wall clock: run on an otherwise idle machine (each table prints the load average).
set -euo pipefail
cd "$(dirname "$0")/.."
export NO_ALBUMENTATIONS_UPDATE=1
py=python  # the active environment's; else the README's .venv
[ -z "${VIRTUAL_ENV:-}" ] && [ -x .venv/bin/python ] && py=.venv/bin/python
quick=0
[ "${1:-}" = "--quick" ] && quick=1
if [ "$quick" = 1 ]; then
  loop=(--steps 30 --repeats 1) prec=(--steps 10 --repeats 1) fam=(--n 32 --repeats 1 --train-steps 2) mem=(--n 100 1000)
  tfam=(--steps 30)
else
  loop=() prec=() fam=() mem=() tfam=()
fi
echo "== 1. shared training loop vs a bare PyTorch loop (target: bare/loop >= 0.95)"
$py bench/train_loop.py "${loop[@]}" --json bench/results/train_loop.json
echo "== 2. ms per training step: fp32, channels_last, bf16"
$py bench/precision.py "${prec[@]}"
echo "== 3. sampling ms per 64 px pair per family (busi_compare settings)"
$py bench/sample_families.py "${fam[@]}"
echo "== 3b. training ms per step per family and phase (busi_inpaint settings: every family, both mask modes)"
$py bench/train_families.py --spec pipelines/busi_inpaint.yaml "${tfam[@]}"
echo "== 4. peak RSS and wall time of augment sample (targets: memory ratio <= 1.1, time within 10% of linear)"
$py bench/sample_memory.py "${mem[@]}"
echo "== 5. wall time of the quickstart per stage (target <= 120 s)"
$py bench/wall_time.py
if [ -n "${BUSI_RUN:-}" ]; then
  echo "== 6. wall time of $BUSI_RUN per stage, and the estimate for pipelines/busi_compare.yaml (target <= 2 h)"
  $py bench/wall_time.py --run "$BUSI_RUN" --estimate pipelines/busi_compare.yaml --json bench/results/wall_time_busi.json
fi
