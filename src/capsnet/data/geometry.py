"""Image geometry on batched tensors: integer shifts, linear maps about the centre,
elastic distortion and Gaussian blur, all zero outside the image. The training augmentation
(:mod:`capsnet.data.transforms`), affNIST (:mod:`capsnet.data.affnist`) and the robustness
sweep (:mod:`capsnet.tools.robustness`) share them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def shift_images(x: Tensor, dy: Tensor, dx: Tensor) -> Tensor:
    """Shift each image of ``x`` (B, C, H, W) down by ``dy[b]`` and right by ``dx[b]`` pixels.

    ``dy`` and ``dx`` are integer tensors of shape (B,), negative values shift up / left.
    Pixels shifted in from outside are zero; the output has the shape and dtype of ``x``.
    """
    if x.dim() != 4 or dy.shape != (len(x),) or dx.shape != (len(x),):
        raise ValueError(
            f"expected x (B, C, H, W) and shifts (B,), got {x.shape}, {dy.shape}, {dx.shape}"
        )
    batch, channels, height, width = x.shape
    device = x.device
    # Output pixel (i, j) of image b comes from input pixel (i - dy[b], j - dx[b]).
    rows = torch.arange(height, device=device) - dy.to(device, torch.long).view(batch, 1)
    cols = torch.arange(width, device=device) - dx.to(device, torch.long).view(batch, 1)
    inside = inside_box(rows, cols, height, width)  # (B, 1, H, W)
    out = x[
        torch.arange(batch, device=device).view(batch, 1, 1, 1),
        torch.arange(channels, device=device).view(1, channels, 1, 1),
        rows.clamp(0, height - 1).view(batch, 1, height, 1),
        cols.clamp(0, width - 1).view(batch, 1, 1, width),
    ]
    return out.masked_fill_(~inside, 0)


def inside_box(rows: Tensor, cols: Tensor, height: int, width: int) -> Tensor:
    """The mask (B, 1, H, W) of pixels whose row offsets ``rows`` (B, H) are in
    [0, height) and whose column offsets ``cols`` (B, W) are in [0, width)."""
    batch = len(rows)
    in_rows = ((rows >= 0) & (rows < height)).view(batch, 1, -1, 1)
    return in_rows & ((cols >= 0) & (cols < width)).view(batch, 1, 1, -1)


def affine_matrices(rotation: Tensor, shear: Tensor, scale_y: Tensor, scale_x: Tensor) -> Tensor:
    """Linear maps ``A = R(rotation) · [[1, shear], [0, 1]] · diag(scale_x, scale_y)``.

    All arguments (N,), rotation in radians. Returns (N, 2, 2) acting on (x, y) column
    vectors (x to the right, y down, both about the canvas centre).
    """
    cos, sin = torch.cos(rotation), torch.sin(rotation)
    one, zero = torch.ones_like(shear), torch.zeros_like(shear)
    r = torch.stack([cos, -sin, sin, cos], -1).view(-1, 2, 2)
    s = torch.stack([one, shear, zero, one], -1).view(-1, 2, 2)
    d = torch.stack([scale_x, zero, zero, scale_y], -1).view(-1, 2, 2)
    return r @ s @ d


def warp(images: Tensor, matrices: Tensor) -> Tensor:
    """Apply the linear maps (N, 2, 2) about the centre of float images (N, C, H, W).

    Bilinear sampling, zero outside. ``grid_sample`` needs, for every output pixel, where
    it comes from: the inverse map. The canvas must be square so that its normalised
    coordinates scale both axes alike.
    """
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"warp needs square images, got {tuple(images.shape[-2:])}")
    inverse = torch.linalg.inv(matrices.double()).to(images.dtype)  # (N, 2, 2)
    theta = F.pad(inverse, (0, 1))  # (N, 2, 3), no translation
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def gaussian_kernel(sigma: float, dtype: torch.dtype) -> Tensor:
    """Normalised 1-D Gaussian of standard deviation ``sigma``, radius ceil(3σ): (2r+1,)."""
    radius = max(1, math.ceil(3 * sigma))
    return gaussian_kernels(torch.tensor([sigma], dtype=torch.float64), radius)[0].to(dtype)


def gaussian_kernels(sigma: Tensor, radius: int) -> Tensor:
    """A normalised 1-D Gaussian per standard deviation of ``sigma`` (N,), all of radius
    ``radius``: float64 (N, 2r+1). σ = 0 gives the delta kernel (1 at the centre, else 0)."""
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)  # (2r+1,)
    sigma = sigma.to(torch.float64).view(-1, 1)  # (N, 1)
    k = torch.where(sigma > 0, torch.exp(-0.5 * (t / sigma) ** 2), (t == 0).double())
    return k / k.sum(1, keepdim=True)


def smooth(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian filter of (N, C, H, W) with zero padding (same shape)."""
    k = gaussian_kernel(sigma, x.dtype)
    n, c, h, w = x.shape
    y = x.reshape(n * c, 1, h, w)
    y = F.conv2d(y, k.view(1, 1, -1, 1), padding=(len(k) // 2, 0))
    y = F.conv2d(y, k.view(1, 1, 1, -1), padding=(0, len(k) // 2))
    return y.view(n, c, h, w)


def gaussian_blur(x: Tensor, sigma: Tensor, radius: int) -> Tensor:
    """Blur each image of float ``x`` (N, C, H, W) by a Gaussian of its own standard
    deviation ``sigma`` (N,) pixels, truncated at ``radius`` (see :func:`gaussian_kernels`):
    one grouped convolution down the columns and one along the rows, zero padding (like
    :func:`smooth`); same shape. An image of σ = 0 comes back unchanged."""
    n, c, h, w = x.shape
    k = gaussian_kernels(sigma, radius).to(x.dtype).repeat_interleave(c, 0)  # (N·C, 2r+1)
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(y, k.view(n * c, 1, -1, 1), padding=(radius, 0), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, 1, -1), padding=(0, radius), groups=n * c)
    return y.view(n, c, h, w)


def elastic(x: Tensor, alpha: float, generator: torch.Generator, sigma: float = 4.0) -> Tensor:
    """Elastic distortion (Simard, Steinkraus & Platt 2003): a random displacement field,
    uniform in [-1, 1] per pixel, smoothed by a Gaussian of ``sigma`` pixels and scaled by
    ``alpha`` pixels; bilinear resampling. Simard et al. used α = 34, σ = 4 on MNIST."""
    if alpha == 0:
        return x
    n, _, h, w = x.shape
    field = torch.rand(n, 2, h, w, generator=generator, dtype=torch.float64) * 2 - 1
    field = smooth(field.to(x.dtype), sigma) * alpha  # (N, 2, H, W) pixels, (dx, dy)
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=x.dtype), torch.arange(w, dtype=x.dtype), indexing="ij"
    )
    gx = (xs + field[:, 0]) * 2 / w - 1 + 1 / w  # (N, H, W), normalised, pixel centres
    gy = (ys + field[:, 1]) * 2 / h - 1 + 1 / h
    grid = torch.stack([gx, gy], -1)  # (N, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


__all__ = [
    "affine_matrices",
    "elastic",
    "gaussian_blur",
    "gaussian_kernel",
    "gaussian_kernels",
    "inside_box",
    "shift_images",
    "smooth",
    "warp",
]
