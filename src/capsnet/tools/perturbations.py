"""The perturbations of the robustness sweep (:mod:`capsnet.tools.robustness`).

The paper's central claim is that capsules generalise to poses not seen in training. Each
perturbation below maps float images (N, C, H, W) in [0, 1] and one strength to images of
the same shape, is the identity at strength 0, and draws anything random (directions, signs,
displacement fields) from the ``torch.Generator`` it is given, so a sweep is reproducible.
All are batched tensor ops (no loop over images).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from capsnet.data.geometry import affine_matrices, elastic, shift_images, smooth, warp
from capsnet.errors import ConfigError

Transform = Callable[[Tensor, float, torch.Generator], Tensor]


def _signs(n: int, generator: torch.Generator) -> Tensor:
    """(n,) float64 of ±1, each sign with probability ½."""
    return torch.randint(0, 2, (n,), generator=generator).double() * 2 - 1


def _linear(x: Tensor, rotation: Tensor, shear: Tensor, scale: Tensor) -> Tensor:
    """Warp (N, C, H, W) about the centre by affine_matrices(rotation, shear, scale, scale)."""
    return warp(x, affine_matrices(rotation, shear, scale, scale).to(x.dtype)).clamp_(0, 1)


def rotate(x: Tensor, degrees: float, generator: torch.Generator) -> Tensor:
    """Rotate each image by ``degrees`` about its centre, clockwise or anticlockwise at random."""
    if degrees == 0:
        return x
    n = len(x)
    angle = _signs(n, generator) * math.radians(degrees)  # (N,)
    return _linear(
        x, angle, torch.zeros(n, dtype=torch.float64), torch.ones(n, dtype=torch.float64)
    )


def scale(x: Tensor, octaves: float, generator: torch.Generator) -> Tensor:
    """Scale every image about its centre by ``2**octaves`` (< 0 shrinks, > 0 enlarges)."""
    if octaves == 0:
        return x
    n = len(x)
    zero = torch.zeros(n, dtype=torch.float64)
    return _linear(x, zero, zero, torch.full((n,), 2.0**octaves, dtype=torch.float64))


def shear(x: Tensor, factor: float, generator: torch.Generator) -> Tensor:
    """Shear each image along x by ``factor`` (x' = x + factor·y about the centre), sign random."""
    if factor == 0:
        return x
    n = len(x)
    zero, one = torch.zeros(n, dtype=torch.float64), torch.ones(n, dtype=torch.float64)
    return _linear(x, zero, _signs(n, generator) * factor, one)


def translate(x: Tensor, pixels: float, generator: torch.Generator) -> Tensor:
    """Move each image by ``pixels`` in a random direction (rounded to whole pixels, zero fill)."""
    if pixels == 0:
        return x
    theta = torch.rand(len(x), generator=generator, dtype=torch.float64) * 2 * math.pi  # (N,)
    dy, dx = (pixels * torch.sin(theta)).round().long(), (pixels * torch.cos(theta)).round().long()
    return shift_images(x, dy, dx)


def stroke(x: Tensor, steps: float, generator: torch.Generator) -> Tensor:
    """Bolder (``steps`` > 0, grey dilation) or thinner (< 0, grey erosion) strokes.

    Each whole step is one 3×3 max (dilation) or min (erosion) filter; ``steps`` is rounded.
    """
    k = round(steps)
    if k == 0:
        return x
    sign = 1.0 if k > 0 else -1.0
    y = x * sign
    for _ in range(abs(k)):  # a few steps of one batched filter, not a loop over images
        y = F.max_pool2d(y, 3, stride=1, padding=1)
    return y * sign


def blur(x: Tensor, sigma: float, generator: torch.Generator) -> Tensor:
    """Gaussian blur of standard deviation ``sigma`` pixels."""
    return x if sigma == 0 else smooth(x, sigma)


def resolution(x: Tensor, octaves: float, generator: torch.Generator) -> Tensor:
    """Loss of resolution: area-downsample by ``2**octaves``, then bilinear back to full size."""
    if octaves == 0:
        return x
    h, w = x.shape[-2:]
    small = (max(1, round(h / 2**octaves)), max(1, round(w / 2**octaves)))
    low = F.interpolate(x, size=small, mode="area")
    return F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False).clamp_(0, 1)


@dataclass(frozen=True)
class Perturbation:
    """A transform and the strengths a sweep visits (0, the identity, among them)."""

    transform: Transform
    strengths: tuple[float, ...]
    unit: str


PERTURBATIONS: dict[str, Perturbation] = {
    "rotation": Perturbation(rotate, (0, 10, 20, 30, 45, 60, 90), "degrees (either direction)"),
    "scale": Perturbation(scale, (-1, -0.75, -0.5, -0.25, 0, 0.25, 0.5), "octaves (2^s)"),
    "shear": Perturbation(shear, (0, 0.2, 0.4, 0.6, 0.8, 1.0), "x-shear factor"),
    "translation": Perturbation(translate, (0, 2, 4, 6, 8), "pixels (random direction)"),
    "stroke": Perturbation(stroke, (-2, -1, 0, 1, 2), "3×3 erosions (<0) / dilations (>0)"),
    "blur": Perturbation(blur, (0, 0.5, 1, 1.5, 2, 3), "Gaussian σ, pixels"),
    "resolution": Perturbation(resolution, (0, 0.5, 1, 1.5, 2), "octaves lost (2^s)"),
    "elastic": Perturbation(elastic, (0, 8, 16, 24, 34, 48), "α, pixels (σ = 4)"),
}


def check_perturbations(names: Sequence[str]) -> None:
    unknown = sorted(set(names) - set(PERTURBATIONS))
    if unknown:
        raise ConfigError(
            f"unknown perturbation {', '.join(unknown)}; choose from: {', '.join(PERTURBATIONS)}"
        )


__all__ = ["PERTURBATIONS", "Perturbation", "Transform", "check_perturbations"]
