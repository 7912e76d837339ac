"""bf16 autocast with the DFT's channel products in bf16 (new) or float32 (old), interleaved.

    python -m benchmarks.bf16_products [--rounds 20]

The paper network, batch 100, uniform-noise images. Variants, one step each per round so
drift and the host's noise fall on all alike: ``new`` is this code under bf16 autocast;
``old`` the same with :func:`capsnet.nn.layers._product_dtype` forced to None, which is the
code before bf16 products (training: the DFT in float32 with three products; inference:
PrimaryCaps convolved directly in bf16); ``plain`` is ``benchmarks/plain.py`` in fp32.
Training step = :func:`capsnet.training.loop.train_step` (forward, loss, backward, Adam);
inference = forward under ``no_grad`` in eval mode. After 2 warm-up rounds, prints the
median and quartiles of images/s per variant as JSON lines.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from unittest import mock

import torch

from benchmarks.plain import PlainCapsNet
from capsnet import create_model
from capsnet.allocator import keep_freed_memory
from capsnet.runtime import autocast
from capsnet.tools.bench import ENV_FIELDS
from capsnet.training import environment
from capsnet.training.step import adam, train_step

VARIANTS = ("new", "old", "plain")


def _run(variant: str, net: torch.nn.Module, optim: torch.optim.Optimizer, x, y, mode: str):
    precision = "fp32" if variant == "plain" else "bf16"
    old = mock.patch("capsnet.nn.layers._product_dtype", lambda: None)
    with old if variant == "old" else contextlib.nullcontext():
        if mode == "train":
            net.train()
            train_step(net, net, optim, x, y, precision=precision)
        else:
            net.eval()
            with torch.no_grad(), autocast(x.device, precision):
                net(x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=20)
    args = p.parse_args()
    keep_freed_memory()
    torch.manual_seed(0)
    x, y = torch.rand(100, 1, 28, 28), torch.randint(0, 10, (100,))
    nets = {v: create_model("capsnet-mnist") for v in VARIANTS}
    nets["plain"] = PlainCapsNet(nets["plain"])
    optims = {v: adam(n, 1e-3) for v, n in nets.items()}
    env = environment()
    for mode in ("train", "infer"):
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for r in range(args.rounds + 2):
            for v in VARIANTS:
                t0 = time.perf_counter()
                _run(v, nets[v], optims[v], x, y, mode)
                if r >= 2:
                    times[v].append(100 / (time.perf_counter() - t0))
        for v in VARIANTS:
            q = statistics.quantiles(times[v], n=4)
            row = {
                "mode": mode,
                "variant": v,
                "median_img_s": round(statistics.median(times[v]), 1),
            }
            row |= {"quartiles": [round(q[0], 1), round(q[2], 1)], "steps": args.rounds}
            print(json.dumps(row | {k: env.get(k) for k in ENV_FIELDS}), flush=True)


if __name__ == "__main__":
    main()
