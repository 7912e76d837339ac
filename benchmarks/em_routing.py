"""Today's EM routing against the old one (benchmarks/em_old.py), side by side in one process.

    python -m benchmarks.em_routing [--model em-capsnet [em-capsnet-small]] [--old-batch 16]
                                    [--new-batch 16 100] [--eager-batch 16] [--rounds 3]
                                    [--threads N]

Implementations: ``new``, today's (the native kernel of capsnet.nn.native for the
convolutional capsule layers, where it builds); ``eager``, today's PyTorch path
(``CAPSNET_NATIVE=0``); ``old``, the implementation of 2026-11-25 (benchmarks/em_old.py).

For each model and batch: ``capsnet.tools.bench.benchmark`` (training step: forward, spread loss,
backward, Adam; and inference, on uniform-noise inputs, fp32, tuned allocator) of the new
implementation, then of the old one, each with the peak resident memory of that first run
(``VmHWM`` of /proc/self/status, reset through /proc/self/clear_refs before it). The new
implementation runs first: with the tuned allocator the process keeps its freed memory, so
a run can only be charged more than its own peak, and only if a bigger run came before it
(run a batch the old implementation needs much memory for in a process of its own). Then
``--rounds`` - 1 more single-step measurements of each, alternating new and old, so that
load from other jobs falls on both alike; the images/s printed are the medians over the
rounds. Old and new are the same model, the same parameters; ``use_old_em`` swaps the
routing. Prints one JSON line per model, batch and implementation.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import torch
from torch import nn

from benchmarks.em_old import use_old_em
from capsnet import create_model
from capsnet.allocator import keep_freed_memory
from capsnet.tools.bench import BenchConfig, benchmark

STATUS, CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")
SPEEDS = ("train_images_per_second", "infer_images_per_second")


def peak_rss_mb() -> float:
    """VmHWM of this process, in MiB (since the last :func:`reset_peak`)."""
    line = next(x for x in STATUS.read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def reset_peak() -> None:
    CLEAR_REFS.write_text("5")  # Linux: reset the peak RSS to the current RSS


def use(impl: str) -> None:
    """The native kernel on for ``new``, off for the PyTorch paths (``eager``, ``old``)."""
    os.environ["CAPSNET_NATIVE"] = "1" if impl == "new" else "0"


def make(impl: str, model_name: str) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(model_name)
    return use_old_em(model) if impl == "old" else model


def first_run(model: nn.Module, impl: str, model_name: str, batch: int) -> dict:
    use(impl)
    reset_peak()
    cfg = BenchConfig(model=model_name, batch_size=batch, device="cpu", warmup=1, steps=1)
    r = benchmark(cfg, model)
    r.update(impl=impl, peak_memory_mb=round(peak_rss_mb(), 1), memory_kind="run_peak_rss")
    r["peak_memory_mb_per_image"] = round(r["peak_memory_mb"] / batch, 1)
    return r


def compare(model_name: str, batch: int, impls: list[str], rounds: int) -> list[dict]:
    """First runs (with memory) of each implementation, then alternating rounds."""
    models = {impl: make(impl, model_name) for impl in impls}
    results = {impl: first_run(models[impl], impl, model_name, batch) for impl in impls}
    speeds = {impl: [[results[impl][k]] for k in SPEEDS] for impl in impls}
    cfg = BenchConfig(model=model_name, batch_size=batch, device="cpu", warmup=0, steps=1)
    for _ in range(rounds - 1):
        for impl in impls:
            use(impl)
            r = benchmark(cfg, models[impl])
            for k, key in enumerate(SPEEDS):
                speeds[impl][k].append(r[key])
    for impl in impls:
        for k, key in enumerate(SPEEDS):
            results[impl][key] = statistics.median(speeds[impl][k])
            results[impl][key.replace("per_second", "per_second_rounds")] = speeds[impl][k]
        results[impl]["rounds"] = rounds
    return [results[impl] for impl in impls]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", nargs="+", default=["em-capsnet"])
    p.add_argument("--old-batch", type=int, nargs="*", default=[16])
    p.add_argument("--new-batch", type=int, nargs="*", default=[16, 100])
    p.add_argument("--eager-batch", type=int, nargs="*", default=[16])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    batches = sorted(set(args.new_batch) | set(args.old_batch) | set(args.eager_batch))
    for model in args.model:
        for batch in batches:
            sets = (("new", args.new_batch), ("eager", args.eager_batch), ("old", args.old_batch))
            impls = [impl for impl, bs in sets if batch in bs]
            for r in compare(model, batch, impls, args.rounds):
                print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
