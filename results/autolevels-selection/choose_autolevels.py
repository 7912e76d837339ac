"""Choose the autolevels rule on MNIST validation images (held out of training, seed-0 split of
5,000; the first 2,000 of them), by the criterion LEVELS was chosen by: the mean, over the blur,
resolution and stroke sweeps of capsnet-mnist, of each curve's mean accuracy.

autolevels: peak-normalise; black point b = min(0.2, the value of the image's K-th brightest pixel),
K = ceil(frac * pixels); white point 0.75 ("fixed") or b + 0.55 ("shift"); stretch and clip."""
import itertools
import math
import sys
from functools import partial

import torch

import capsnet.models.capsnet as mc
from capsnet import load_pretrained
from capsnet.data.sources import load_split
from capsnet.data.split import split_indices
from capsnet.nn import layers
from capsnet.tools.predict import predict
from capsnet.tools.robustness import sweep

orig = layers.normalise_input


def autolevels(x, frac, white_mode):
    x = orig(x, "peak")
    flat = x.flatten(1)  # (B, C*H*W)
    k = math.ceil(frac * flat.shape[1])
    kth = flat.kthvalue(flat.shape[1] - k + 1, dim=1).values  # the k-th brightest, (B,)
    black = kth.clamp(max=0.2).view(-1, 1, 1, 1)
    white = torch.full_like(black, 0.75) if white_mode == "fixed" else black + 0.55
    return ((x - black) / (white - black)).clamp(0, 1)


images, labels = load_split("mnist", "train", "/work/shared/data")
_, val = split_indices(len(labels), 5000, "mnist")
x, y = images[val][:2000].float() / 255, labels[val][:2000]
m, _ = load_pretrained(sys.argv[1])
m.eval()
names = ["blur", "resolution", "stroke"]
grid = [("levels", None)] + list(itertools.product([0.05, 0.1, 0.15, 0.2], ["fixed", "shift"]))
for g in grid:
    if g[0] == "levels":
        mc.normalise_input = lambda x, mode: orig(x, "levels")
    else:
        mc.normalise_input = lambda x, mode, g=g: autolevels(x, *g)
    r = sweep(partial(predict, m, batch_size=500), x, y, names=names, seed=0)
    auc = {k: sum(v["accuracy"]) / len(v["accuracy"]) * 100 for k, v in r.items()}
    print(g, {k: round(a, 2) for k, a in auc.items()}, "mean", round(sum(auc.values()) / 3, 2),
          {k: [round(a * 100, 1) for a in v["accuracy"]] for k, v in r.items()}, flush=True)
