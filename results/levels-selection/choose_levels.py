"""Choose the levels ramp (lo, hi) on MNIST validation images (held out of training, seed-0 split of
5,000; the first 2,000 of them): mean AUC over blur, resolution and stroke sweeps of capsnet-mnist."""
import sys, itertools
from functools import partial
import torch
import capsnet.models.capsnet as mc
from capsnet.nn import layers
from capsnet import load_pretrained
from capsnet.data.sources import load_split
from capsnet.data.split import split_indices
from capsnet.tools.predict import predict
from capsnet.tools.robustness import sweep

orig = layers.normalise_input
images, labels = load_split("mnist", "train", "/work/shared/data")
_, val = split_indices(len(labels), 5000, "mnist")
x, y = images[val][:2000].float() / 255, labels[val][:2000]
m, _ = load_pretrained(sys.argv[1]); m.eval()
names = ["blur", "resolution", "stroke"]
grid = [("peak", None)] + list(itertools.product([0.0, 0.1, 0.2], [0.5, 0.6, 0.75]))
for g in grid:
    if g[0] == "peak":
        f = lambda x, mode: orig(x, "peak")
    else:
        lo, hi = g
        f = lambda x, mode, lo=lo, hi=hi: ((orig(x, "peak") - lo) / (hi - lo)).clamp(0, 1)
    mc.normalise_input = f
    r = sweep(partial(predict, m, batch_size=500), x, y, names=names, seed=0)
    auc = {k: sum(v["accuracy"]) / len(v["accuracy"]) * 100 for k, v in r.items()}  # equal spacing except blur 3
    print(g, {k: round(a, 2) for k, a in auc.items()}, "mean", round(sum(auc.values()) / 3, 2),
          {k: [round(a * 100, 1) for a in v["accuracy"]] for k, v in r.items()}, flush=True)
