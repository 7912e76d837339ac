"""Thin capsule layers; the maths lives in :mod:`capsnet.routing`."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from capsnet.routing import dynamic_routing, squash


class PrimaryCaps(nn.Module):
    """Convolutional capsules: one conv with ``types · dim`` channels, squashed per capsule.

    Channels ``[t·dim, (t+1)·dim)`` form capsule type ``t``; a capsule is those ``dim``
    channels at one spatial position. Input (B, C, H, W) → output (B, types·H'·W', dim),
    capsules ordered (type, row, column).
    """

    def __init__(self, in_channels: int, types: int, dim: int, kernel_size: int, stride: int):
        super().__init__()
        self.types, self.dim = types, dim
        self.conv = nn.Conv2d(in_channels, types * dim, kernel_size, stride)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)  # (B, types·dim, H', W')
        b, _, h, w = y.shape
        y = y.view(b, self.types, self.dim, h, w)  # channel → (type, component)
        y = y.permute(0, 1, 3, 4, 2).reshape(b, self.types * h * w, self.dim)  # (B, I, dim)
        return squash(y)


class RoutingCaps(nn.Module):
    """Fully connected capsule layer: predictions ``û_{j|i} = W_ij u_i`` and dynamic routing.

    Input (B, I, in_dim) → ``(v, c)``: parents (B, J, out_dim), coupling (B, I, J).
    No bias and no learned routing prior, as in the paper.
    """

    def __init__(
        self,
        in_caps: int,
        in_dim: int,
        out_caps: int,
        out_dim: int,
        iterations: int = 3,
        detach_agreement: bool = False,
    ):
        super().__init__()
        self.iterations, self.detach_agreement = iterations, detach_agreement
        self.weight = nn.Parameter(0.01 * torch.randn(in_caps, out_caps, out_dim, in_dim))

    def forward(self, u: Tensor) -> tuple[Tensor, Tensor]:
        u_hat = torch.einsum("ijdk,bik->bjid", self.weight, u).contiguous()  # (B, J, I, D)
        # Routing takes (B, I, J, D); this view keeps the (B, J, I, D) memory layout it
        # runs fastest on (see dynamic_routing).
        return dynamic_routing(u_hat.transpose(1, 2), self.iterations, self.detach_agreement)


class Decoder(nn.Module):
    """FC decoder fed the masked class capsules (B, J, D) → image (B, C, H, W) in [0, 1]."""

    def __init__(self, in_features: int, hidden: tuple[int, ...], out_shape: tuple[int, ...]):
        super().__init__()
        self.out_shape = out_shape
        sizes = (in_features, *hidden)
        layers: list[nn.Module] = []
        for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(n_in, n_out), nn.ReLU(inplace=True)]
        layers += [nn.Linear(sizes[-1], math.prod(out_shape)), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, masked_poses: Tensor) -> Tensor:
        return self.net(masked_poses.flatten(1)).view(-1, *self.out_shape)
