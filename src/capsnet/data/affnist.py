"""The affNIST protocol (paper §5.2): affine-transformed MNIST digits on a 40×40 canvas.

Two test sets: one generated here from the MNIST test set with affNIST's ranges (seeded,
batched), and the real affNIST ``.mat`` files for users who have them
(https://www.cs.toronto.edu/~tijmen/affNIST/).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from capsnet.data.geometry import affine_matrices, shift_images, warp
from capsnet.errors import ConfigError, DataError

AFFNIST_SIZE = 40


@dataclass(frozen=True)
class AffineRanges:
    """Ranges of the random affine transformations, uniform within each.

    The defaults are those of affNIST as its page (Tieleman) states them: rotation within
    20 degrees, shear within 0.2, vertical and horizontal scaling by 0.8 to 1.2 each, and
    a translation that keeps the digit inside the 40×40 canvas. One shear factor (along x)
    is drawn: with the rotation and the two scalings it reaches every orientation-keeping
    linear map, so a second one would add nothing.
    """

    rotation: float = 20.0  # degrees, uniform in ±rotation
    shear: float = 0.2  # x-shear factor, uniform in ±shear
    scale: tuple[float, float] = (0.8, 1.2)  # vertical and horizontal factors, independently
    canvas: int = AFFNIST_SIZE
    seed: int = 0  # of the generated test set

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", tuple(self.scale))
        lo, hi = self.scale
        if self.rotation < 0 or self.shear < 0 or not 0 < lo <= hi:
            raise ConfigError(f"bad affine ranges {self}: need rotation, shear ≥ 0, 0 < scale")


def _uniform(n: int, lo: float | Tensor, hi: float | Tensor, generator: torch.Generator) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)


def sample_affine(
    n: int, ranges: AffineRanges, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``n`` random (rotation in radians, shear, vertical scale, horizontal scale), each
    (n,) float64 and uniform in its range; the arguments of affine_matrices."""
    rot = math.radians(ranges.rotation)
    return (
        _uniform(n, -rot, rot, generator),
        _uniform(n, -ranges.shear, ranges.shear, generator),
        _uniform(n, *ranges.scale, generator),
        _uniform(n, *ranges.scale, generator),
    )


def random_translation(images: Tensor, generator: torch.Generator) -> Tensor:
    """Shift each uint8 image (N, C, H, W) by a random whole number of pixels per axis,
    uniform over the shifts that keep all its non-zero pixels inside the canvas."""
    n, _, h, w = images.shape
    ink = images.amax(1) > 0  # (N, H, W)
    shifts = []
    for axis_ink, size in ((ink.any(2), h), (ink.any(1), w)):  # rows, then columns
        first = axis_ink.int().argmax(1)  # (N,) first inked row / column (0 if none)
        last = size - 1 - axis_ink.flip(1).int().argmax(1)  # (N,) last one (size-1 if none)
        lo, hi = -first, size - 1 - last
        shifts.append((_uniform(n, lo, hi + 1, generator)).floor().long().clamp_max(hi))
    return shift_images(images, shifts[0], shifts[1])


def random_affine(images: Tensor, ranges: AffineRanges, generator: torch.Generator) -> Tensor:
    """affNIST-style transform of uint8 digits (N, C, H, W) → uint8 (N, C, canvas, canvas).

    Each digit is centred on the canvas, rotated, sheared and scaled about the centre with
    parameters drawn uniformly from ``ranges``, then translated (see random_translation).
    """
    n, _, h, w = images.shape
    top, left = (ranges.canvas - h) // 2, (ranges.canvas - w) // 2
    if top < 0 or left < 0:
        raise ConfigError(f"{h}×{w} images do not fit a {ranges.canvas}×{ranges.canvas} canvas")
    x = F.pad(images, (left, ranges.canvas - w - left, top, ranges.canvas - h - top)).float()
    a = affine_matrices(*sample_affine(n, ranges, generator))  # (N, 2, 2)
    warped = warp(x, a.float()).round_().clamp_(0, 255).to(torch.uint8)
    return random_translation(warped, generator)


def load_affnist_mat(path: str | Path) -> tuple[Tensor, Tensor]:
    """Images uint8 (N, 1, 40, 40) and labels int64 (N,) of one affNIST ``.mat`` file.

    The file holds a struct ``affNISTdata`` with ``image`` (1600, N), one image per column,
    and ``label_int`` (N,). Each column is read row by row, as the published Python readers
    of affNIST do.
    """
    try:
        from scipy.io import loadmat
        from scipy.io.matlab import MatReadError
    except ImportError:
        raise DataError("reading affNIST .mat files needs scipy: pip install scipy") from None
    path = Path(path)
    try:
        data = loadmat(str(path), simplify_cells=True)["affNISTdata"]
        image, label = np.asarray(data["image"]), np.asarray(data["label_int"])
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (MatReadError, OSError, ValueError, KeyError, TypeError, NotImplementedError) as e:
        raise DataError(f"{path}: not an affNIST .mat file ({type(e).__name__}: {e})") from None
    image, label = image.reshape(AFFNIST_SIZE**2, -1), label.reshape(-1)
    if image.shape[1] != len(label) or (label > 9).any() or (label < 0).any():
        raise DataError(f"{path}: {image.shape[1]} images but {len(label)} labels in 0..9")
    images = np.ascontiguousarray(image.T).reshape(-1, 1, AFFNIST_SIZE, AFFNIST_SIZE)
    return torch.from_numpy(images.astype(np.uint8)), torch.from_numpy(label.astype(np.int64))


__all__ = [
    "AffineRanges",
    "affine_matrices",
    "load_affnist_mat",
    "random_affine",
    "random_translation",
    "sample_affine",
    "warp",
]
