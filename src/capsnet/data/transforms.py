"""Index splits and batched, reproducible random shifts (the CapsNet paper's augmentation)."""

from __future__ import annotations

import torch

from capsnet.errors import ConfigError


def train_val_split(n: int, val_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``range(n)`` into int64 index tensors: train (n - val_size,) and val (val_size,).

    A permutation is drawn from ``torch.Generator().manual_seed(seed)``; its last
    ``val_size`` entries are the validation indices, the others (in permutation order)
    the training indices. ``val_size`` 0 gives an empty validation set.
    """
    if not 0 <= val_size < n:
        raise ConfigError(f"validation size {val_size} must be in 0..{n - 1} for {n} examples")
    permutation = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return permutation[: n - val_size], permutation[n - val_size :]


def shift_images(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
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
    inside = ((rows >= 0) & (rows < height)).view(batch, 1, height, 1) & (
        (cols >= 0) & (cols < width)
    ).view(batch, 1, 1, width)
    out = x[
        torch.arange(batch, device=device).view(batch, 1, 1, 1),
        torch.arange(channels, device=device).view(1, channels, 1, 1),
        rows.clamp(0, height - 1).view(batch, 1, height, 1),
        cols.clamp(0, width - 1).view(batch, 1, 1, width),
    ]
    return out.masked_fill_(~inside, 0)


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
