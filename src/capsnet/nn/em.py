"""EM routing, Procedure 1 of Hinton, Sabour & Frosst (2018), "Matrix capsules with EM routing".

Shapes: N = routing problems (batch, or batch × positions of a convolutional layer),
I = children, J = parents, D = pose components (16, a flattened 4×4 matrix).

Where the paper is silent this follows the authors' released code, google-research
``capsule_em/em_layers.py`` (``update_em_routing``): the inverse temperature of iteration
t = 1 … T is ``final_beta · (1 - 0.95^t)``, the variance has the floor ``MIN_VAR`` added,
and ``MASS_EPS`` is added to the mass Σ_i r_ij.

The votes are shifted once per routing call by their a-weighted mean c_j (:func:`vote_mean`,
detached; with R = 1/J it is the first M-step's μ_j), and V' = V - c and V'² are formed once
(:func:`centre`). Every sum over children and pose components in the iterations is then a
matmul on them (:class:`Votes`): the M-step's Σ_i r_ij V'_ij and Σ_i r_ij V'²_ij, and the
E-step's Σ_d (V' - μ')²/σ² expanded; no (V - μ)² is formed per iteration. The result does
not depend on c in exact arithmetic, so c is a constant for autograd and the gradients are
exact. In float32 the variance E[V'²] - μ'² has an absolute rounding error of about
1e-6 · |μ_j - c_j|² (measured for a cluster of σ = 0.01: 6e-6 at |μ - c| = 2.5, 8e-5 at
10, against the floor MIN_VAR = 5e-4): exact for a tight cluster far from the origin whose
mean is near c, less exact for a tight cluster far from the other votes of its parent.

:func:`em_routing` runs on given votes under plain autograd (the class capsules).
:func:`capsnet.nn.em_conv.conv_em_routing` (the convolutional capsule layers) computes the votes
itself, chunk by chunk of routing problems, and never stores all of them: in the backward
pass V' and V'² are constants and the gradient each contraction sends them is a rank-1
term, taped and summed in one matmul, so autograd only sees tensors 1/16 the size of the
votes; chunks are recomputed unless their graphs fit in ``KEEP_BYTES``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from capsnet import _deprecated

MIN_VAR = 5e-4  # capsule_em: min_var
MASS_EPS = 1e-5  # capsule_em: added to the masses Σ_i r_ij
STD_EPS = 1e-6  # added to the variance of the costs over the parents, under the square root


def inverse_temperatures(iterations: int, final_beta: float) -> list[float]:
    """λ_t = final_beta · (1 - 0.95^t), t = 1 … iterations (capsule_em's schedule)."""
    if iterations < 1:
        raise ValueError(f"routing needs at least 1 iteration, got {iterations}")
    return [final_beta * (1 - 0.95**t) for t in range(1, iterations + 1)]


def centre(votes: Tensor, shift: Tensor) -> Votes:
    """V' = V - shift and V'² for votes V (N, J, I, D) and the shift (N, J, D)."""
    vc = votes - shift.unsqueeze(2)  # (N, J, I, D)
    return Votes(vc, vc * vc)


def mean_weights(a: Tensor) -> Tensor:
    """a_i / (Σ_i a_i + MASS_EPS) over the last dimension: the weights of the shift."""
    return a / (a.sum(-1, keepdim=True) + MASS_EPS)


def vote_mean(votes: Tensor, a_in: Tensor) -> Tensor:
    """The a-weighted mean of the votes, Σ_i a_i V_ij / (Σ_i a_i + MASS_EPS): (N, J, D),
    detached. With R = 1/J it is the first M-step's μ_j (up to MASS_EPS)."""
    with torch.no_grad():
        w = mean_weights(a_in)  # (N, 1, I)
        return torch.matmul(w.unsqueeze(1), votes).squeeze(2)  # (N, J, D)


Tape = list[tuple[Tensor, Tensor]]  # rank-1 gradient terms (a (N, J, I), b (N, J, 2D))


class Votes:
    """V' (N, J, I, D) and V'² behind the two contractions the iterations need.

    With a ``tape``, V' and V'² are constants for autograd: each contraction's share of
    their gradient, a rank-1 term ``a ⊗ b`` per (n, j) (a over the children, b over the 2D
    components of [V', V'²]), goes to the tape, and :func:`tape_gradient` sums them.
    """

    def __init__(self, v1: Tensor, v2: Tensor, tape: Tape | None = None):
        self.v1, self.v2, self.tape = v1, v2, tape

    def detach(self) -> Votes:
        return Votes(self.v1.detach(), self.v2.detach())

    def weighted_sum(self, w: Tensor) -> Tensor:
        """[Σ_i w_ij V'_ij, Σ_i w_ij V'²_ij]: w (N, J, I) → (N, J, 2D)."""
        if self.tape is not None:
            return _Contract.apply(w, self.v1, self.v2, self.tape, True)
        w = w.unsqueeze(2)  # (N, J, 1, I)
        return torch.cat([torch.matmul(w, self.v1), torch.matmul(w, self.v2)], -1).squeeze(2)

    def project(self, x: Tensor) -> Tensor:
        """V'_ij · x_j[:D] + V'²_ij · x_j[D:]: x (N, J, 2D) → (N, J, I)."""
        if self.tape is not None:
            return _Contract.apply(x, self.v1, self.v2, self.tape, False)
        x1, x2 = x.unsqueeze(-1).chunk(2, dim=-2)  # (N, J, D, 1) each
        return (torch.matmul(self.v1, x1) + torch.matmul(self.v2, x2)).squeeze(-1)


class _Contract(torch.autograd.Function):
    """A contraction of :class:`Votes` whose gradient for V', V'² goes to the tape."""

    @staticmethod
    def forward(ctx, small: Tensor, v1: Tensor, v2: Tensor, tape: Tape, over_children: bool):  # type: ignore[override]
        ctx.small, ctx.votes, ctx.tape = small, Votes(v1.detach(), v2.detach()), tape
        ctx.over_children = over_children
        return ctx.votes.weighted_sum(small) if over_children else ctx.votes.project(small)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None, None, None, None]:  # type: ignore[override]
        if ctx.over_children:  # out = Σ_i w_i U_i: ∂/∂w_i = U_i · g, ∂/∂U_i = w_i g
            ctx.tape.append((ctx.small.detach(), g))
            return ctx.votes.project(g), None, None, None, None
        ctx.tape.append((g, ctx.small.detach()))  # out_i = U_i · x: ∂/∂x = Σ_i g_i U_i
        return ctx.votes.weighted_sum(g), None, None, None, None


def tape_gradient(tape: Tape) -> tuple[Tensor, Tensor]:
    """∂L/∂V', ∂L/∂V'² (N, J, I, D) each: Σ_k a_k ⊗ b_k over the tape's a_k (N, J, I) and
    b_k (N, J, 2D), as two matmuls with inner size K (the tape's length)."""
    a = torch.stack([a for a, _ in tape], dim=-1)  # (N, J, I, K)
    b1, b2 = torch.stack([b for _, b in tape], dim=-2).chunk(2, dim=-1)  # (N, J, K, D) each
    return torch.matmul(a, b1), torch.matmul(a, b2)


def m_step(u: Votes, r: Tensor, shift: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """M-step of Procedure 1 on U = [V', V'²] (N, J, I, 2D), V' = V - shift (shift (N, J, D)),
    weighted by r = R · a (N, J, I).

    Returns μ_j - shift_j (N, J, D) with ``μ_j = Σ_i r_ij V_ij / m_j``, σ²_j (N, J, D) and the
    mass ``m_j = Σ_i r_ij + MASS_EPS`` (N, J). One matmul gives ``M1 = Σ_i w_ij V'_ij`` and
    ``E = Σ_i w_ij V'²_ij`` (w_ij = r_ij / m_j, s_j = Σ_i w_ij); then, exactly,
    ``μ_j - shift_j = M1 - (1 - s) shift`` and ``Σ_i w_ij (V_ij - μ_j)² = E - 2 (μ - shift) M1
    + s (μ - shift)²``, clamped at 0 against rounding; σ² is that + MIN_VAR.
    """
    mass = r.sum(2) + MASS_EPS  # (N, J)
    m1, sq = u.weighted_sum(r / mass.unsqueeze(2)).chunk(2, dim=-1)  # (N, J, D)
    rest = (MASS_EPS / mass).unsqueeze(-1)  # (N, J, 1): 1 - s
    mu = m1 - rest * shift  # μ - shift
    var = (sq - 2 * mu * m1 + (1 - rest) * mu * mu).clamp(min=0) + MIN_VAR
    return mu, var, mass


def _logits(var: Tensor, mass: Tensor, beta_u: Tensor, beta_a: Tensor, lam: float) -> Tensor:
    """λ (β_a + (mean_k cost_k - cost_j) / std_k cost_k), cost_j = Σ_h (β_u + log σ_jh) mass_j.

    (N, J). The standardisation over the parents is this library's documented deviation.
    """
    cost = (beta_u.unsqueeze(-1) + 0.5 * torch.log(var)).sum(-1) * mass  # (N, J)
    mean = cost.mean(1, keepdim=True)
    std = torch.sqrt((cost - mean).pow(2).mean(1, keepdim=True) + STD_EPS)
    return lam * (beta_a + (mean - cost) / std)


def _e_step(logits: Tensor, mu: Tensor, var: Tensor, u: Votes) -> Tensor:
    """log(a_j p_j(V_ij)) (N, J, I), p_j the Gaussian density N(μ_j, diag σ²_j).

    ``Σ_d (V'_ijd - μ'_jd)² / σ²_jd = V'_ij·(-2 μ'_j/σ²_j) + V'²_ij·(1/σ²_j) + Σ_d μ'²/σ²``:
    one matmul on U (N, J, I, 2D).
    """
    inv = 1.0 / var  # (N, J, D)
    x = torch.cat([-2 * mu * inv, inv], dim=-1)  # (N, J, 2D)
    sq = u.project(x) + (mu * mu * inv).sum(-1, keepdim=True)  # (N, J, I)
    log_norm = 0.5 * torch.log(2 * math.pi * var).sum(-1, keepdim=True)  # (N, J, 1)
    return F.logsigmoid(logits).unsqueeze(-1) - 0.5 * sq.clamp(min=0) - log_norm


def _route(
    u: Votes,
    agree: Votes,
    shift: Tensor,
    a_in: Tensor,
    beta_u: Tensor,
    beta_a: Tensor,
    *,
    lambdas: list[float],
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Procedure 1 on U = [V', V'²] (N, J, I, 2D), V' = V - shift, and a_in (N, 1, I) →
    μ - shift (N, J, D), logits (N, J), and log(a_j p_j) (N, J, I) of the last E-step (None
    if T = 1).

    Every E-step (and the M-steps feeding it) sees ``agree``; the last M-step sees ``u``
    (``agree`` is U detached for ``detach_agreement``, else ``u`` itself).
    """
    r = (a_in / u.v1.shape[1]).expand(u.v1.shape[:3])  # (N, J, I): R = 1/J
    log_r = None
    for t, lam in enumerate(lambdas):
        last = t == len(lambdas) - 1
        mu, var, mass = m_step(u if last else agree, r, shift)
        logits = _logits(var, mass, beta_u, beta_a, lam)
        if last:
            break
        log_r = _e_step(logits, mu, var, agree)  # (N, J, I)
        r = torch.softmax(log_r, dim=1) * a_in
    return mu, logits, log_r


def _wide(x: Tensor) -> Tensor:
    """``x`` in float32, or float64 if it is float64: the precision capsule maths run in."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


@_deprecated.keyword_only(4)
def em_routing(
    votes: Tensor,
    activations: Tensor,
    beta_u: Tensor,
    beta_a: Tensor,
    *,
    iterations: int = 3,
    final_beta: float = 1.0,
    detach_agreement: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Procedure 1 of Hinton, Sabour & Frosst (2018) on given votes, under autograd.

    Each parent j is a Gaussian over the D pose components, fitted to the children's votes
    V_ij weighted by r_ij = R_ij a_i:

    * M-step: ``μ_j = Σ_i r_ij V_ij / m_j``, ``σ²_j = Σ_i r_ij (V_ij - μ_j)² / m_j +
      MIN_VAR`` with the mass ``m_j = Σ_i r_ij + MASS_EPS``; ``cost_j = Σ_h (β_u + log σ_jh)
      m_j``; ``a_j = logistic(λ_t (β_a + (mean_k cost_k - cost_j) / std_k cost_k))``.
    * E-step: ``R_ij = a_j p_j(V_ij) / Σ_k a_k p_k(V_ij)``, in log space (a softmax).

    Args:
        votes: V (B, I, J, D); fastest as a ``transpose(1, 2)`` view of a (B, J, I, D)-
            contiguous tensor.
        activations: a_i of the children (B, I), in [0, 1].
        beta_u, beta_a: learned costs, broadcastable to (J,) (one per parent type).
        iterations: T ≥ 1; each iteration is an M-step then, except the last, an E-step.
        final_beta: the schedule λ_t = final_beta · (1 - 0.95^t) of capsule_em.
        detach_agreement: if True, the assignments R of every iteration are computed from
            detached votes, and gradient reaches the votes only through the last M-step
            (μ, σ², a_j from the votes, with those R). a_i, β_u and β_a keep all paths.

    Returns:
        ``(μ, a, R)``: parent poses (B, J, D), activations (B, J) in (0, 1) and the
        assignments R (B, I, J) used by the last M-step, which sum to 1 over J.

    Deviation (as in widely used public implementations): the cost is standardised over
    the parents. Unscaled, it grows with the fan-in and with log σ, whose scale is
    arbitrary, and saturates every a_j at 0 or 1 from the start. All sums run in float32
    (float64 stays float64); empty clusters, zero activations, equal or huge votes give
    finite outputs and gradients.
    """
    lambdas = inverse_temperatures(iterations, final_beta)
    v = _wide(votes).transpose(1, 2)  # (B, J, I, D): the sums over I are matmuls
    a_in = _wide(activations).unsqueeze(1)  # (B, 1, I)
    bu, ba = _wide(beta_u), _wide(beta_a)
    with torch.autocast(v.device.type, enabled=False):
        shift = vote_mean(v, a_in)  # (B, J, D)
        u = centre(v, shift)
        agree = u.detach() if detach_agreement else u
        mu, logits, log_r = _route(u, agree, shift, a_in, bu, ba, lambdas=lambdas)
        if log_r is None:  # one iteration: R = 1/J
            r = v.new_full(v.shape[:3], 1 / v.shape[1])
        else:
            r = torch.softmax(log_r, dim=1)  # (B, J, I)
    out = votes.dtype
    return (mu + shift).to(out), torch.sigmoid(logits).to(out), r.transpose(1, 2)
