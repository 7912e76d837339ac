"""How fast could a fused native EM routing be? A probe for issue 16's EM goal.

    python -m benchmarks.em_native_probe [--batch-size 16] [--rounds 3]

Needs a C++ compiler and ninja: ``em_native_probe.cpp`` (EM routing's forward pass in
plain loops, one routing problem at a time with its votes in cache; no backward pass) is
built with ``torch.utils.cpp_extension.load_inline`` (-O3 -march=native -ffast-math
-fno-finite-math-only). On em-capsnet's ConvCaps1 (36 positions × 288 children × 32
parents, 4×4 poses, 3 iterations, random inputs) it is checked against
:func:`capsnet.em_conv.conv_em_routing`, then both infer in alternating rounds; prints one
JSON line per implementation (median images/s and rounds).
The library has no native code; this measures what a hand-written kernel would gain.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch.utils.cpp_extension import load_inline

from capsnet.em_conv import conv_em_routing
from capsnet.em_routing import inverse_temperatures
from capsnet.training.environment import environment

POSITIONS, CHILDREN, PARENTS = 36, 288, 32  # em-capsnet's ConvCaps1 on 32×32 inputs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    source = (Path(__file__).parent / "em_native_probe.cpp").read_text()
    flags = ["-O3", "-march=native", "-ffast-math", "-fno-finite-math-only"]
    native = load_inline("em_native_probe", source, functions=["em_forward"], extra_cflags=flags)
    torch.manual_seed(0)
    n, i, j = args.batch_size * POSITIONS, CHILDREN, PARENTS
    poses, weight = torch.randn(n, i, 4, 4), torch.randn(i, j, 4, 4) * 0.3
    acts, beta_u, beta_a = torch.rand(n, i), torch.zeros(j), torch.zeros(j)
    lambdas = inverse_temperatures(3, 1.0)
    impls = {
        "eager": lambda: conv_em_routing(poses, weight, acts, beta_u, beta_a),
        "native": lambda: native.em_forward(
            poses.view(n, i, 16), weight.view(i, j, 16), acts, beta_u, beta_a, lambdas
        ),
    }
    with torch.no_grad():
        (mu, a), (mu_n, a_n) = impls["eager"](), impls["native"]()
        err = max((mu_n - mu).abs().max().item(), (a_n - a).abs().max().item())
        assert err < 1e-4, f"native differs from eager by {err:.2g}"
        rounds: dict[str, list[float]] = {name: [] for name in impls}
        for _ in range(args.rounds):
            for name, fn in impls.items():
                t0 = time.perf_counter()
                fn()
                rounds[name].append(args.batch_size / (time.perf_counter() - t0))
    env = environment()
    for name, speeds in rounds.items():
        line = {
            "layer": "em-capsnet ConvCaps1",
            "kind": "inference",
            "impl": name,
            "batch_size": args.batch_size,
            "images_per_second": round(statistics.median(speeds), 2),
            "rounds": [round(s, 2) for s in speeds],
            "max_abs_difference": err,
            **env,
        }
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
