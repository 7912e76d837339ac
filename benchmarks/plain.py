"""The paper network computed the plain way, as public PyTorch CapsNets do: a benchmark
baseline and an independent reference for the fast paths in ``capsnet``. An Aff-CapsNet's
shared matrices are repeated for every child, as a plain implementation would.

It shares the parameters of a :class:`capsnet.CapsNet`, so outputs can be compared exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from capsnet import CapsNet, CapsNetOutput


def plain_squash(s: Tensor) -> Tensor:
    n2 = (s**2).sum(-1, keepdim=True)
    return n2 / (1 + n2) * s / torch.sqrt(n2 + 1e-8)


class PlainCapsNet(nn.Module):
    """Broadcast matmul for û = W u and broadcast multiply-and-sum for routing."""

    def __init__(self, net: CapsNet):
        super().__init__()
        self.net, self.config = net, net.config

    def loss(self, out: CapsNetOutput, x: Tensor, y: Tensor):
        return self.net.loss(out, x, y)

    def forward(self, x: Tensor, y: Tensor | None = None) -> CapsNetOutput:
        net, cfg = self.net, self.config
        conv = net.primary.conv  # called as a plain convolution, never through the DFT
        p = F.conv2d(F.relu(net.conv1(x)), conv.weight, conv.bias, conv.stride)  # (B, T·D, H', W')
        batch, _, h, w = p.shape
        u = p.view(batch, cfg.primary_types, cfg.primary_dim, h, w)
        u = plain_squash(u.permute(0, 1, 3, 4, 2).reshape(batch, -1, cfg.primary_dim))
        w_ij = net.classes.weight  # (I, J, D, K); an Aff-CapsNet's (G, J, D, K): repeated
        w_ij = w_ij.repeat_interleave(u.shape[1] // w_ij.shape[0], 0).unsqueeze(0)  # (1, I, ...)
        u_hat = (w_ij @ u[:, :, None, :, None]).squeeze(-1)  # (B, I, J, D)
        b = torch.zeros(u_hat.shape[:3], device=x.device)  # (B, I, J)
        for r in range(cfg.routing_iterations):
            c = F.softmax(b, dim=2)
            v = plain_squash((c.unsqueeze(-1) * u_hat).sum(1))  # (B, J, D)
            if r < cfg.routing_iterations - 1:
                b = b + (u_hat * v.unsqueeze(1)).sum(-1)
        lengths = v.norm(dim=-1)
        recon = None
        if net.decoder is not None:
            target = lengths.argmax(1) if y is None else y
            mask = F.one_hot(target, cfg.num_classes).to(v.dtype)
            recon = net.decoder(v * mask.unsqueeze(-1))
        return CapsNetOutput(lengths, v, recon, c)
