"""Inference with the native dynamic routing kernel against the PyTorch path, interleaved.

    python -m benchmarks.native_routing [--batch-size 100] [--repeats 5] [--rounds 3]

For the paper network on 28×28 (MNIST) and 40×40 inputs (expanded MNIST, 4,608 primary
capsules): the class-capsule layer alone and the whole forward pass without gradients,
fp32, with ``CAPSNET_NATIVE`` 1 (the kernel of ``csrc/dynamic_routing.cpp``) and 0 (blocks
of ``RoutingCaps``), alternating ``--rounds`` times in one process (best of ``--repeats``
each). Prints one JSON line per input size, variant and round, then the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

import torch

from benchmarks.timing import best_ms
from capsnet import create_model
from capsnet.allocator import keep_freed_memory
from capsnet.tools.bench import ENV_FIELDS
from capsnet.training import environment


def _time(net: torch.nn.Module, x: torch.Tensor, u: torch.Tensor, repeats: int) -> tuple:
    """(ms of the class-capsule layer on primary capsules u, ms of the forward pass on x)."""
    return best_ms(lambda: net.classes(u), repeats), best_ms(lambda: net(x), repeats)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    keep_freed_memory()
    torch.manual_seed(0)
    env = {k: v for k, v in environment().items() if k in ENV_FIELDS}
    for size in (28, 40):
        net = create_model("capsnet-mnist", input_size=(size, size)).eval()
        x = torch.rand(args.batch_size, 1, size, size)
        times: dict[str, list[tuple[float, float]]] = {"native": [], "pytorch": []}
        with torch.no_grad():
            u = net.encode(x)
            for r in range(args.rounds):
                for variant in times:
                    os.environ["CAPSNET_NATIVE"] = "1" if variant == "native" else "0"
                    layer, whole = _time(net, x, u, args.repeats)
                    times[variant].append((layer, whole))
                    row = {"input": size, "variant": variant, "round": r, "classes_ms": layer}
                    print(json.dumps(row | {"forward_ms": whole}), flush=True)
        for variant, rows in times.items():
            layer, whole = (statistics.median(t) for t in zip(*rows, strict=True))
            summary = {"input": size, "variant": variant, "batch_size": args.batch_size}
            summary |= {"classes_ms": layer, "forward_ms": whole}
            summary["images_per_second"] = round(1000 * args.batch_size / whole, 1)
            print(json.dumps(summary | env), flush=True)


if __name__ == "__main__":
    main()
