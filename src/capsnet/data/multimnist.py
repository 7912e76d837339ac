"""MultiMNIST (paper §6): two digits of different classes, each shifted, overlaid on one canvas.

Pairs are made with batched tensor ops from a ``torch.Generator``: fresh pairs for every
training batch, and fixed, seeded pairs for validation and test sets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from capsnet.data.transforms import random_shift
from capsnet.errors import ConfigError, DataError
from capsnet.files import atomic_write
from capsnet.targets import OverlayTargets


@dataclass(frozen=True)
class MultiMNISTConfig:
    """How pairs are made. The defaults are the paper's: 28×28 digits → 36×36 images."""

    pad: int = 4  # zero border added to each digit: the canvas is (H + 2·pad, W + 2·pad)
    shift: int = 4  # each digit is shifted independently by up to ±shift pixels per axis
    val_pairs_per_digit: int = 1  # fixed validation set: pairs per held-out training digit
    test_pairs_per_digit: int = 1  # fixed test set: pairs per test digit (paper: 1,000)
    seed: int = 0  # of the fixed sets (the test set uses seed, validation seed + 1)

    def __post_init__(self) -> None:
        if self.pad < 0 or self.shift < 0:
            raise ConfigError(f"MultiMNIST pad and shift must be ≥ 0, got {self.pad}, {self.shift}")
        if min(self.val_pairs_per_digit, self.test_pairs_per_digit) < 1:
            raise ConfigError("MultiMNIST pairs per digit must be ≥ 1")


def partners(labels: Tensor, first: Tensor, generator: torch.Generator) -> Tensor:
    """For each index in ``first`` (B,), a random index of an image of another class.

    ``labels`` (N,) int64. The partner is uniform over all images whose class differs (as
    in the authors' generator): with the images sorted by class, draw a rank ``r`` among
    the ``N - n_c`` images outside class ``c`` and skip over the ``n_c`` rows of class ``c``.
    """
    order = torch.argsort(labels, stable=True)  # (N,) indices sorted by class
    counts = torch.bincount(labels)  # (K,)
    starts = torch.cumsum(counts, 0) - counts  # (K,) first row of each class in ``order``
    c = labels[first]  # (B,)
    others = len(labels) - counts[c]  # (B,) images of another class
    if bool((others == 0).any()):
        raise DataError("MultiMNIST needs images of at least two classes")
    u = torch.rand(len(first), generator=generator, dtype=torch.float64)
    r = (u * others).long()  # (B,) uniform in [0, others)
    return order[r + counts[c] * (r >= starts[c])]


def overlay(a: Tensor, b: Tensor) -> Tensor:
    """Pixel-wise clipped sum ``min(a + b, 255)`` of uint8 images.

    The authors' MultiMNIST generator (``input_data/mnist/mnist_shift.py`` in
    github.com/Sarasra/models, research/capsules) overlays this way; where strokes cross
    the pixel saturates. On MNIST's mostly saturated strokes it differs from a pixel-wise
    max only at the anti-aliased stroke edges.
    """
    return (a.to(torch.int16) + b).clamp_max_(255).to(torch.uint8)


def make_pairs(
    images: Tensor,
    labels: Tensor,
    first: Tensor,
    config: MultiMNISTConfig,
    generator: torch.Generator,
) -> tuple[Tensor, OverlayTargets]:
    """Overlay each digit ``first[b]`` on a random digit of another class.

    ``images`` uint8 (N, C, H, W), ``labels`` (N,), ``first`` (B,) indices. Both digits are
    padded by ``config.pad`` and shifted independently by up to ``config.shift`` pixels.
    Returns the overlays uint8 (B, C, H + 2·pad, W + 2·pad) and their targets (labels
    (B, 2), the two shifted digits (B, 2, C, H + 2·pad, W + 2·pad)).
    """
    second = partners(labels, first, generator)
    idx = torch.stack([first, second], 1)  # (B, 2)
    p = config.pad
    digits = F.pad(images[idx.flatten()], (p, p, p, p))  # (2B, C, H', W')
    digits = random_shift(digits, config.shift, generator).unflatten(0, idx.shape)  # (B, 2, …)
    return overlay(digits[:, 0], digits[:, 1]), OverlayTargets(labels[idx], digits)


def fixed_pairs(
    images: Tensor, labels: Tensor, pairs_per_digit: int, config: MultiMNISTConfig, seed: int
) -> tuple[Tensor, OverlayTargets]:
    """A reproducible set: every digit overlaid on ``pairs_per_digit`` random partners.

    Partners are drawn with replacement (the authors draw distinct ones; for a few pairs
    per digit out of thousands of partners the difference is negligible). Memory: about
    ``3 · (H + 2·pad) · (W + 2·pad)`` bytes per pair (the overlay and its two digits).
    """
    first = torch.arange(len(labels)).repeat_interleave(pairs_per_digit)
    return make_pairs(images, labels, first, config, torch.Generator().manual_seed(seed))


def save_npz(path: Path, images: Tensor, targets: OverlayTargets) -> None:
    """A fixed MultiMNIST set as ``.npz`` (written atomically): ``images`` (N, H, W) uint8
    overlays, ``labels`` (N, 2) int64, ``sources`` (N, 2, H, W) uint8, each digit alone."""

    def write(p: Path) -> None:
        with p.open("wb") as f:  # a file object: np.savez would append ".npz" to a path
            np.savez_compressed(
                f,
                images=images[:, 0].numpy(),
                labels=targets.labels.numpy(),
                sources=targets.images[:, :, 0].numpy(),
            )

    atomic_write(Path(path), write)


__all__ = [
    "MultiMNISTConfig",
    "OverlayTargets",
    "fixed_pairs",
    "make_pairs",
    "overlay",
    "partners",
    "save_npz",
]
