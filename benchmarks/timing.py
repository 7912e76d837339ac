"""Set-up and timing shared by the benchmark scripts."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from capsnet.allocator import keep_freed_memory


def parse_and_prepare(description: str) -> argparse.Namespace:
    """``--batch-size`` (default 100), ``--repeats`` and ``--precision`` (fp32 or bf16
    autocast, for the scripts that take it); then the tuned allocator and seed 0."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = p.parse_args()
    keep_freed_memory()
    torch.manual_seed(0)
    return args


def best_ms(fn: Callable[[], object], repeats: int) -> float:
    """Milliseconds of the fastest of ``repeats`` calls of ``fn``, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(1000 * min(times), 1)
