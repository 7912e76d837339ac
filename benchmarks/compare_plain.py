"""Side by side: capsnet's CapsNet against the plain implementation, in one process.

    python -m benchmarks.compare_plain [--model capsnet-mnist] [--batch-size 100]
        [--allocator tuned|default] [--precision fp32|bf16] [--csv benchmarks/results.csv]

Alternates the two implementations (same weights, same inputs) so both see the same
machine state, prints one JSON line each and appends them to the CSV. ``--precision``
applies to capsnet; the plain implementation always runs in fp32, the way it is written.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

from benchmarks.plain import PlainCapsNet
from capsnet import create_model
from capsnet.allocator import keep_freed_memory
from capsnet.tools.bench import BenchConfig, append_csv, benchmark


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="capsnet-mnist")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2, help="alternations of the two")
    p.add_argument("--allocator", choices=["tuned", "default"], default="tuned")
    p.add_argument("--precision", default="fp32", help="capsnet's (plain: fp32)")
    p.add_argument("--csv", default="benchmarks/results.csv")
    args = p.parse_args()
    if args.allocator == "tuned":
        keep_freed_memory()
    cfg = BenchConfig(model=args.model, batch_size=args.batch_size, steps=args.steps)
    for _ in range(args.rounds):
        for impl in ("capsnet", "plain"):
            net = create_model(args.model)
            if impl == "plain":
                row = benchmark(cfg, PlainCapsNet(net))
            else:
                row = benchmark(replace(cfg, precision=args.precision), net)
            row["impl"] = impl
            print(json.dumps(row))
            append_csv(args.csv, row)


if __name__ == "__main__":
    main()
