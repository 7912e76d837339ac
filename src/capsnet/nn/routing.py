"""Pure capsule maths: three routing algorithms, their registry, and the squash
non-linearities. Dynamic routing and its squash live in :mod:`capsnet.nn.dynamic`, EM
routing in :mod:`capsnet.nn.em` (both importable from here too); self-attention routing and
Efficient-CapsNet's squash here.

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

from capsnet.errors import ConfigError
from capsnet.nn.dynamic import (  # dynamic routing's maths live there
    EPS,
    capsule_lengths,
    dynamic_routing,
    native_dynamic_routing,
    shared_dynamic_routing,
    squash,
    squash_backward,
)
from capsnet.nn.em import _wide
from capsnet.nn.em import em_routing as em_routing  # EM maths live there
from capsnet.nn.em_conv import conv_em_routing
from capsnet.nn.native import dynamic_native_applies


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


__all__ = [
    "EPS",
    "ROUTINGS",
    "Routed",
    "Routing",
    "RoutingSpec",
    "capsule_lengths",
    "dynamic_routing",
    "efficient_squash",
    "em_routing",
    "get_routing",
    "native_dynamic_routing",
    "self_attention_routing",
    "shared_dynamic_routing",
    "squash",
    "squash_backward",
]
