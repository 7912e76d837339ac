#!/usr/bin/env bash
# The CPU measurements behind the README's speed figures, every routing. Run on an otherwise
# idle machine (its output also goes to benchmarks/cpu-suite-DATE.log):
#   bash benchmarks/run_cpu_suite.sh
# Every configuration appends a row to benchmarks/results.csv (with date, commit, device);
# the conv forms go to benchmarks/conv-forms-DATE.jsonl, peak memory by batch size to
# benchmarks/memory-capsnet-mnist-DATE.jsonl, the step's parts to
# benchmarks/step-parts-DATE.jsonl (DATE: today's, UTC, or $DATE), so earlier runs' files stay.
set -euo pipefail
cd "$(dirname "$0")/.."
C=.venv/bin/capsnet
PY=.venv/bin/python
CSV=benchmarks/results.csv
DATE=${DATE:-$(date -u +%F)}  # set DATE to tell a second run of a day apart
exec > >(tee benchmarks/cpu-suite-$DATE.log) 2>&1
# bf16 rows only where the CPU computes bf16 natively (elsewhere it is ~20x slower than fp32)
BF16=$($PY -c "from capsnet.runtime import cpu_has_native_bf16 as n; print(int(n()))")
echo "# $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD), $(lscpu | grep 'Model name' | sed 's/  */ /g'), $(nproc) cores, native bf16: $BF16"
# dynamic routing, self-attention routing, EM routing (batch 100; em-capsnet at 16: ~30 s a step)
for model in capsnet-mnist capsnet-small efficient-capsnet em-capsnet-small; do
  $C bench --model "$model" --csv $CSV
done
$C bench --model em-capsnet --batch-size 16 --warmup 1 --steps 3 --csv $CSV
# old vs new, side by side: PrimaryCaps direct vs through the DFT; the plain implementation
$C bench --model capsnet-mnist --model-option conv_algorithm=direct --csv $CSV
$PY -m benchmarks.compare_plain --rounds 2 --csv $CSV
[ "$BF16" = 1 ] && $PY -m benchmarks.compare_plain --rounds 2 --precision bf16 --csv $CSV
PYTHONPATH=src:. $PY -m benchmarks.em_routing --model em-capsnet-small --old-batch 100 --new-batch 100 --rounds 1
$C bench --model capsnet-mnist --compile --warmup 3 --steps 5 --csv $CSV
[ "$BF16" = 1 ] && $C bench --model capsnet-mnist --precision bf16 --csv $CSV
$PY -m benchmarks.conv_forms | tee benchmarks/conv-forms-$DATE.jsonl
for b in 16 50 100 200; do  # one process each: peak RSS is per process
  $C bench --model capsnet-mnist --batch-size $b --warmup 1 --steps 1 --json
done | tee benchmarks/memory-capsnet-mnist-$DATE.jsonl
{
  $PY -m benchmarks.step_parts
  OMP_NUM_THREADS=1 $PY -m benchmarks.step_parts
  if [ "$BF16" = 1 ]; then $PY -m benchmarks.step_parts --precision bf16; fi
} | tee benchmarks/step-parts-$DATE.jsonl
