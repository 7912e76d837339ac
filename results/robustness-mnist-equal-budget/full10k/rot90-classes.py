"""Per-class accuracy under rotation 90° (the sweep's own draw, seed 0) on all 10,000 MNIST
test images, for the six raw --blank 0.3 fine-tunes given autolevels at test time (or the
runs in /work/runs named as arguments): where the CNN's lead at rotation 90° comes from."""

import sys

import torch

from capsnet.tools.perturbations import PERTURBATIONS
from capsnet.tools.predict import predict
from capsnet.training.run import Run

RUNS = "/work/runs/"
RAW = ["ft3-blank0.3", "ft3-blank0.3-s1", "ft3-blank0.3-s2"]
MODELS = sys.argv[1:] or RAW + ["cnn-" + m for m in RAW]

torch.set_num_threads(2)
images, labels = Run(RUNS + MODELS[0]).test_set(data_dir="/work/shared/data")
rotated = PERTURBATIONS["rotation"].transform(
    images.float() / 255, 90.0, torch.Generator().manual_seed(0)
)
classes = " ".join(f"{c:>5d}" for c in range(10))
print(f"model                 acc   {classes}   predicted-as counts (top 3)")
for name in MODELS:
    model = Run(RUNS + name).load_model(overrides={"input_norm": "autolevels"})
    pred = predict(model, rotated, batch_size=500, device="cpu").argmax(1)  # (N,)
    right = pred == labels
    per_class = " ".join(f"{100 * right[labels == c].float().mean():5.1f}" for c in range(10))
    top = torch.bincount(pred, minlength=10).topk(3)
    most = ", ".join(
        f"{i}:{v}" for v, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
    )
    print(f"{name:20s} {100 * right.float().mean():5.2f}  {per_class}   {most}")
