#!/usr/bin/env bash
# The CPU measurements behind the README's speed figures. Run on an otherwise idle machine:
#   bash benchmarks/run_cpu_suite.sh 2>&1 | tee benchmarks/cpu-suite.log
# Every configuration appends a row to benchmarks/results.csv (with date, commit, device);
# the conv forms go to benchmarks/conv-forms.jsonl, peak memory by batch size to
# benchmarks/memory-capsnet-mnist.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
C=.venv/bin/capsnet
PY=.venv/bin/python
CSV=benchmarks/results.csv
for model in capsnet-mnist capsnet-small efficient-capsnet em-capsnet-small; do
  $C bench --model "$model" --csv $CSV
done
$PY -m benchmarks.compare_plain --allocator default --rounds 1 --csv $CSV
$PY -m benchmarks.compare_plain --allocator tuned --rounds 2 --csv $CSV
$C bench --model capsnet-mnist --compile --warmup 3 --steps 5 --csv $CSV
$C bench --model capsnet-mnist --precision bf16 --warmup 1 --steps 2 --csv $CSV
$PY -m benchmarks.conv_forms | tee benchmarks/conv-forms.jsonl
for b in 16 50 100 200; do  # one process each: peak RSS is per process
  $C bench --model capsnet-mnist --batch-size $b --warmup 1 --steps 1 --json
done | tee benchmarks/memory-capsnet-mnist.jsonl
{ $PY -m benchmarks.step_parts; OMP_NUM_THREADS=1 $PY -m benchmarks.step_parts; } | tee benchmarks/step-parts.jsonl
