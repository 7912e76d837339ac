"""Today's EM routing against the new one, side by side in one process.

    python -m benchmarks.em_routing [--model em-capsnet [em-capsnet-small]] [--old-batch 16]
                                    [--new-batch 16 100]
                                    [--steps 5]
                                    [--threads N]

For each run: ``capsnet.bench.benchmark`` (median training step: forward, spread loss,
backward, Adam; and median inference, on uniform-noise inputs, fp32, tuned allocator)
and the peak resident memory of that run alone (``VmHWM`` of /proc/self/status, reset
through /proc/self/clear_refs before it). The new implementation runs first: with the
tuned allocator the process keeps its freed memory, so a run can only be charged less
than its true peak if a bigger run came before it. Old and new are the same model, the
same parameters; ``benchmarks.em_old.use_old_em`` swaps the routing. Prints JSON lines.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks.em_old import use_old_em
from capsnet import create_model
from capsnet.allocator import keep_freed_memory
from capsnet.bench import BenchConfig, benchmark

STATUS, CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def peak_rss_mb() -> float:
    """VmHWM of this process, in MiB (since the last :func:`reset_peak`)."""
    line = next(x for x in STATUS.read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def reset_peak() -> None:
    CLEAR_REFS.write_text("5")  # Linux: reset the peak RSS to the current RSS


def run(impl: str, model_name: str, batch: int, steps: int) -> dict:
    torch.manual_seed(0)
    model = create_model(model_name)
    if impl == "old":
        use_old_em(model)
    reset_peak()
    cfg = BenchConfig(model=model_name, batch_size=batch, device="cpu", warmup=1, steps=steps)
    r = benchmark(cfg, model)
    r.update(impl=impl, peak_memory_mb=round(peak_rss_mb(), 1), memory_kind="run_peak_rss")
    r["peak_memory_mb_per_image"] = round(r["peak_memory_mb"] / batch, 1)
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", nargs="+", default=["em-capsnet"])
    p.add_argument("--old-batch", type=int, nargs="*", default=[16])
    p.add_argument("--new-batch", type=int, nargs="*", default=[16, 100])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    runs = [("new", b) for b in args.new_batch] + [("old", b) for b in args.old_batch]
    for model in args.model:
        for impl, batch in runs:
            print(json.dumps(run(impl, model, batch, args.steps)), flush=True)


if __name__ == "__main__":
    main()
