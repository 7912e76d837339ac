"""Pure capsule maths: squash non-linearities and three routing algorithms.

Shapes use B = batch, I = input (child) capsules, J = output (parent) capsules,
D = pose dimension. Unless said otherwise, equations are numbered as in Sabour, Frosst &
Hinton (2017), "Dynamic Routing Between Capsules".

Routing is a choice: :data:`ROUTINGS` maps a name (``dynamic``, ``em``,
``self-attention``) to a :class:`Routing` with one contract, votes (B, I, J, D) and child
activations (B, I) in, :class:`Routed` (parent poses, parent activations, assignment
weights (B, I, J)) out. A routing may add fast paths of its own (``Routing.fused``,
``shared``, ``patches``) that route the children through their matrices without forming the
votes; the layers of :mod:`capsnet.nn.layers` take them where given, so a new routing needs
no edit there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from capsnet.errors import ConfigError
from capsnet.nn.em import _wide
from capsnet.nn.em import em_routing as em_routing  # EM maths live there
from capsnet.nn.em_conv import conv_em_routing
from capsnet.nn.native import dynamic_kernels, dynamic_native_applies

EPS = 1e-8


def squash(s: Tensor, dim: int = -1, eps: float = EPS) -> Tensor:
    """Eq. 1: ``v = |s|² / (1 + |s|²) · s / |s|``.

    The norm is ``sqrt(Σ s² + eps)`` and is computed in float32 (float64 stays float64), so
    the value and the gradient stay finite at ``s = 0`` and under bf16/fp16 inputs (Σ s²
    cannot overflow). The result has the dtype of ``s``.
    """
    s32 = _wide(s)
    return (s32 * _squash_scale(s32.pow(2).sum(dim, keepdim=True), eps)).to(s.dtype)


def _squash_scale(sq: Tensor, eps: float) -> Tensor:
    """``|s|² / (1 + |s|²) / sqrt(|s|² + eps)`` from ``sq = |s|²``."""
    return sq / (1.0 + sq) / torch.sqrt(sq + eps)


def squash_backward(s: Tensor, grad: Tensor, dim: int = -1, eps: float = EPS) -> Tensor:
    """Gradient of :func:`squash` at ``s`` for the output gradient ``grad`` (float32 or 64).

    With ``q = |s|²``, ``n = sqrt(q + eps)`` and ``v = s · f(q)``, ``f = q / ((1 + q) n)``:
    ``∂L/∂s = f · g + 2 f'(q) (s·g) s`` with ``2 f'(q) = (q + 2 eps - q²) / (n³ (1 + q)²)``,
    finite at ``s = 0`` (where the second term vanishes). Used by the backward pass of
    dynamic routing.
    """
    s32, g = _wide(s), _wide(grad)
    sq = s32.pow(2).sum(dim, keepdim=True)
    n = torch.sqrt(sq + eps)
    slope = (sq + 2 * eps - sq.pow(2)) / (n.pow(3) * (1.0 + sq).pow(2))  # 2 f'(q)
    return _squash_scale(sq, eps) * g + slope * (s32 * g).sum(dim, keepdim=True) * s32


def capsule_lengths(v: Tensor, dim: int = -1) -> Tensor:
    """Length ``|v|`` of each capsule along ``dim``, exact (no ε) with gradient 0 at v = 0."""
    return torch.linalg.vector_norm(_wide(v), dim=dim).to(v.dtype)


def dynamic_routing(
    u_hat: Tensor, iterations: int = 3, detach_agreement: bool = False
) -> tuple[Tensor, Tensor]:
    """Procedure 1: routing by agreement.

    Args:
        u_hat: predictions ``û_{j|i} = W_ij u_i`` of shape (B, I, J, D). Fastest when it is
            a ``transpose(1, 2)`` view of a (B, J, I, D)-contiguous tensor (as
            :class:`~capsnet.nn.layers.RoutingCaps` makes it): every step below is then a
            batched matrix-vector product over contiguous memory.
        iterations: number of routing iterations r (≥ 1).
        detach_agreement: if True, the coupling coefficients of every iteration are
            computed from detached predictions, and the gradient reaches û only through
            the final weighted sum: ``v = squash(Σ_i sg(c_ij) û_{j|i})`` with ``sg`` the
            stop-gradient (the same meaning for every routing; see :data:`ROUTINGS`).
            The official implementation lets gradients flow everywhere (the default).

    Returns:
        ``(v, c)``: parent capsules (B, J, D) and the final coupling coefficients
        (B, I, J), which sum to 1 over the parents J (no gradient flows through c when
        ``detach_agreement``).

    The logits b_ij start at 0 for every example (so the first iteration couples
    uniformly), c_i = softmax(b_i) over the parents (eq. 3), s_j = Σ_i c_ij û_{j|i}
    (eq. 2), v_j = squash(s_j) (eq. 1); b is not updated after the last iteration.
    Accumulations run in float32 even under autocast. When û needs a gradient, the
    backward pass is hand-written (one write of ∂L/∂û; see ``_DynamicRouting``) and the
    result is not twice differentiable: a double backward raises a RuntimeError.
    """
    if iterations < 1:
        raise ValueError(f"routing needs at least 1 iteration, got {iterations}")
    u = _wide(u_hat).transpose(1, 2)  # (B, J, I, D)
    with torch.autocast(u.device.type, enabled=False):
        if torch.is_grad_enabled() and u.requires_grad:
            v, c = _DynamicRouting.apply(u, iterations, detach_agreement)
        else:
            v, c, _ = _route(u, iterations)
    return v.to(u_hat.dtype), c.transpose(1, 2)


def shared_dynamic_routing(
    u: Tensor, weight: Tensor, iterations: int = 3, detach_agreement: bool = False
) -> tuple[Tensor, Tensor]:
    """Procedure 1 for predictions whose matrix is shared by groups of children (Aff-CapsNets,
    Gu & Tresp, CVPR 2020, §5: ``û_{j|i} = W_j u_i``, one W_j for every primary capsule).

    Args:
        u: children (B, G, P, E): G groups of P capsules of E components; every child of
            group g predicts parent j with ``W_gj`` (G = 1: one matrix per parent for all).
        weight: W (G, J, D, E).
        iterations, detach_agreement: as in :func:`dynamic_routing`.

    Returns:
        ``(v, c)``: parents (B, J, D) and couplings (B, G·P, J), children ordered (group,
        member): the same values as :func:`dynamic_routing` of the predictions
        ``û_{j|gp} = W_gj u_gp``, to float rounding.

    W is linear, so the predictions are never formed: ``s_j = Σ_g W_gj (Σ_p c_gpj u_gp)``
    (eq. 2) and the agreement ``û_{j|gp} · v_j = u_gp · (W_gjᵀ v_j)``. One iteration costs
    O(B·G·P·J·E) instead of O(B·G·P·J·E·D). With one iteration the coupling is uniform
    (c = 1/J): no routing, Gu & Tresp's choice. Accumulations run in float32 under
    autocast; the gradient is PyTorch's own.
    """
    if iterations < 1:
        raise ValueError(f"routing needs at least 1 iteration, got {iterations}")
    with torch.autocast(u.device.type, enabled=False):
        u32 = _wide(u)
        w32 = weight.to(u32.dtype)
        ud, wd = (u32.detach(), w32.detach()) if detach_agreement else (u32, w32)
        # (B, G, J, P) routing logits: zeros broadcast from u's shape, so that the batch size
        # stays dynamic in a traced export
        logits = (ud[..., 0] * 0).unsqueeze(2) + ud.new_zeros(1, 1, w32.shape[1], 1)
        for _ in range(iterations - 1):
            v = _shared_parents(ud, wd, torch.softmax(logits, dim=2))  # (B, J, D)
            back = (wd.transpose(-1, -2) @ v.unsqueeze(1).unsqueeze(-1)).squeeze(-1)  # Wᵀv
            logits = logits + back @ ud.transpose(-1, -2)  # (B, G, J, P) += û·v = u·(Wᵀv)
        c = torch.softmax(logits, dim=2)  # eq. 3: over the parents J
        v = _shared_parents(u32, w32, c)
    return v.to(u.dtype), c.transpose(2, 3).flatten(1, 2)  # (B, G·P, J)


def _shared_parents(u: Tensor, w: Tensor, c: Tensor) -> Tensor:
    """v_j = squash(Σ_g W_gj Σ_p c_gjp u_gp): u (B, G, P, E), w (G, J, D, E), c (B, G, J, P)
    → (B, J, D). Matrix products only (ONNX Runtime's Einsum rejects these shapes)."""
    pooled = c @ u  # (B, G, J, E)
    s = (w @ pooled.unsqueeze(-1)).squeeze(-1).sum(1)  # (B, J, D), eq. 2
    return squash(s)  # eq. 1


def _dot_each(u: Tensor, v: Tensor) -> Tensor:
    """``û_{j|i} · v_j`` for every i: u (B, J, I, D), v (B, J, D) → (B, J, I).

    Written ``vᵀ ûᵀ`` (a row vector times a wide matrix): on CPU this runs about 3× as fast
    as the equivalent ``û v`` matrix-vector product.
    """
    return torch.matmul(v.unsqueeze(2), u.transpose(-1, -2)).squeeze(2)


def _route(u: Tensor, iterations: int) -> tuple[Tensor, Tensor, list[tuple[Tensor, Tensor]]]:
    """Procedure 1 on u (B, J, I, D) → v (B, J, D), c (B, J, I) and every iteration's
    (c, s) for the backward pass."""
    b = u.new_zeros(u.shape[:3])  # (B, J, I) routing logits
    steps = []
    for it in range(iterations):
        c = torch.softmax(b, dim=1)  # (B, J, I), eq. 3: softmax over parents
        s = torch.matmul(c.unsqueeze(2), u).squeeze(2)  # (B, J, D), eq. 2
        v = squash(s)  # (B, J, D), eq. 1
        steps.append((c, s))
        if it < iterations - 1:
            b = b + _dot_each(u, v)  # (B, J, I): û·v
    return v, c, steps


class _DynamicRouting(torch.autograd.Function):
    """Procedure 1 with a hand-written backward pass.

    Autograd would add one (B, J, I, D) outer product to ∂L/∂û for every use of û (2r - 1
    of them), each written to memory and summed. Here every use contributes a rank-1 term
    ``a_t ⊗ g_t`` (a_t (B, J, I), g_t (B, J, D)), and ∂L/∂û is one batched product
    ``[a_1 … a_T] @ [g_1 … g_T]``: û is written once and read r + (r - 1) - 1 times.
    With ``detach_agreement`` only the last weighted sum contributes: ``c_r ⊗ ∂L/∂s_r``.
    Not twice differentiable (``once_differentiable``).
    """

    @staticmethod
    def forward(ctx, u: Tensor, iterations: int, detach_agreement: bool):  # type: ignore[override]
        v, c, steps = _route(u, iterations)
        ctx.save_for_backward(u, *[t for step in steps for t in step])
        ctx.detach_agreement = detach_agreement
        return v, c

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_v: Tensor | None, grad_c: Tensor | None):  # type: ignore[override]
        u, *saved = ctx.saved_tensors
        steps = list(zip(saved[0::2], saved[1::2], strict=True))  # (c_t, s_t)
        last = len(steps) - 1
        if ctx.detach_agreement:  # v = squash(Σ_i sg(c_r) û): one rank-1 term
            c, s = steps[last]
            g_v = torch.zeros_like(s) if grad_v is None else grad_v
            g_s = squash_backward(s, g_v)  # (B, J, D)
            return c.unsqueeze(-1) * g_s.unsqueeze(2), None, None  # (B, J, I, D)
        coefs: list[Tensor] = []  # a_t (B, J, I)
        grads: list[Tensor] = []  # g_t (B, J, D): ∂L/∂û_{j|i} = Σ_t a_t[j, i] g_t[j]
        grad_b = None  # ∂L/∂b_{t+1}, (B, J, I)
        for t in range(last, -1, -1):
            c, s = steps[t]
            g_v = grad_v if t == last and grad_v is not None else torch.zeros_like(s)
            if grad_b is not None:  # b_{t+1} = b_t + û·v_t
                g_v = g_v + torch.matmul(grad_b.unsqueeze(2), u).squeeze(2)  # (B, J, D)
                coefs.append(grad_b)
                grads.append(squash(s))  # v_t
            g_s = squash_backward(s, g_v)  # (B, J, D)
            coefs.append(c)  # s_t = Σ_i c_ij û_{j|i}
            grads.append(g_s)
            if t == 0:
                break  # b_0 = 0 is a constant
            g_c = _dot_each(u, g_s)  # (B, J, I)
            if t == last and grad_c is not None:
                g_c = g_c + grad_c
            g_b = c * (g_c - (c * g_c).sum(1, keepdim=True))  # softmax over J
            grad_b = g_b if grad_b is None else grad_b + g_b
        a = torch.stack(coefs, dim=-1)  # (B, J, I, T)
        g = torch.stack(grads, dim=-2)  # (B, J, T, D)
        return torch.matmul(a, g), None, None  # (B, J, I, D)


def native_dynamic_routing(u: Tensor, weight: Tensor, iterations: int) -> tuple[Tensor, Tensor]:
    """Votes ``û_{j|i} = W_ij u_i`` and Procedure 1 by the native kernel of
    :mod:`capsnet.nn.native` (``csrc/dynamic_routing.cpp``), with gradients.

    u (B, I, K) and weight (I, J, D, K) → ``(v, c)``, (B, J, D) and (B, I, J), in weight's
    dtype (float32 or float64; u is converted to it, so under autocast the routing runs in
    float32). The same as :func:`dynamic_routing` of ``einsum("ijdk,bik->bijd", weight, u)``
    to float rounding (the softmax's exponentials are a polynomial, relative error 1e-7).
    Every pass makes the votes again instead of storing them; the backward pass makes them
    again too, keeping only each pass's s (B, J, D) and coupling (B, I, J). Not twice
    differentiable. Callers check :func:`capsnet.nn.native.dynamic_native_applies` first.
    """
    u = u.to(weight.dtype)
    if torch.is_grad_enabled() and (u.requires_grad or weight.requires_grad):
        with torch.autocast(u.device.type, enabled=False):
            return _NativeDynamic.apply(u, weight, iterations)
    v, c = dynamic_kernels().dynamic_forward(u.contiguous(), weight.contiguous(), iterations, EPS)
    return v, c


class _NativeDynamic(torch.autograd.Function):
    """:func:`native_dynamic_routing` under autograd: the forward pass keeps u, W and each
    pass's s and coupling; the backward pass is the kernel's ``dynamic_backward``."""

    @staticmethod
    def forward(ctx, u: Tensor, weight: Tensor, iterations: int):  # type: ignore[override]
        v, c, s_keep, c_keep = dynamic_kernels().dynamic_forward_train(
            u.contiguous(), weight.contiguous(), iterations, EPS
        )
        ctx.save_for_backward(u, weight, s_keep, c_keep)
        ctx.iterations = iterations
        return v, c

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_v: Tensor | None, grad_c: Tensor | None):  # type: ignore[override]
        u, weight, s_keep, c_keep = ctx.saved_tensors
        g_v = torch.zeros(len(u), *weight.shape[1:3], dtype=u.dtype) if grad_v is None else grad_v
        grad_u, grad_w = dynamic_kernels().dynamic_backward(
            u, weight, ctx.iterations, EPS, s_keep, c_keep, g_v, grad_c
        )
        return grad_u, grad_w, None


def efficient_squash(s: Tensor, dim: int = -1, eps: float = EPS) -> Tensor:
    """Efficient-CapsNet's squash (Mazzia et al., 2021, eq. 6): ``v = (1 - 1/e^|s|) s/|s|``.

    Written ``-expm1(-|s|) · s / |s|``, with ``|s| = sqrt(Σ s² + eps)`` in float32: finite
    value and gradient at ``s = 0`` and for any |s| (``e^|s|`` never overflows). ONNX has
    no ``expm1``: under ``torch.onnx.export`` it is written ``1 - exp(-|s|)`` (equal to
    within float32 rounding, ~1e-7).
    """
    s32 = _wide(s)
    norm = torch.sqrt(s32.pow(2).sum(dim, keepdim=True) + eps)
    scale = 1 - torch.exp(-norm) if torch.onnx.is_in_onnx_export() else -torch.expm1(-norm)
    return (s32 * (scale / norm)).to(s.dtype)


def self_attention_routing(
    u_hat: Tensor, coupling_bias: Tensor, detach_agreement: bool = False
) -> tuple[Tensor, Tensor]:
    """Self-attention routing of Efficient-CapsNet (Mazzia et al., 2021, eqs. 3-5).

    For each parent j, the self-attention matrix ``A_j = Û_j Û_jᵀ / √D`` (I × I) of the
    children's predictions; child i's score ``Σ_k A_j[i, k] = û_{j|i} · Σ_k û_{j|k} / √D``
    (computed this way, in O(I·J·D)); ``C = softmax`` of the scores over the parents j;
    ``s_j = Σ_i (c_ij + b_ij) û_{j|i}``; ``v_j`` = :func:`efficient_squash` ``(s_j)``.
    One pass, no iterations.

    ``b`` is a learned bias added to the coupling coefficients *after* the softmax, as in
    the reference implementation (which calls it a log prior; it is not one: it never goes
    through the softmax). So the weights ``c_ij + b_ij`` are any real numbers: c_ij lies in
    (0, 1) and sums to 1 over j, the weights sum to ``1 + Σ_j b_ij`` and may be negative.

    Args:
        u_hat: predictions (B, I, J, D).
        coupling_bias: b (I, J), learned, zeros at the start.
        detach_agreement: if True, c is computed from detached predictions, so the gradient
            reaches û only through the weighted sum s (b still learns).

    Returns:
        ``(v, c + b)``: parents (B, J, D) and the weights (B, I, J) each prediction
        entered s_j with.
    """
    u = _wide(u_hat)
    agree = u.detach() if detach_agreement else u
    total = agree.sum(1, keepdim=True)  # (B, 1, J, D): Σ_k û_{j|k}
    scores = (agree * total).sum(-1) / math.sqrt(u.shape[-1])  # (B, I, J)
    weights = torch.softmax(scores, dim=2) + _wide(coupling_bias)  # (B, I, J)
    s = torch.einsum("bij,bijd->bjd", weights, u)  # (B, J, D)
    return efficient_squash(s).to(u_hat.dtype), weights


# --- routing as a choice ---------------------------------------------------------------


class Routed(NamedTuple):
    """What every routing returns."""

    poses: Tensor  # (B, J, D) parent capsules (vectors, or flattened pose matrices)
    activations: Tensor  # (B, J) in [0, 1]: capsule lengths, or EM's a_j
    weights: Tensor  # (B, I, J) final assignment weights of the children to the parents


class Routing(NamedTuple):
    """A routing algorithm behind the common contract.

    ``route(votes (B, I, J, D), activations (B, I), params, iterations, detach_agreement)
    → Routed``; ``params`` are the learned tensors ``parameters(I, J)`` creates (the layer
    owns them as nn.Parameters). Algorithms ignore what they do not use (dynamic and
    self-attention routing ignore the activations, self-attention the iterations).
    """

    route: Callable[[Tensor, Tensor, Mapping[str, Tensor], int, bool], Routed]
    parameters: Callable[[int, int], dict[str, Tensor]]
    # Optional fast paths, the routing's own, that take the children and their matrices and
    # never form the votes; where one is None (or ``fused`` returns None for the tensors at
    # hand) the layer forms the votes and calls ``route``. A new routing needs none of them.
    # fused(u (B, I, E), W (I, J, D, E), params, iterations, detach) → Routed | None
    fused: Callable[[Tensor, Tensor, Mapping[str, Tensor], int, bool], Routed | None] | None = None
    # shared(u (B, G, P, E), W (G, J, D, E), params, iterations, detach) → Routed: one matrix
    # per group of P children (Aff-CapsNets)
    shared: Callable[[Tensor, Tensor, Mapping[str, Tensor], int, bool], Routed] | None = None
    # patches(M (N, I, 4, 4), W (I, J, 4, 4), a (N, I), params, *, iterations, detach) → poses
    # (N, J, 16), activations (N, J): matrix capsules' votes V = M W, patch by patch
    patches: Callable[..., tuple[Tensor, Tensor]] | None = None


def _dynamic(votes: Tensor, activations: Tensor, params, iterations, detach) -> Routed:
    v, c = dynamic_routing(votes, iterations, detach)
    return Routed(v, capsule_lengths(v), c)


def _dynamic_fused(u: Tensor, weight: Tensor, params, iterations, detach) -> Routed | None:
    """The native kernel, which makes the votes W_ij u_i as it routes, where it applies."""
    if detach or not dynamic_native_applies(u, weight):
        return None
    v, c = native_dynamic_routing(u, weight, iterations)
    return Routed(v, capsule_lengths(v), c)


def _dynamic_shared(u: Tensor, weight: Tensor, params, iterations, detach) -> Routed:
    v, c = shared_dynamic_routing(u, weight, iterations, detach)
    return Routed(v, capsule_lengths(v), c)


def _em(votes: Tensor, activations: Tensor, params, iterations, detach) -> Routed:
    return Routed(
        *em_routing(
            votes,
            activations,
            params["beta_u"],
            params["beta_a"],
            iterations=iterations,
            detach_agreement=detach,
        )
    )


def _em_patches(patches, weight, activations, params, *, iterations, detach):
    return conv_em_routing(
        patches,
        weight,
        activations,
        params["beta_u"],
        params["beta_a"],
        iterations=iterations,
        detach_agreement=detach,
    )


def _self_attention(votes: Tensor, activations: Tensor, params, iterations, detach) -> Routed:
    v, weights = self_attention_routing(votes, params["coupling_bias"], detach)
    return Routed(v, capsule_lengths(v), weights)


ROUTINGS: dict[str, Routing] = {
    "dynamic": Routing(_dynamic, lambda i, j: {}, fused=_dynamic_fused, shared=_dynamic_shared),
    "em": Routing(
        _em,
        lambda i, j: {"beta_u": torch.zeros(j), "beta_a": torch.zeros(j)},
        patches=_em_patches,
    ),
    "self-attention": Routing(_self_attention, lambda i, j: {"coupling_bias": torch.zeros(i, j)}),
}


def get_routing(name: str) -> Routing:
    """The routing registered as ``name``; ConfigError for an unknown name."""
    if name not in ROUTINGS:
        raise ConfigError(f"unknown routing '{name}'; choose from: {', '.join(ROUTINGS)}")
    return ROUTINGS[name]


@dataclass(frozen=True)
class RoutingSpec:
    """Which routing a capsule layer runs, and how: one value passed as one object.

    ``detach_agreement`` means the same for every routing: the routing weights of every
    iteration (coupling coefficients, EM responsibilities, attention weights) are computed
    from detached votes, and the gradient reaches the votes only through the final
    weighted combination of the (non-detached) votes with those weights.
    """

    name: str = "dynamic"  # a key of ROUTINGS
    iterations: int = 3  # ignored by self-attention routing
    detach_agreement: bool = False

    def __post_init__(self) -> None:
        get_routing(self.name)
        if self.iterations < 1:
            raise ConfigError(f"routing_iterations must be ≥ 1, got {self.iterations}")
