"""Prototype (not in the library): the --blank 0.3 fine-tune of efficient-capsnet-mnist, each
training image read half the time as given and half the time autolevelled; tested autolevelled.

The two --blank 0.3 recipes of results/README.md ("Second seeds ...") trade blur for stroke
width: trained on raw images (autolevels at test only), blur σ 3 px 63.60%; trained on
autolevelled images, 57.35% but better under thin and bold strokes. Their weight average
interpolates. This asks whether one model trained on both readings keeps both.

The choice per image is a deterministic function of its pixels (the parity of round(1000 ×
its pixel sum)), so the forward pass and the loss (the decoder's target) agree; augmentation
makes it differ between epochs. Validation during training reads the same mix, so the epoch
is selected on mixed validation images. Then the sweep reads every image autolevelled.

    python mixed_finetune.py OUT_DIR SWEEP_DIR
"""
import sys

import torch

import capsnet.models.capsnet as mc
from capsnet.tools.robustness import compare_runs
from capsnet.training import TrainConfig, train

orig = mc.normalise_input
MIX = [True]


def mixed(x, mode):
    if not MIX[0] or mode != "autolevels":
        return orig(x, mode)
    pick = (torch.round(x.sum((1, 2, 3)) * 1000).long() % 2 == 0).view(-1, 1, 1, 1)  # (B,1,1,1)
    return torch.where(pick, orig(x, "autolevels"), x)


if __name__ == "__main__":
    torch.set_num_threads(1)
    mc.normalise_input = mixed
    out, sweep_dir = sys.argv[1], sys.argv[2]
    cfg = TrainConfig(
        dataset="mnist", data_dir="/work/shared/data", model="efficient-capsnet",
        model_overrides={"input_norm": "autolevels"}, init="efficient-capsnet-mnist",
        epochs=3, lr=1e-4, lr_schedule="cosine", rotation=12.0, scale=0.1, blank=0.3,
        device="cpu", seed=0,
    )
    metrics = train(cfg, out)
    print("mixed-trained, test (mixed reading):", metrics.get("test_accuracy"), flush=True)
    MIX[0] = False
    compare_runs([out], sweep_dir, limit=2000, seed=0, data_dir="/work/shared/data")
    print("swept with autolevels into", sweep_dir, flush=True)
