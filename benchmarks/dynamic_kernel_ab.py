"""One dynamic routing kernel against another (e.g. a commit's) on the paper's DigitCaps.

    python -m benchmarks.dynamic_kernel_ab OTHER.cpp [--batch-size 100] [--children 1152]

Loads ``csrc/dynamic_routing.cpp`` and OTHER.cpp (with the headers beside it; e.g. from
``git show COMMIT:src/capsnet/nn/csrc/dynamic_routing.cpp``) as two extensions, checks that
they agree and prints, alternating three times, each one's best of 9 times (ms) for 1, 2
and 3 routing iterations, float32, the threads PyTorch has.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks.timing import best_ms
from capsnet.allocator import keep_freed_memory
from capsnet.nn import native
from capsnet.nn.routing import EPS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("other", type=Path)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--children", type=int, default=1152)
    args = p.parse_args()
    keep_freed_memory()
    kernels = {
        "this": native.dynamic_kernels(),
        "other": native._build(args.other, "capsnet_dynamic_ab", "other"),
    }
    torch.manual_seed(0)
    u = 0.3 * torch.randn(args.batch_size, args.children, 8)
    w = 0.05 * torch.randn(args.children, 10, 16, 8)
    a, b = (k.dynamic_forward(u, w, 3, EPS) for k in kernels.values())
    diff = max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))
    print(json.dumps({"max_abs_difference": diff, "threads": torch.get_num_threads()}))
    for _ in range(3):
        for name, k in kernels.items():
            ms = [best_ms(lambda r=r, k=k: k.dynamic_forward(u, w, r, EPS), 9) for r in (1, 2, 3)]
            print(json.dumps({"kernel": name, "ms_for_1_2_3_iterations": ms}))


if __name__ == "__main__":
    main()
