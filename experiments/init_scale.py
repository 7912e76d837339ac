"""Do the W_ij initial scale and the reconstruction weight slow convergence or starve the
decoder? A/B on real MNIST.

    python -m experiments.init_scale --data-dir ../shared/data [--train-limit 10000]
        [--sigmas 0.01 0.1 1.0] [--reconstruction-weights 0.0005 0.01] [--epochs 1]

Trains capsnet-small with W_ij ~ N(0, σ²) for each σ and reconstruction weight (the factor of
the summed squared error; the margin loss is summed over the classes) and prints, per pair,
validation and test accuracy and how much of each test image the true-class capsule
explains: the decoder's summed squared error, the error of the class-mean image (what a
decoder that ignores the pose can do at best) and of a per-class linear map from the 16
pose numbers to the pixels (fitted on half of the test images, scored on the other half).
A decoder near the class-mean error is not using the pose. (Library defaults: σ = 0.01,
weight 0.0005.) With ``--run RUN_DIR`` it only measures that trained MNIST run.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import tempfile

import torch

import capsnet.nn.layers
from capsnet.allocator import keep_freed_memory
from capsnet.data.tasks import load_test
from capsnet.models.checkpoint import load_checkpoint
from capsnet.training import TrainConfig, train


@torch.no_grad()
def pose_information(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Reconstruction errors (mean SSE per image) on images x (N, 1, H, W) in [0, 1]."""
    model.eval()
    outs = [model(xb, yb) for xb, yb in zip(x.split(500), y.split(500), strict=True)]
    poses = torch.cat([o.poses for o in outs])[torch.arange(len(y)), y]  # (N, D) true class
    recon = torch.cat([o.reconstructions for o in outs]).flatten(1)  # (N, H·W)
    pixels = x.flatten(1)
    fit, score = torch.arange(len(y)) % 2 == 0, torch.arange(len(y)) % 2 == 1
    mean_pred, linear_pred = torch.zeros_like(pixels), torch.zeros_like(pixels)
    design = torch.cat([poses, torch.ones(len(y), 1)], 1).double()  # (N, D + 1)
    for k in y.unique():
        a, b = fit & (y == k), score & (y == k)
        mean_pred[b] = pixels[a].mean(0)
        gram = design[a].T @ design[a] + 1e-6 * torch.eye(design.shape[1], dtype=torch.double)
        coef = torch.linalg.solve(gram, design[a].T @ pixels[a].double())  # (D + 1, H·W)
        linear_pred[b] = (design[b] @ coef).float()

    within = torch.stack([poses[y == k].std(0) for k in y.unique()])  # (classes, D)

    def sse(pred: torch.Tensor) -> float:
        return round(float((pred[score] - pixels[score]).pow(2).sum(1).mean()), 2)

    return {
        "decoder_sse": sse(recon),
        "class_mean_sse": sse(mean_pred),
        "linear_from_pose_sse": sse(linear_pred),
        "pose_std_within_class": round(float(within.mean()), 4),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--train-limit", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.01, 0.1])
    p.add_argument("--reconstruction-weights", type=float, nargs="+", default=[0.0005])
    p.add_argument("--run", help="only measure this trained MNIST run (its best checkpoint)")
    args = p.parse_args()
    keep_freed_memory()
    test_x, test_y = load_test("mnist", args.data_dir, limit=2000)
    if args.run:
        model = load_checkpoint(f"{args.run}/best.safetensors")
        print(json.dumps({"run": args.run, **pose_information(model, test_x / 255, test_y)}))
        return
    cfg = TrainConfig(
        dataset="mnist", data_dir=args.data_dir, model="capsnet-small", epochs=args.epochs,
        train_limit=args.train_limit, val_size=2000, test_limit=2000,
    )  # fmt: skip
    original = capsnet.nn.layers.RoutingCaps.__init__
    for sigma, weight in itertools.product(args.sigmas, args.reconstruction_weights):

        def init(self, *a, _sigma=sigma, **k):
            original(self, *a, **k)
            with torch.no_grad():
                self.weight.normal_(0, _sigma)

        capsnet.nn.layers.RoutingCaps.__init__ = init
        with tempfile.TemporaryDirectory() as run:
            overrides = {"reconstruction_weight": weight}
            m = train(dataclasses.replace(cfg, model_overrides=overrides), run)
            model = load_checkpoint(f"{run}/best.safetensors")
        info = pose_information(model, test_x / 255, test_y)
        row = {"sigma": sigma, "reconstruction_weight": weight, **info}
        row |= {"val_accuracy": m["best_val_accuracy"], "test_accuracy_2000": m["test_accuracy"]}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
