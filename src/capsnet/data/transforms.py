"""Index splits and batched, reproducible training augmentation (the paper's random shifts,
and rotations, scalings, squeezes, elastic distortions, blur and erased patches beyond it)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from capsnet.data.geometry import (
    affine_matrices,
    elastic,
    gaussian_blur,
    inside_box,
    shift_images,
    warp,
)
from capsnet.errors import ConfigError


def train_val_split(n: int, val_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``range(n)`` into int64 index tensors: train (n - val_size,) and val (val_size,).

    A permutation is drawn from ``torch.Generator().manual_seed(seed)``; its last
    ``val_size`` entries are the validation indices, the others (in permutation order)
    the training indices. ``val_size`` 0 gives an empty validation set.
    """
    if not 0 <= val_size < n:
        raise ConfigError(
            f"validation size {val_size} must be in 0..{n - 1} for {n} examples "
            f"(--val-size; e.g. {max(1, n // 10)} holds out a tenth)"
        )
    permutation = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return permutation[: n - val_size], permutation[n - val_size :]


def random_shift(
    x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Shift each image of ``x`` (B, C, H, W) by its own random (dy, dx) in [-max_shift, max_shift].

    Zero fill, same shape and dtype. The shifts are drawn on the CPU from ``generator``
    (the default CPU generator if None), so a seeded generator gives the same shifts on any
    device. ``max_shift`` 0 returns ``x`` itself.
    """
    if max_shift < 0:
        raise ConfigError(f"max_shift must be >= 0, got {max_shift}")
    if max_shift == 0:
        return x
    shifts = torch.randint(
        -max_shift, max_shift + 1, (2, len(x)), generator=generator, device="cpu"
    )
    return shift_images(x, shifts[0], shifts[1])


def random_erase(
    x: torch.Tensor, size: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Set a ``size`` × ``size`` square of each image of ``x`` (B, C, H, W) to zero.

    The square's top-left corner is uniform over the places that keep it inside the image,
    drawn on the CPU from ``generator`` (like :func:`random_shift`). A new tensor, same
    shape and dtype; ``size`` 0 returns ``x`` itself.
    """
    check_erase(size, tuple(x.shape))
    if size == 0:
        return x
    batch, height, width = len(x), *x.shape[-2:]
    top = torch.randint(0, height - size + 1, (batch,), generator=generator, device="cpu")
    left = torch.randint(0, width - size + 1, (batch,), generator=generator, device="cpu")
    rows = torch.arange(height).view(1, height) - top.view(batch, 1)  # (B, H)
    cols = torch.arange(width).view(1, width) - left.view(batch, 1)  # (B, W)
    return x.masked_fill(inside_box(rows, cols, size, size).to(x.device), 0)


def check_erase(size: int, shape: tuple[int, ...]) -> None:
    """ConfigError unless a ``size`` × ``size`` square fits in images of ``shape`` (…, H, W)
    and leaves some of the image (a square as large as the image would blank it)."""
    height, width = shape[-2:]
    if not 0 <= size < min(height, width):
        raise ConfigError(
            f"erase size {size} must be in 0..{min(height, width) - 1} for {height}×{width} images"
        )


MAX_BLUR = 10.0  # pixels: Augmentation.blur's largest σ


@dataclass(frozen=True)
class Augmentation:
    """Random changes to each training image, drawn per image from a generator.

    ``max_shift`` is the paper's (whole-pixel shifts in ±max_shift, zero fill). The others,
    beyond the paper and off (0) by default: a rotation uniform in ±``rotation`` degrees, a
    scaling by a factor uniform in [1 − ``scale``, 1 + ``scale``] and a horizontal squeeze
    by a factor uniform in [1 − ``squeeze``, 1] (one warp about the centre, bilinear), then
    an elastic distortion of ``elastic`` pixels (Simard et al. 2003, σ = 4), then a
    Gaussian blur of σ uniform in [0, ``blur``] pixels (radius ceil(3 · blur) for every
    image, zero padding; σ = 0 leaves the image as it is), then the shift, then an
    ``erase`` × ``erase`` square set to zero at a uniform place inside the image
    (Efficient-CapsNet's authors erase a 4 × 4 patch and squeeze by 1–7 of 28 columns).
    """

    max_shift: int = 2
    rotation: float = 0.0
    scale: float = 0.0
    elastic: float = 0.0
    squeeze: float = 0.0
    erase: int = 0
    blur: float = 0.0

    def __post_init__(self) -> None:
        values = (self.max_shift, self.rotation, self.elastic, self.blur, self.erase)
        if not all(0 <= v < math.inf for v in values):
            raise ConfigError("max_shift, rotation, elastic, blur and erase must be finite and ≥ 0")
        if self.rotation > 180:
            raise ConfigError(f"rotation is in ± degrees, at most 180; got {self.rotation}")
        if self.blur > MAX_BLUR:
            raise ConfigError(f"blur is σ in pixels, at most {MAX_BLUR}; got {self.blur}")
        if not (0 <= self.scale < 1 and 0 <= self.squeeze < 1):
            raise ConfigError(
                f"scale and squeeze must be in [0, 1), got {self.scale}, {self.squeeze}"
            )

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment uint8 or float images (B, C, H, W); same shape and dtype."""
        if self.rotation or self.scale or self.squeeze or self.elastic or self.blur:
            x = self._warped(x, generator)
        x = random_shift(x, self.max_shift, generator)
        return random_erase(x, self.erase, generator) if self.erase else x

    def _warped(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """``x`` warped, distorted and blurred (in float), back in its own dtype."""
        n = len(x)
        y = x.float()
        if self.rotation or self.scale or self.squeeze:
            u = torch.rand(3, n, generator=generator, dtype=torch.float64) * 2 - 1  # (3, B)
            angle = u[0] * math.radians(self.rotation)
            factor = 1 + u[1] * self.scale
            squeeze = 1 - (u[2] + 1) / 2 * self.squeeze  # uniform in [1 - squeeze, 1]
            shear = torch.zeros(n, dtype=torch.float64)
            y = warp(y, affine_matrices(angle, shear, factor, factor * squeeze).float())
        if self.elastic:
            y = elastic(y, self.elastic, generator or torch.default_generator)
        if self.blur:
            sigma = torch.rand(n, generator=generator, dtype=torch.float64) * self.blur  # (B,)
            y = gaussian_blur(y, sigma, math.ceil(3 * self.blur))
        if x.dtype == torch.uint8:
            return y.round_().clamp_(0, 255).to(torch.uint8)
        return y.to(x.dtype)
