"""Pure capsule maths: the squash non-linearity and routing by agreement.

Shapes use B = batch, I = input (child) capsules, J = output (parent) capsules,
D = pose dimension. Equations are numbered as in Sabour, Frosst & Hinton (2017),
"Dynamic Routing Between Capsules".
"""

from __future__ import annotations

import torch
from torch import Tensor

EPS = 1e-8


def squash(s: Tensor, dim: int = -1, eps: float = EPS) -> Tensor:
    """Eq. 1: ``v = |s|² / (1 + |s|²) · s / |s|``.

    The norm is ``sqrt(Σ s² + eps)`` and is computed in float32, so the value and the
    gradient stay finite at ``s = 0`` and under bf16/fp16 inputs (Σ s² cannot overflow).
    The result has the dtype of ``s``.
    """
    s32 = s.float()
    sq = s32.pow(2).sum(dim, keepdim=True)
    scale = sq / (1.0 + sq) / torch.sqrt(sq + eps)
    return (s32 * scale).to(s.dtype)


def capsule_lengths(v: Tensor, dim: int = -1) -> Tensor:
    """Length ``|v|`` of each capsule along ``dim``, exact (no ε) with gradient 0 at v = 0."""
    return torch.linalg.vector_norm(v.float(), dim=dim).to(v.dtype)


def dynamic_routing(
    u_hat: Tensor, iterations: int = 3, detach_agreement: bool = False
) -> tuple[Tensor, Tensor]:
    """Procedure 1: routing by agreement.

    Args:
        u_hat: predictions ``û_{j|i} = W_ij u_i`` of shape (B, I, J, D). Fastest when it is
            a ``transpose(1, 2)`` view of a (B, J, I, D)-contiguous tensor (as
            :class:`~capsnet.layers.RoutingCaps` makes it): every step below is then a
            batched matrix-vector product over contiguous memory.
        iterations: number of routing iterations r (≥ 1).
        detach_agreement: if True, gradients do not flow through the agreement updates
            ``b_ij += û_{j|i} · v_j`` (only through the last iteration's weighted sum).
            The official implementation lets them flow (the default).

    Returns:
        ``(v, c)``: parent capsules (B, J, D) and the final coupling coefficients
        (B, I, J), which sum to 1 over the parents J.

    The logits b_ij start at 0 for every example (so the first iteration couples
    uniformly), c_i = softmax(b_i) over the parents (eq. 3), s_j = Σ_i c_ij û_{j|i}
    (eq. 2), v_j = squash(s_j) (eq. 1); b is not updated after the last iteration.
    Accumulations run in float32 even under autocast.
    """
    if iterations < 1:
        raise ValueError(f"routing needs at least 1 iteration, got {iterations}")
    u = u_hat.float().transpose(1, 2)  # (B, J, I, D)
    u_agree = u.detach() if detach_agreement else u
    b = u.new_zeros(u.shape[:3])  # (B, J, I) routing logits
    for it in range(iterations):
        c = torch.softmax(b, dim=1)  # (B, J, I), eq. 3: softmax over parents
        s = torch.matmul(c.unsqueeze(2), u).squeeze(2)  # (B, J, D), eq. 2
        v = squash(s)  # (B, J, D), eq. 1
        if it < iterations - 1:
            b = b + torch.matmul(u_agree, v.unsqueeze(-1)).squeeze(-1)  # (B, J, I): û·v
    return v.to(u_hat.dtype), c.transpose(1, 2)
