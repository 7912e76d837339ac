#!/usr/bin/env bash
# The CPU measurements behind the README's speed figures. Run on an otherwise idle machine:
#   bash benchmarks/run_cpu_suite.sh 2>&1 | tee benchmarks/cpu-suite.log
# Every configuration appends a row to benchmarks/results.csv (with date, commit, device).
set -euo pipefail
cd "$(dirname "$0")/.."
C=.venv/bin/capsnet
CSV=benchmarks/results.csv
for model in capsnet-mnist capsnet-small; do
  $C bench --model "$model" --csv $CSV
done
.venv/bin/python -m benchmarks.compare_plain --allocator default --rounds 1 --csv $CSV
.venv/bin/python -m benchmarks.compare_plain --allocator tuned --rounds 1 --csv $CSV
$C bench --model capsnet-mnist --compile --warmup 3 --steps 5 --csv $CSV
$C bench --model capsnet-mnist --precision bf16 --warmup 1 --steps 2 --csv $CSV
