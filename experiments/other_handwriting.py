"""MNIST models on handwriting from another source: the UCI optical digits.

    python -m experiments.other_handwriting --digits PATH/digits.csv.gz
        [--models capsnet-mnist efficient-capsnet-mnist] [--runs RUN ...]

The digits: "Optical Recognition of Handwritten Digits" (Alpaydin & Kaynak, UCI, CC BY 4.0),
1,797 digits by 43 writers who are not MNIST's, as scikit-learn ships them in
``sklearn/datasets/data/digits.csv.gz``: 64 counts (0–16) of inked pixels in 4 × 4 blocks of
a 32 × 32 bitmap, then the label. Each is brought to MNIST the way ``capsnet predict --fit
mnist`` brings a user's picture (:func:`capsnet.data.digits.fit_digit`): upsampled ×4
bilinearly to 32 × 32 (its bitmap's size), given an 8-pixel black border so that the paper
is visible around the ink, then fitted (ink box to 20 px, centre of mass to the centre of a
28 × 28 canvas; a 6-pixel border more for 40 × 40 models). The digits stay blurred: an 8 × 8
image holds no more.

Prints, per model: accuracy on all 1,797, accuracy per class, and the five most frequent
confusions (true → predicted). Models: shipped names (``capsnet.load_pretrained``) or run
directories (``--runs``).
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from capsnet import load_pretrained, load_run
from capsnet.data.digits import MNIST_SIZE, fit_digit
from capsnet.tools.predict import predict

UPSAMPLE = 4  # 8 × 8 blocks → the 32 × 32 bitmap they were counted on
BORDER = 8  # black pixels around the upsampled digit: the paper fit_digit looks for
LEVELS = 16  # the counts' maximum


def load_uci_digits(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The digits (N, 8, 8) in [0, 1] and their labels (N,) from scikit-learn's CSV."""
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",")
    images = torch.tensor(table[:, :64], dtype=torch.float32).view(-1, 8, 8) / LEVELS
    return images, torch.tensor(table[:, 64]).long()


def to_mnist(digits: torch.Tensor) -> torch.Tensor:
    """(N, 8, 8) in [0, 1] → (N, 1, 28, 28) MNIST-style digits (see the module docstring)."""
    up = F.interpolate(digits[:, None], scale_factor=UPSAMPLE, mode="bilinear")  # (N, 1, 32, 32)
    up = F.pad(up, (BORDER,) * 4)  # (N, 1, 48, 48)
    return torch.stack([fit_digit(im[0]) for im in up])[:, None]  # (N, 1, 28, 28)


def report(label: str, scores: torch.Tensor, labels: torch.Tensor) -> dict:
    """Accuracy, per-class accuracy and the top confusions of ``scores`` (N, 10)."""
    guess = scores.argmax(1)
    right = guess == labels
    per_class = {
        str(k): round(100 * right[labels == k].float().mean().item(), 2) for k in range(10)
    }
    wrong = Counter(zip(labels[~right].tolist(), guess[~right].tolist(), strict=True))
    return {
        "model": label,
        "accuracy": round(100 * right.float().mean().item(), 2),
        "per_class": per_class,
        "confusions": {f"{t}->{g}": n for (t, g), n in wrong.most_common(5)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--digits", type=Path, required=True, help="scikit-learn's digits.csv.gz")
    ap.add_argument("--models", nargs="*", default=["capsnet-mnist", "efficient-capsnet-mnist"])
    ap.add_argument("--runs", nargs="*", default=[])
    ap.add_argument("--input-norm", help="input_norm set on every model as it loads")
    args = ap.parse_args()
    over = {"input_norm": args.input_norm} if args.input_norm else None
    digits, labels = load_uci_digits(args.digits)
    images = to_mnist(digits)
    loaded = {m: load_pretrained(m, overrides=over)[0] for m in args.models}
    loaded |= {r: load_run(r, overrides=over)[0] for r in args.runs}
    for label, model in loaded.items():
        side = model.config.input_size[0]
        pad = (side - MNIST_SIZE) // 2  # 40 × 40 models: expanded MNIST's border
        x = F.pad(images, (pad, side - MNIST_SIZE - pad) * 2)
        print(json.dumps(report(label, predict(model, x), labels) | (over or {})), flush=True)


if __name__ == "__main__":
    main()
