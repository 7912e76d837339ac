"""Dynamic routing (Sabour, Frosst & Hinton, 2017, Procedure 1) and its squash non-linearity:
the pure maths, its hand-written backward pass and the native kernel's path.

Shapes use B = batch, I = input (child) capsules, J = output (parent) capsules,
D = pose dimension; equations are numbered as in "Dynamic Routing Between Capsules".
:mod:`capsnet.nn.routing` offers these through its registry (``ROUTINGS["dynamic"]``).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from capsnet.nn.em import _wide
from capsnet.nn.native import dynamic_kernels

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

    Written ``vᵀ ûᵀ`` (a row vector times a wide matrix), which the CPUs measured here ran
    faster than the equivalent ``û v`` matrix-vector product.
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
