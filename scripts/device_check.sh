#!/usr/bin/env bash
# The GPU check of issue 35, in at most 8 minutes: the CUDA tests (pytest -m cuda
# tests/test_cuda.py), `capsnet bench` of every registered model on the GPU in fp32 and
# bf16, and one short MNIST training on the GPU (the 3,000 + 1,000 digits of
# tests/data/mnist-subset, as the device machine has no network). Each step has a time limit;
# logs go to $OUT (default ./device-out), at most 8 files:
#   summary.txt (machine, versions, each step's exit status and seconds), pytest.log,
#   train.log, train-history.csv, train-metrics.json, bench.log, bench.csv
# Exit status 0 when every step passed.
#
# On the device machine python3 holds PyTorch with CUDA, numpy, safetensors, tqdm,
# matplotlib, pillow, onnx, onnxruntime and pytest (/work/.library/device/KINDS.md):
# capsnet runs from src/ (PYTHONPATH), with no install and no wheels to carry. Only the
# working tree travels, at most 64 MiB of it, and the tracked tree is 84.5 MB, 66 MB of it the
# shipped weights, which no step needs: scripts/device_tree.sh takes them out of the index
# for the call (the files stay on disk) and puts them back. So, from the repository root:
#   scripts/device_tree.sh strip
#   run  command: bash scripts/device_check.sh   timeout_s: 560   carry: (none)
#   scripts/device_tree.sh restore      (right after the call, whatever its outcome)
# While stripped, a pre-commit hook refuses commits (one would delete the weights).
#
# DEVICE=cpu bash scripts/device_check.sh: a dry run with the CPU in the GPU's place and
# small sizes (CAPSNET_TEST_DEVICE=cpu for the tests), which checks this script end to end.
# LIMIT=SECONDS (default 470) shortens the whole: benchmarks that would end past it are
# not started (and reported so).
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE=${DEVICE:-cuda}
OUT=${OUT:-./device-out}
PY=${PY:-$(if [ -x .venv/bin/python ]; then echo .venv/bin/python; else echo python3; fi)}
LIMIT=${LIMIT:-470} # seconds for the whole check: 8 minutes, less a margin
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# The tests' CPU side runs PyTorch's own paths: building the native kernels first would
# take a minute of the budget (they are checked against those paths on the CPU elsewhere).
export CAPSNET_NATIVE=0
export NCCL_DEBUG=${NCCL_DEBUG:-WARN} # NCCL's own warnings into pytest.log

if [ "$DEVICE" = cpu ]; then
  export CAPSNET_TEST_DEVICE=cpu
  TRAIN=(--model capsnet-small --epochs 1 --batch-size 50 --train-limit 300 --val-size 100
    --test-limit 200)
  BENCH=(--batch-size 8 --steps 1 --warmup 0)
  BENCH_LIMIT=100 # the paper's EM network takes a minute on a loaded CPU
else
  TRAIN=(--model capsnet-mnist --epochs 5 --batch-size 100 --train-limit 2500 --val-size 500
    --test-limit 1000 --precision auto)
  BENCH=(--batch-size 100 --steps 10 --warmup 3)
  BENCH_LIMIT=40
fi

SUMMARY=$OUT/summary.txt
FAILED=0
: >"$SUMMARY"

# step NAME SECONDS LOG COMMAND...: run COMMAND under a time limit, its output in LOG
# (appended), and record its exit status and duration in the summary.
step() {
  local name=$1 seconds=$2 log=$3 start=$SECONDS rc=0
  shift 3
  echo "== $name (limit ${seconds}s): $*" | tee -a "$log"
  timeout -k 5 "$seconds" "$@" >>"$log" 2>&1 || rc=$?
  printf '%-40s exit %3d  %4ds\n' "$name" "$rc" $((SECONDS - start)) | tee -a "$SUMMARY"
  if [ "$rc" -ne 0 ]; then FAILED=1; fi
}

{
  echo "device check: DEVICE=$DEVICE, $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  if command -v nvidia-smi >/dev/null; then nvidia-smi 2>&1 || true; else echo "no nvidia-smi"; fi
  "$PY" - <<'EOF'
import importlib.metadata as md
import platform

import torch

print("python", platform.python_version(), "| torch", torch.__version__, "| CUDA", torch.version.cuda)
if torch.cuda.is_available():
    print("GPU:", torch.cuda.get_device_name(), "| bf16:", torch.cuda.is_bf16_supported())
else:
    print("GPU: none that PyTorch sees")
names = ["numpy", "safetensors", "tqdm", "matplotlib", "pillow", "onnx", "onnxruntime", "pytest"]
for name in names:
    try:
        print(f"  {name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"  {name}: MISSING")
EOF
  echo
} >>"$SUMMARY" 2>&1

step "CUDA tests (pytest -m cuda)" 200 "$OUT/pytest.log" \
  "$PY" -m pytest -m cuda tests/test_cuda.py -q -p no:cacheprovider --durations=10

RUN=$(mktemp -d)/mnist
step "train ${TRAIN[1]} on MNIST digits" 120 "$OUT/train.log" \
  "$PY" -m capsnet train --dataset mnist --data-dir tests/data/mnist-subset --device "$DEVICE" \
  --out "$RUN" "${TRAIN[@]}"
for f in history.csv metrics.json; do
  if [ -f "$RUN/$f" ]; then cp "$RUN/$f" "$OUT/train-$f"; fi
done

mapfile -t MODELS < <("$PY" -c 'from capsnet import list_models; print(*list_models(), sep="\n")')
for precision in fp32 bf16; do
  for model in "${MODELS[@]}"; do
    if [ $((LIMIT - SECONDS)) -lt $((BENCH_LIMIT + 5)) ]; then
      printf '%-40s not run: the time is up\n' "bench $model $precision" | tee -a "$SUMMARY"
      FAILED=1
      continue
    fi
    step "bench $model $precision" "$BENCH_LIMIT" "$OUT/bench.log" \
      "$PY" -m capsnet bench --model "$model" --device "$DEVICE" --precision "$precision" \
      "${BENCH[@]}" --csv "$OUT/bench.csv"
  done
done

echo "total ${SECONDS}s; $([ "$FAILED" = 0 ] && echo "every step passed" || echo "SOME STEPS FAILED")" |
  tee -a "$SUMMARY"
exit "$FAILED"
