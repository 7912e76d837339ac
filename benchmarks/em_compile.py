"""Can torch.compile fuse EM routing? ConvCaps1 of ``em-capsnet``, eager against compiled.

    python -m benchmarks.em_compile [--batch-size 16] [--chunk 4 8] [--rounds 3]

The layer: 36 positions × 288 children (3×3 kernel × 32 types) × 32 parents, 4×4 poses,
3 iterations, on random poses, weights and activations. Eager is the library's
:func:`capsnet.nn.em_conv.conv_em_routing` (chunked, votes shifted, matmuls on V' and V'²,
taped gradient). Compiled is :func:`direct` (the votes as four broadcast products, the
M-step's two passes and the E-step written out, no shift, no tape), run by
``torch.compile`` on ``--chunk`` routing problems at a time; its backward is AOTAutograd's.
Both are checked against each other first (outputs and every input's gradient). Then
``--rounds`` alternating measurements of each (inference; a forward and backward pass),
so that load from other jobs falls on both alike; prints one JSON line per measurement
kind and implementation, with the median and the rounds.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from capsnet.nn.em import MASS_EPS, MIN_VAR, STD_EPS, inverse_temperatures
from capsnet.nn.em_conv import conv_em_routing
from capsnet.training.environment import environment

POSITIONS, CHILDREN, PARENTS = 36, 288, 32  # em-capsnet's ConvCaps1 on 32×32 inputs


def direct(
    poses: Tensor, weight: Tensor, acts: Tensor, beta_u: Tensor, beta_a: Tensor, lambdas: list
) -> tuple[Tensor, Tensor]:
    """EM routing (as :func:`capsnet.nn.em.em_routing`) written for fusion: poses
    (n, I, 4, 4), W (I, J, 4, 4), a (n, I) → μ (n, J, 16), a (n, J)."""
    n, i = acts.shape
    w = weight.permute(1, 0, 2, 3)  # (J, I, 4, 4)
    terms = (poses[:, None, :, :, q, None] * w[None, :, :, None, q, :] for q in range(4))
    v = sum(terms).reshape(n, w.shape[0], i, 16)  # (n, J, I, 16)
    a_in = acts[:, None, :]  # (n, 1, I)
    r = (a_in / w.shape[0]).expand(v.shape[:3])
    for t, lam in enumerate(lambdas):
        mass = r.sum(2) + MASS_EPS  # (n, J)
        share = (r / mass[..., None])[..., None]  # (n, J, I, 1)
        mu = (share * v).sum(2)  # (n, J, 16)
        var = (share * (v - mu[:, :, None]) ** 2).sum(2) + MIN_VAR
        cost = (beta_u[..., None] + 0.5 * torch.log(var)).sum(-1) * mass
        mean = cost.mean(1, keepdim=True)
        std = torch.sqrt((cost - mean).pow(2).mean(1, keepdim=True) + STD_EPS)
        logits = lam * (beta_a + (mean - cost) / std)
        if t == len(lambdas) - 1:
            break
        sq = ((v - mu[:, :, None]) ** 2 / var[:, :, None]).sum(-1)  # (n, J, I)
        log_norm = 0.5 * torch.log(2 * math.pi * var).sum(-1, keepdim=True)
        r = torch.softmax(F.logsigmoid(logits)[..., None] - 0.5 * sq - log_norm, 1) * a_in
    return mu, torch.sigmoid(logits)


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--chunk", type=int, nargs="+", default=[8])
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    torch.manual_seed(0)
    n = args.batch_size * POSITIONS
    inputs = [
        torch.randn(n, CHILDREN, 4, 4),
        torch.randn(CHILDREN, PARENTS, 4, 4) * 0.3,
        torch.rand(n, CHILDREN),
        torch.zeros(PARENTS),
        torch.zeros(PARENTS),
    ]
    inputs = [t.requires_grad_() for t in inputs]
    grads = (torch.randn(n, PARENTS, 16), torch.randn(n, PARENTS))
    lambdas = inverse_temperatures(3, 1.0)
    compiled = torch.compile(direct, dynamic=False)

    def chunked(c: int) -> tuple[Tensor, Tensor]:
        outs = [compiled(inputs[0][s : s + c], inputs[1], inputs[2][s : s + c], *inputs[3:],
                         lambdas) for s in range(0, n, c)]  # fmt: skip
        return torch.cat([m for m, _ in outs]), torch.cat([a for _, a in outs])

    impls = {"eager": lambda: conv_em_routing(*inputs)}
    impls.update({f"compiled, chunk {c}": (lambda c=c: chunked(c)) for c in args.chunk})
    reference = torch.autograd.grad(impls["eager"](), inputs, grads)
    compile_seconds = {}
    for name, fn in list(impls.items())[1:]:
        compile_seconds[name] = round(timed(fn), 1)
        got = torch.autograd.grad(fn(), inputs, grads)
        err = max(((g - r).norm() / r.norm()).item() for g, r in zip(got, reference, strict=True))
        assert err < 1e-4, f"{name}: gradients differ from eager by {err:.2g}"

    def step(fn: Callable) -> None:
        torch.autograd.grad(fn(), inputs, grads)

    def infer(fn: Callable) -> None:
        with torch.no_grad():
            fn()

    env = environment()
    for kind, run in (("inference", infer), ("forward+backward", step)):
        rounds: dict[str, list[float]] = {name: [] for name in impls}
        for fn in impls.values():
            run(fn)  # warm-up
        for _ in range(args.rounds):
            for name, fn in impls.items():
                rounds[name].append(args.batch_size / timed(lambda fn=fn, run=run: run(fn)))
        for name, speeds in rounds.items():
            line = {"layer": "em-capsnet ConvCaps1", "kind": kind, "impl": name,
                    "batch_size": args.batch_size, "images_per_second": round(
                        statistics.median(speeds), 2), "rounds": [round(s, 2) for s in speeds],
                    "compile_seconds": compile_seconds.get(name), **env}  # fmt: skip
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
