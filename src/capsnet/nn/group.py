"""Convolutions equivariant to quarter turns: the group p4 (Cohen & Welling, "Group
Equivariant Convolutional Networks", ICML 2016), of translations and rotations by multiples
of 90°.

A p4 feature map holds ``C`` channels, each at the 4 orientations r = 0..3, flattened as
(B, C·4, H, W) with channel ``c·4 + r``. Turning an image a quarter turn (``rotate(x, 1)``)
turns every map of a p4 network a quarter turn and moves orientation r's content to
r + 1 (mod 4): ``layer(rotate(x, 1)) == rotate_p4(layer(x), 1)``, exact up to float
rounding where the grid of every strided layer is symmetric (:func:`symmetric_grid`).
The layers build, at every call, the full filter bank (one rotated copy of each learned
filter per orientation) and run one ``F.conv2d``: a p4 layer of C → C' channels costs a
plain convolution of 4C → 4C'.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from capsnet.nn.routing import Routed

TURNS = 4  # the group's rotations: 0°, 90°, 180°, 270°


def rotate(x: Tensor, turns: int, dims: tuple[int, int] = (-2, -1)) -> Tensor:
    """Images or filters (…, H, W) turned ``turns`` quarter turns counter-clockwise, as
    ``torch.rot90(x, turns, dims)``, written as flips and a transpose, which ONNX can
    express. A p4 map turns with :func:`rotate_p4`."""
    turns %= TURNS
    if turns == 2:
        return x.flip(dims)
    if turns == 1:
        return x.flip(dims[1]).transpose(*dims)
    return x.transpose(*dims).flip(dims[1]) if turns == 3 else x


def rotate_p4(x: Tensor, turns: int) -> Tensor:
    """The group's action on a p4 map (B, C·4, H, W): the plane turned ``turns`` quarter turns
    and orientation r's content moved to r + turns (mod 4)."""
    b, c4, h, w = x.shape
    x = x.view(b, c4 // TURNS, TURNS, h, w).roll(turns, dims=2)  # (B, C, 4, H, W)
    return rotate(x, turns).reshape(b, c4, w, h)


def lifting_filters(weight: Tensor) -> Tensor:
    """Filters (C', C, k, k) of a lifting layer (image → p4 map) → the bank (C'·4, C, k, k):
    output channel ``o·4 + s`` is filter o turned s quarter turns. Depthwise filters (C, 1,
    k, k) give the bank of a depthwise p4 layer (``groups=C·4``)."""
    bank = torch.stack([rotate(weight, s) for s in range(TURNS)], dim=1)  # (C', 4, C, k, k)
    return bank.flatten(0, 1)


def group_filters(weight: Tensor) -> Tensor:
    """Filters (C', C, 4, k, k) of a p4 → p4 layer → the bank (C'·4, C·4, k, k): output
    orientation s applies filter o turned s quarter turns, its orientations moved by s
    (Cohen & Welling 2016, eq. 10: [f ⋆ ψ](g) = Σ_h f(h) ψ(g⁻¹h))."""
    bank = [rotate(weight.roll(s, dims=2), s) for s in range(TURNS)]  # 4 × (C', C, 4, k, k)
    return torch.stack(bank, dim=1).flatten(0, 1).flatten(1, 2)  # (C'·4, C·4, k, k)


def symmetric_grid(size: int, kernel: int, stride: int) -> bool:
    """Whether a valid ``kernel``/``stride`` convolution of a ``size``-pixel side samples a
    grid that a quarter turn maps to itself: its windows start at 0, s, 2s, … and the last
    must end at the last pixel, ``(size − kernel) % stride == 0``."""
    return (size - kernel) % stride == 0


class P4Conv2d(nn.Module):
    """A valid (unpadded) p4 convolution: ``lifting`` from an image (B, C, H, W), else from a
    p4 map (B, C·4, H, W), to a p4 map (B, C'·4, H', W'); one bias per output channel, shared
    by its 4 orientations. ``depthwise`` (C' = C): each channel of a p4 map filtered alone,
    at each orientation by its filter (C, 1, k, k) turned to match."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        *,
        lifting: bool = False,
        depthwise: bool = False,
    ):
        super().__init__()
        if depthwise and in_channels != out_channels:
            raise ValueError(f"a depthwise p4 convolution keeps its {in_channels} channels")
        per_filter = 1 if depthwise else in_channels
        turned = lifting or depthwise  # filters with no orientation axis: lifting_filters
        self.stride, self.groups = stride, out_channels * TURNS if depthwise else 1
        shape = (out_channels, per_filter) + (() if turned else (TURNS,))
        fan_in = per_filter * (1 if turned else TURNS) * kernel_size**2
        bound = 1 / math.sqrt(fan_in)  # nn.Conv2d's default initialisation
        self.weight = nn.Parameter(torch.empty(*shape, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        bank = group_filters(w) if w.dim() == 5 else lifting_filters(w)
        bias = self.bias.repeat_interleave(TURNS)  # (C'·4,)
        return F.conv2d(x, bank, bias, self.stride, groups=self.groups)


class P4BatchNorm(nn.BatchNorm3d):
    """Batch norm of a p4 map (B, C·4, H, W): one mean, variance, scale and shift per channel,
    over its 4 orientations, so that it commutes with the group's action."""

    def forward(self, x: Tensor) -> Tensor:
        b, c4, h, w = x.shape
        return super().forward(x.view(b, c4 // TURNS, TURNS, h, w)).view(b, c4, h, w)


def turn_children(u: Tensor, grid: tuple[int, int, int], turns: int) -> Tensor:
    """The group's action on capsules u (B, I, D) ordered (type, orientation, row, column) on
    ``grid`` = (types, H, W), H = W: the grid turned ``turns`` quarter turns and orientation
    r's capsules moved to r + turns (mod 4); ``turns`` < 0 turns back."""
    b, _, d = u.shape
    t, h, w = grid
    u = u.view(b, t, TURNS, h, w, d).roll(turns, dims=2)  # (B, T, 4, H, W, D)
    return rotate(u, turns, dims=(3, 4)).reshape(b, -1, d)


class FramedCaps(nn.Module):
    """Class capsules that look for each class in several frames: quarter turns of the
    children. For each frame ρ of ``frames`` the children u (B, I, D) of a p4 network (ordered
    as :func:`turn_children` says) are turned back ρ quarter turns and routed to the
    parents by ``caps`` (any layer returning :class:`~capsnet.nn.routing.Routed`); each
    parent keeps the frame where it is longest: activation ``max_ρ a_j(ρ)``, its pose and
    its children's weights from that frame (weights in the children's own order).

    With all 4 frames the activations are invariant to quarter turns of the image; a subset
    such as (0, 1, 3) leaves out upside-down digits (a 9 is a 6 turned twice).
    """

    def __init__(self, caps: nn.Module, grid: tuple[int, int, int], frames: tuple[int, ...]):
        super().__init__()
        self.caps, self.grid, self.frames = caps, grid, frames

    def forward(self, u: Tensor) -> Routed:
        return self.route(u)[0]

    def route(self, u: Tensor) -> tuple[Routed, Tensor]:
        """The parents as :meth:`forward` returns them, and their activations in each
        frame (B, F, J)."""
        b, f = u.shape[0], len(self.frames)
        turned = torch.cat([turn_children(u, self.grid, -r) for r in self.frames])  # (F·B, I, D)
        poses, acts, weights = self.caps(turned)  # (F·B, J, D), (F·B, J), (F·B, I, J)
        per_frame = acts.view(f, b, -1)  # (F, B, J)
        acts, best = per_frame.max(0)  # (B, J): the longest frame of each parent
        poses = poses.view(f, b, *poses.shape[1:]).gather(
            0, best[None, :, :, None].expand(1, -1, -1, poses.shape[-1])
        )[0]  # (B, J, D)
        weights = torch.stack(  # each frame's weights back in the children's order
            [
                turn_children(w, self.grid, r)
                for w, r in zip(weights.view(f, b, *weights.shape[1:]), self.frames, strict=True)
            ]
        )  # (F, B, I, J)
        weights = weights.gather(0, best[None, :, None].expand(1, -1, weights.shape[2], -1))[0]
        return Routed(poses, acts, weights), per_frame.transpose(0, 1)


__all__ = [
    "FramedCaps",
    "P4BatchNorm",
    "P4Conv2d",
    "TURNS",
    "group_filters",
    "lifting_filters",
    "rotate",
    "rotate_p4",
    "symmetric_grid",
    "turn_children",
]
