"""EM routing for convolutional matrix capsules without storing the votes.

:func:`conv_em_routing` computes the votes V_ij = M_i W_ij of a convolutional capsule
layer chunk by chunk of routing problems and routes each chunk with the maths of
:mod:`capsnet.nn.em`, so all the votes are never in memory at once. In the backward
pass V' = V - c and V'² are constants to autograd: the gradient each contraction sends
them is a rank-1 term per (problem, parent), taped (:class:`capsnet.nn.em.Votes`) and
summed in one matmul, so autograd only sees tensors 1/16 the size of the votes. A chunk's
graph is kept from the forward pass while the kept graphs fit in ``KEEP_BYTES``; the other
chunks are recomputed in the backward pass.

Shapes: n = routing problems in a chunk, I = children (K·K·T_in), J = parents (T_out),
poses M (n, I, 4, 4), W (I, J, 4, 4), votes (n, J, I, 16).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from capsnet import _deprecated
from capsnet.nn.em import (
    Tape,
    Votes,
    _route,
    _wide,
    inverse_temperatures,
    mean_weights,
    tape_gradient,
)
from capsnet.nn.native import em_kernels, em_native_applies
from capsnet.runtime import tracing

CHUNK_BYTES = 8 << 20  # V' and V'² per chunk of conv_em_routing (1-4 MB measured slower)
KEEP_BYTES = 768 << 20  # graphs of chunks kept from the forward pass, per conv_em_routing
KEPT_NUMBERS = 56  # a kept graph's numbers per (n, j, i): V', V'² and the small tensors


@_deprecated.keyword_only(5)
def conv_em_routing(
    poses: Tensor,
    weight: Tensor,
    activations: Tensor,
    beta_u: Tensor,
    beta_a: Tensor,
    *,
    iterations: int = 3,
    final_beta: float = 1.0,
    detach_agreement: bool = False,
    chunk: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Votes ``V_ij = M_i W_ij`` and :func:`em_routing` on them, chunk by chunk, never stored.

    Args:
        poses: the children's pose matrices M (N, I, 4, 4), one routing problem per row.
        weight: W (I, J, 4, 4), shared by the N problems.
        activations: a_i (N, I); the rest as for :func:`em_routing`.
        chunk: routing problems per chunk (default: U of about ``CHUNK_BYTES``).

    Returns:
        ``(μ, a)``: parent poses (N, J, 16), activations (N, J), equal to
        ``em_routing(V, a_in, …)[:2]`` with V (N, I, J, 16).

    On the CPU this runs the native kernel of :mod:`capsnet.nn.native` where it can be built
    (the same maths, one routing problem at a time, with a hand-written backward pass).
    Otherwise the forward pass keeps only the inputs; the backward pass recomputes each
    chunk's U and its iterations on the small tensors only (U a constant, its gradient
    taped, see :class:`Votes`), so one chunk's U is in memory at a time. Neither is twice
    differentiable.
    """
    lambdas = inverse_temperatures(iterations, final_beta)
    i = activations.shape[1]
    chunk = chunk or max(1, CHUNK_BYTES // (i * weight.shape[1] * 32 * poses.element_size()))
    args = (_wide(poses), _wide(weight), _wide(activations), _wide(beta_u), _wide(beta_a))
    with torch.autocast(poses.device.type, enabled=False):
        if em_native_applies(poses):
            j = weight.shape[1]
            bu, ba = (b.expand(j).contiguous() for b in args[3:])  # (J,) each
            mu, a = _NativeEM.apply(*args[:3], bu, ba, lambdas, detach_agreement)
        elif tracing():  # one chunk, traceable
            mu, a = _conv_forward(*args, lambdas)
        else:
            mu, a = _ConvEM.apply(*args, lambdas, detach_agreement, chunk)
    return mu.to(poses.dtype), a.to(poses.dtype)


def _conv_votes(poses: Tensor, weight: Tensor, acts: Tensor) -> tuple[Votes, Tensor]:
    """V' = M_i W_ij - c_j and V'² (n, J, I, 16) and the shift c (n, J, 16), the
    a-weighted mean vote, for poses (n, I, 4, 4), W (I, J, 4, 4) and a (n, I)."""
    n, i = acts.shape
    j = weight.shape[1]
    w = mean_weights(acts)  # (n, I): the shift of em.vote_mean
    # c_j = Σ_i w_i M_i W_ij without the votes: one matmul over (i, q)
    m = (w[:, :, None, None] * poses).permute(0, 2, 1, 3).reshape(n * 4, i * 4)
    c = (m @ weight.permute(0, 2, 1, 3).reshape(i * 4, j * 4)).view(n, 4, j, 4)
    c = c.permute(0, 2, 1, 3).reshape(n, j, 16)
    # one matmul per child i: (n·p, q) @ (q, j·r), laid out (i, n, p, j, r)
    m = poses.transpose(0, 1).reshape(i, n * 4, 4)
    votes = torch.bmm(m, weight.permute(0, 2, 1, 3).reshape(i, 4, j * 4))
    votes = votes.view(i, n, 4, j, 4).permute(1, 3, 0, 2, 4).reshape(n, j, i, 16)  # (n, J, I, 16)
    v1 = votes.sub_(c.unsqueeze(2))  # the reshape copied: in place
    return Votes(v1, v1 * v1), c


def _vote_grads(poses: Tensor, weight: Tensor, g_v: Tensor) -> tuple[Tensor, Tensor]:
    """∂L/∂M (n, I, 4, 4) and ∂L/∂W (I, J, 4, 4) from ∂L/∂V, g_v (I, n, 4, J, 4)."""
    i, n, _, j, _ = g_v.shape
    g = g_v.view(i, n * 4, j * 4)
    g_m = torch.bmm(g, weight.permute(0, 1, 3, 2).reshape(i, j * 4, 4))  # (I, n·p, q)
    g_w = torch.bmm(poses.permute(1, 3, 0, 2).reshape(i, 4, n * 4), g)  # (I, q, j·r)
    return g_m.view(i, n, 4, 4).transpose(0, 1), g_w.view(i, 4, j, 4).transpose(1, 2)


Graph = tuple[tuple[Tensor, Tensor], list[Tensor], Tape, Votes]  # (μ, a), leaves, tape, V'


def _conv_forward(
    poses: Tensor, weight: Tensor, acts: Tensor, beta_u: Tensor, beta_a: Tensor, lambdas: list
) -> tuple[Tensor, Tensor]:
    """One chunk, no autograd: → μ (n, J, 16), a (n, J)."""
    votes, c = _conv_votes(poses, weight, acts)
    mu, logits, _ = _route(votes, votes, c, acts.unsqueeze(1), beta_u, beta_a, lambdas=lambdas)
    return mu + c, torch.sigmoid(logits)


def _conv_graph(
    poses: Tensor,
    weight: Tensor,
    acts: Tensor,
    beta_u: Tensor,
    beta_a: Tensor,
    *,
    lambdas: list[float],
    detach: bool,
) -> Graph:
    """One chunk's forward under autograd on the small tensors only: ((μ, a), leaves, tape,
    V' and V'²), for :func:`_conv_grads`."""
    plain, c = _conv_votes(poses, weight, acts)
    tape: Tape = []
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_() for t in (acts, beta_u, beta_a, plain.v1)]
        votes = Votes(leaves[3], plain.v2, tape)
        agree = plain if detach else votes
        mu, logits, _ = _route(
            votes, agree, c, leaves[0].unsqueeze(1), *leaves[1:3], lambdas=lambdas
        )
        return (mu + c, torch.sigmoid(logits)), leaves, tape, plain


def _conv_grads(graph: Graph, poses: Tensor, weight: Tensor, g_mu: Tensor, g_a: Tensor) -> list:
    """One chunk's gradients for poses, weight, acts, beta_u, beta_a from its graph."""
    outs, leaves, tape, plain = graph
    g_acts, g_bu, g_ba, _ = torch.autograd.grad(outs, leaves, (g_mu, g_a), allow_unused=True)
    g1, g2 = tape_gradient(tape)  # ∂L/∂V', ∂L/∂V'² (n, J, I, 16)
    g1.addcmul_(plain.v1, g2, value=2)  # ∂L/∂V = ∂L/∂V' + 2 V' ∂L/∂V'²
    n, j, i, _ = g1.shape
    g_v = g1.new_empty(i, n, 4, j, 4)  # in the layout of the votes' matmul (a faster copy
    g_v.permute(1, 3, 0, 2, 4).copy_(g1.view(n, j, i, 4, 4))  # than a strided addcmul)
    return (*_vote_grads(poses, weight, g_v), g_acts, g_bu, g_ba)


class _ConvEM(torch.autograd.Function):
    """:func:`conv_em_routing`: chunks of routing problems. Under autograd, the chunks
    whose graphs fit in ``KEEP_BYTES`` keep them from the forward pass; the backward pass
    recomputes the others."""

    @staticmethod
    def forward(ctx, poses, weight, acts, beta_u, beta_a, lambdas, detach, chunk):  # type: ignore[override]
        ctx.save_for_backward(poses, weight, acts, beta_u, beta_a)
        ctx.lambdas, ctx.detach, ctx.chunk, ctx.kept = lambdas, detach, chunk, {}
        n, i = acts.shape
        per_chunk = chunk * i * weight.shape[1] * KEPT_NUMBERS * poses.element_size()
        keep = KEEP_BYTES // per_chunk if any(ctx.needs_input_grad[:5]) else 0
        outs = []
        for s in range(0, n, chunk):
            args = (poses[s : s + chunk], weight, acts[s : s + chunk], beta_u, beta_a)
            if len(ctx.kept) < keep:
                ctx.kept[s] = _conv_graph(*args, lambdas=lambdas, detach=detach)
                outs.append([t.detach() for t in ctx.kept[s][0]])
            else:
                outs.append(_conv_forward(*args, lambdas))
        return torch.cat([m for m, _ in outs]), torch.cat([a for _, a in outs])

    @staticmethod
    @once_differentiable
    def backward(ctx, g_mu: Tensor, g_a: Tensor):  # type: ignore[override]
        poses, weight, acts, beta_u, beta_a = ctx.saved_tensors
        grads = [torch.zeros_like(t) for t in ctx.saved_tensors]
        for s in range(0, acts.shape[0], ctx.chunk):
            part = slice(s, s + ctx.chunk)
            graph = ctx.kept.pop(s, None) or _conv_graph(
                poses[part],
                weight,
                acts[part],
                beta_u,
                beta_a,
                lambdas=ctx.lambdas,
                detach=ctx.detach,
            )
            got = _conv_grads(graph, poses[part], weight, g_mu[part], g_a[part])
            for k, g in enumerate(got):
                if g is not None:
                    (grads[k][part] if k in (0, 2) else grads[k]).add_(g)
        return (*grads, None, None, None)


class _NativeEM(torch.autograd.Function):
    """:func:`conv_em_routing` by the native kernel: under autograd the forward pass keeps the
    inputs and each problem's iterations (R, μ, σ², costs, logits: about 1/8 of the votes
    for 3 iterations), the backward pass makes the votes again and runs the adjoint."""

    @staticmethod
    def forward(ctx, poses, weight, acts, beta_u, beta_a, lambdas, detach):  # type: ignore[override]
        n, i = acts.shape
        flat = (
            poses.reshape(n, i, 16).contiguous(),
            weight.reshape(i, -1, 16).contiguous(),  # (I, J, 16)
            acts.contiguous(),
            beta_u,
            beta_a,
        )
        keep = any(ctx.needs_input_grad[:5])
        mu, a, state = em_kernels().em_forward(*flat, lambdas, keep)
        ctx.save_for_backward(*flat, state)
        ctx.lambdas, ctx.detach, ctx.shapes = lambdas, detach, (poses.shape, weight.shape)
        return mu, a

    @staticmethod
    @once_differentiable
    def backward(ctx, g_mu: Tensor, g_a: Tensor):  # type: ignore[override]
        *flat, state = ctx.saved_tensors
        g = em_kernels().em_backward(*flat, ctx.lambdas, state, g_mu, g_a, ctx.detach)
        return g[0].view(ctx.shapes[0]), g[1].view(ctx.shapes[1]), *g[2:], None, None
