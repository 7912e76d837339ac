"""Choose a stroke-width rule on MNIST validation images (held out of training, seed-0 split of
5,000; the first 2,000 of them), by the criterion of results/levels-selection and
results/autolevels-selection: the mean, over the blur, resolution and stroke sweeps, of each
curve's mean accuracy.

The rule, applied after autolevels: ink = pixels above 0.5; thickness t = the mean, over ink
pixels, of the number of 3x3 binary erosions each survives (at most 6); the image is grey-eroded
(3x3 min filter) once for each threshold of (c, c + step, c + 2 step, ...)[:K] that t exceeds."""
import itertools
import sys
from functools import partial

import torch
import torch.nn.functional as F

import capsnet.models.capsnet as mc
from capsnet import load_pretrained
from capsnet.data.sources import load_split
from capsnet.data.split import split_indices
from capsnet.nn import layers
from capsnet.tools.predict import predict
from capsnet.tools.robustness import sweep

orig = layers.normalise_input


def erode(x):
    return -F.max_pool2d(-x, 3, stride=1, padding=1)


def thickness(x, depth=6):
    ink = (x > 0.5).float()
    area, survived, e = ink.sum((1, 2, 3)), torch.zeros(len(x)), ink
    for _ in range(depth):
        e = erode(e)
        survived += e.sum((1, 2, 3))
    return survived / area.clamp(min=1)  # (B,)


def strokes(x, c, step, k_max):
    x = orig(x, "autolevels")
    thresholds = c + step * torch.arange(k_max)  # (K,)
    k = (thickness(x)[:, None] > thresholds[None, :]).sum(1)  # (B,) erosions per image
    candidates = [x]
    for _ in range(k_max):
        candidates.append(erode(candidates[-1]))
    return torch.stack(candidates, 1)[torch.arange(len(x)), k]  # (B, C, H, W)


if __name__ == "__main__":
    torch.set_num_threads(1)
    images, labels = load_split("mnist", "train", "/work/shared/data")
    _, val = split_indices(len(labels), 5000, "mnist")
    x, y = images[val][:2000].float() / 255, labels[val][:2000]
    m, _ = load_pretrained(sys.argv[1])
    m.eval()
    names = ["blur", "resolution", "stroke"]
    grid = [("autolevels",)] + list(itertools.product([0.5, 0.4, 0.3], [0.8, 0.65, 0.5], [2]))
    for g in grid[: int(sys.argv[2]) if len(sys.argv) > 2 else None]:
        if g[0] == "autolevels":
            mc.normalise_input = lambda x, mode: orig(x, "autolevels")
        else:
            mc.normalise_input = lambda x, mode, g=g: strokes(x, *g)
        r = sweep(partial(predict, m, batch_size=500), x, y, names=names, seed=0)
        auc = {k: sum(v["accuracy"]) / len(v["accuracy"]) * 100 for k, v in r.items()}
        print(g, {k: round(a, 2) for k, a in auc.items()}, "mean", round(sum(auc.values()) / 3, 2),
              {k: [round(a * 100, 1) for a in v["accuracy"]] for k, v in r.items()}, flush=True)
