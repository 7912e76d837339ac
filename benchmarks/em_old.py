"""Today's (2026-11-25, commit 556590a) EM routing, kept verbatim as the benchmark baseline.

``use_old_em(model)`` switches an EM capsule network to it: votes computed for every
patch, routed by this autograd-only ``em_routing`` (one-pass variance, linear λ schedule,
floor 1e-6), every intermediate saved for the backward pass.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from capsnet.nn.layers import Router
from capsnet.nn.routing import Routed, Routing, _wide


def old_em_routing(
    votes: Tensor,
    activations: Tensor,
    beta_u: Tensor,
    beta_a: Tensor,
    iterations: int = 3,
    inverse_temperature: float = 1.0,
    detach_agreement: bool = False,
    eps: float = 1e-6,
) -> tuple[Tensor, Tensor, Tensor]:
    """Procedure 1 of Hinton, Sabour & Frosst (2018), "Matrix capsules with EM routing".

    Each parent j is a Gaussian over the H = D pose components (a flattened 4×4 matrix),
    fitted to the children's votes V_ij weighted by R_ij · a_i:

    * M-step: ``μ_j = Σ_i r_ij V_ij / Σ_i r_ij``, ``σ²_j = Σ_i r_ij (V_ij - μ_j)² / Σ_i r_ij``
      with ``r_ij = R_ij a_i``; ``cost_j = Σ_h (β_u + log σ_jh) Σ_i r_ij``;
      ``a_j = logistic(λ (β_a - cost_j))``.
    * E-step: ``R_ij = a_j p_j(V_ij) / Σ_k a_k p_k(V_ij)`` with p_j the Gaussian density.

    Args:
        votes: V (B, I, J, D); fastest as a ``transpose(1, 2)`` view of a (B, J, I, D)-
            contiguous tensor (the matrix capsule layers make it so).
        activations: a_i of the children (B, I), in [0, 1].
        beta_u, beta_a: learned costs, broadcastable to (J,) (one per parent type).
        iterations: EM iterations (≥ 1); each is an M-step then, except the last, an E-step.
        inverse_temperature: λ of the last iteration. The paper fixes a schedule without
            giving it; here λ rises linearly, λ_t = λ · t / iterations, t = 1 … iterations.
        detach_agreement: if True, no gradient flows through the E-step updates of R.
        eps: variance floor and denominator guard.

    Returns:
        ``(μ, a, R)``: parent poses (B, J, D), parent activations (B, J) in (0, 1) and the
        assignments R (B, I, J) of the last M-step, which sum to 1 over J.

    Numerically safe: all in float32 and the E-step in log space (log a_j from
    ``logsigmoid``, R from a softmax), σ² ≥ eps and Σ_i r_ij guarded, so empty clusters,
    zero activations, identical or huge votes give finite outputs. One deviation, as in
    the widely used public implementations: the cost enters standardised over the parents,
    ``a_j = logistic(λ (β_a + (mean_k cost_k - cost_j) / std_k cost_k))``. The raw cost
    scales with the fan-in and with log σ, whose scale is arbitrary; unscaled it saturates
    every a_j at 0 or 1 from the start and no gradient reaches the layers below.
    """
    if iterations < 1:
        raise ValueError(f"routing needs at least 1 iteration, got {iterations}")
    v = _wide(votes).transpose(1, 2)  # (B, J, I, D): the sums over I below are matmuls
    v2 = v.pow(2)  # (B, J, I, D)
    num_out = v.shape[1]
    a_in = _wide(activations).unsqueeze(1)  # (B, 1, I)
    log_r = v.new_full(v.shape[:3], -math.log(num_out))  # (B, J, I): R = 1/J
    for it in range(1, iterations + 1):
        r = torch.softmax(log_r, dim=1) * a_in  # (B, J, I): R_ij · a_i
        r_sum = r.sum(2)  # (B, J)
        w = (r / (r_sum.unsqueeze(2) + eps)).unsqueeze(2)  # (B, J, 1, I)
        mu = torch.matmul(w, v).squeeze(2)  # (B, J, D)
        # σ² = E[V²] - μ² (clamped: rounding can make it slightly negative).
        var = (torch.matmul(w, v2).squeeze(2) - mu.pow(2)).clamp(min=0) + eps  # (B, J, D)
        cost = (_wide(beta_u).unsqueeze(-1) + 0.5 * torch.log(var)).sum(-1) * r_sum  # (B, J)
        mean = cost.mean(1, keepdim=True)  # (B, 1)
        std = torch.sqrt((cost - mean).pow(2).mean(1, keepdim=True) + eps)  # (B, 1)
        logits = inverse_temperature * it / iterations * (_wide(beta_a) + (mean - cost) / std)
        if it == iterations:
            break
        # E-step: log(a_j p_j(V_ij)), normalised over j by the softmax at the loop top;
        # Σ_h (V - μ)²/σ² = V²·(1/σ²) - 2 V·(μ/σ²) + Σ_h μ²/σ², as matmuls over h.
        inv = 1.0 / var  # (B, J, D)
        sq = (
            torch.matmul(v2, inv.unsqueeze(-1)).squeeze(-1)
            - 2 * torch.matmul(v, (mu * inv).unsqueeze(-1)).squeeze(-1)
            + (mu.pow(2) * inv).sum(-1, keepdim=True)
        ).clamp(min=0)  # (B, J, I)
        log_p = -0.5 * sq - 0.5 * torch.log(2 * math.pi * var).sum(-1, keepdim=True)
        log_r = F.logsigmoid(logits).unsqueeze(-1) + log_p  # (B, J, I)
        if detach_agreement:
            log_r = log_r.detach()
    assignments = torch.softmax(log_r, dim=1).transpose(1, 2)  # (B, I, J)
    return mu.to(votes.dtype), torch.sigmoid(logits).to(votes.dtype), assignments


def _old_em(votes: Tensor, activations: Tensor, params, iterations, detach) -> Routed:
    mu, a, r = old_em_routing(
        votes, activations, params["beta_u"], params["beta_a"], iterations, detach_agreement=detach
    )
    return Routed(mu, a, r)


def use_old_em(model: nn.Module) -> nn.Module:
    """Route every EM layer of ``model`` with :func:`old_em_routing` on stored votes."""
    for m in model.modules():
        if isinstance(m, Router) and "beta_u" in m.params:
            m.routing = Routing(_old_em, m.routing.parameters)
    return model
