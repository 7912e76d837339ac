"""Does the W_ij initial scale slow convergence? One short A/B on real MNIST.

    python -m experiments.init_scale --data-dir ../shared/data [--train-limit 10000]

Trains capsnet-small for one epoch with W_ij ~ N(0, σ²) for each σ and prints validation
accuracy. (The library's default is σ = 0.01.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile

import torch

import capsnet.layers
from capsnet.allocator import keep_freed_memory
from capsnet.train import TrainConfig, train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--train-limit", type=int, default=10000)
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.01, 0.1])
    args = p.parse_args()
    keep_freed_memory()
    cfg = TrainConfig(
        dataset="mnist", data_dir=args.data_dir, model="capsnet-small", epochs=1,
        train_limit=args.train_limit, val_size=2000, test_limit=2000,
    )  # fmt: skip
    original = capsnet.layers.RoutingCaps.__init__
    for sigma in args.sigmas:

        def init(self, *a, _sigma=sigma, **k):
            original(self, *a, **k)
            with torch.no_grad():
                self.weight.normal_(0, _sigma)

        capsnet.layers.RoutingCaps.__init__ = init
        with tempfile.TemporaryDirectory() as run:
            m = train(dataclasses.replace(cfg), run)
        print(json.dumps({"sigma": sigma, "val_accuracy": m["best_val_accuracy"],
                          "test_accuracy_2000": m["test_accuracy"]}))  # fmt: skip


if __name__ == "__main__":
    main()
