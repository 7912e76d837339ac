"""Thin capsule layers; the maths lives in :mod:`capsnet.nn.routing`, the convolution
(:class:`Conv2d`, importable from here) in :mod:`capsnet.nn.conv`."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from capsnet import _deprecated
from capsnet.nn.conv import Conv2d
from capsnet.nn.routing import (
    Routed,
    RoutingSpec,
    capsule_lengths,
    get_routing,
    squash,
)
from capsnet.runtime import tracing

DYNAMIC, EM = RoutingSpec("dynamic"), RoutingSpec("em")  # the layers' default routings
LEVELS = (0.2, 0.75)  # input_norm="levels": (black, white), fractions of the image's peak
AUTOLEVELS_INK = 0.15  # input_norm="autolevels": black ≤ the k-th brightest pixel, k this share
BLOCK_BYTES = 8 << 20  # votes per block of RoutingCaps' inference (fits this CPU's caches)


def normalise_input(x: Tensor, mode: str) -> Tensor:
    """Images (B, C, H, W) as a model sees them: ``"none"`` as given; ``"peak"`` each image
    divided by its largest value, so its brightest pixel is 1 whatever the contrast (a
    blank or all-negative image is left as it is); ``"levels"`` the peak-divided image with
    the range ``LEVELS`` = (black, white) stretched to [0, 1] and clipped, an image editor's
    Levels: values at most ``black`` become 0, at least ``white`` 1, linear between. Blur
    spreads a stroke into a wider, fainter profile; the clip keeps its core and drops its
    faint rim, so a blurred stroke looks crisp again. ``"autolevels"``: the same with each
    image's black point lowered, where needed, to the value of its k-th brightest pixel
    (k = ``AUTOLEVELS_INK`` of its C·H·W values, rounded up) and the white point lowered
    with it, the window's width kept: an image with little ink, such as thin eroded
    strokes, keeps its faint pixels and has them brightened instead of dropped."""
    if mode == "none":
        return x
    peak = x.amax(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    x = x / torch.where(peak > 0, peak, torch.ones_like(peak))
    if mode == "peak":
        return x
    black, white = LEVELS
    if mode == "autolevels":
        flat = x.flatten(1)  # (B, C·H·W)
        k = math.ceil(AUTOLEVELS_INK * flat.shape[1])
        kth = flat.topk(k, dim=1).values[:, -1]  # (B,) the k-th brightest (ONNX has TopK)
        lowered = kth.clamp(max=black).view(-1, 1, 1, 1)  # (B, 1, 1, 1): each image's black
        return ((x - lowered) / (white - black)).clamp(0, 1)
    return ((x - black) / (white - black)).clamp(0, 1)


def binomial_blur(x: Tensor, size: int) -> Tensor:
    """Low-pass each channel of x (B, C, H, W) with the ``size`` × ``size`` binomial filter
    (the outer product of row ``size − 1`` of Pascal's triangle, normalised to sum 1; size
    3: [1, 2, 1] ⊗ [1, 2, 1] / 16), reflect-padded to keep (H, W). Before a strided
    convolution it anti-aliases the subsampling (Zhang, "Making Convolutional Networks
    Shift-Invariant Again", ICML 2019: convolution and blur commute, so this is their
    blur-then-subsample). ``size`` 1 returns x itself."""
    if size == 1:
        return x
    row = torch.tensor([math.comb(size - 1, k) for k in range(size)], dtype=x.dtype)
    kernel = torch.outer(row, row) / row.sum() ** 2  # (size, size), sums to 1
    c, pad = x.shape[1], size // 2
    weight = kernel.to(x.device).expand(c, 1, size, size)  # (C, 1, size, size): per channel
    return F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="reflect"), weight, groups=c)


class PrimaryCaps(nn.Module):
    """Convolutional capsules: one conv with ``types · dim`` channels, squashed per capsule.

    Channels ``[t·dim, (t+1)·dim)`` form capsule type ``t``; a capsule is those ``dim``
    channels at one spatial position. Input (B, C, H, W) → output (B, types·H'·W', dim),
    capsules ordered (type, row, column). ``groups`` = channels makes the convolution
    depthwise (Efficient-CapsNet); ``squash_fn`` is the capsule non-linearity; ``dft``
    lets the convolution go through the DFT where that is cheaper (:class:`Conv2d`).
    """

    @_deprecated.keyword_only(6)
    def __init__(
        self,
        in_channels: int,
        types: int,
        dim: int,
        kernel_size: int,
        stride: int,
        *,
        groups: int = 1,
        squash_fn: Callable[[Tensor], Tensor] = squash,
        dft: bool = True,
    ):
        super().__init__()
        self.types, self.dim, self.squash = types, dim, squash_fn
        self.conv = Conv2d(in_channels, types * dim, kernel_size, stride, groups=groups, dft=dft)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)  # (B, types·dim, H', W')
        b, _, h, w = y.shape
        y = y.view(b, self.types, self.dim, h, w)  # channel → (type, component)
        y = y.permute(0, 1, 3, 4, 2).reshape(b, self.types * h * w, self.dim)  # (B, I, dim)
        return self.squash(y)


class Router(nn.Module):
    """The routing ``spec`` names (:data:`capsnet.nn.routing.ROUTINGS`) and the learned tensors
    it needs for ``in_caps`` children and ``out_caps`` parents (none for ``dynamic``)."""

    def __init__(self, in_caps: int, out_caps: int, spec: RoutingSpec = DYNAMIC) -> None:
        super().__init__()
        self.name, self.routing = spec.name, get_routing(spec.name)
        self.iterations, self.detach_agreement = spec.iterations, spec.detach_agreement
        self.params = nn.ParameterDict(self.routing.parameters(in_caps, out_caps))

    def forward(self, votes: Tensor, activations: Tensor) -> Routed:
        """votes (B, I, J, D), activations (B, I) → Routed (B, J, D), (B, J), (B, I, J)."""
        return self.routing.route(
            votes, activations, self.params, self.iterations, self.detach_agreement
        )


class RoutingCaps(nn.Module):
    """Fully connected capsule layer: predictions ``û_{j|i} = W_ij u_i``, then routing.

    Input (B, I, in_dim) → :class:`~capsnet.nn.routing.Routed`: parents (B, J, out_dim), their
    activations (B, J) and the assignment weights (B, I, J), by the :class:`Router` of
    ``spec`` (``dynamic``, as in the paper, has no learned tensors besides W). The
    children's activations are their lengths.

    On the CPU, dynamic routing (without ``detach_agreement``) with a float32/64 weight runs
    the native kernel of :mod:`capsnet.nn.native` (``csrc/dynamic_routing.cpp``) where it
    builds, with or without gradients (:func:`~capsnet.nn.routing.native_dynamic_routing`): it
    makes the votes again in each pass, a few children at a time, instead of writing them to
    memory, and computes them in the weight's dtype even under autocast. Otherwise, without
    gradients, the batch is routed in blocks of about :data:`BLOCK_BYTES` of votes, which
    stay in cache through the iterations: 2.6× as fast for the paper's DigitCaps at batch
    100 (10 examples a block; 138 → 52 ms on one thread, benchmarks/dft-notes-2026-11-26.log).
    Every routing treats examples independently, so the result is the same to float rounding.
    """

    def __init__(
        self,
        in_caps: int,
        in_dim: int,
        out_caps: int,
        out_dim: int,
        spec: RoutingSpec = DYNAMIC,
    ):
        super().__init__()
        self.weight = nn.Parameter(0.01 * torch.randn(in_caps, out_caps, out_dim, in_dim))
        self.router = Router(in_caps, out_caps, spec)

    def forward(self, u: Tensor) -> Routed:
        r = self.router
        fused = r.routing.fused  # the routing's own path that makes the votes as it routes
        out = fused and fused(u, self.weight, r.params, r.iterations, r.detach_agreement)
        if out is not None:
            return out
        if torch.is_grad_enabled() or u.device.type != "cpu" or tracing():
            return self._route(u)
        per_example = self.weight[..., 0].numel() * u.element_size()  # bytes of votes
        blocks = [self._route(block) for block in u.split(max(1, BLOCK_BYTES // per_example))]
        return Routed(*(torch.cat(parts) for parts in zip(*blocks, strict=True)))

    def _route(self, u: Tensor) -> Routed:
        u_hat = torch.einsum("ijdk,bik->bjid", self.weight, u).contiguous()  # (B, J, I, D)
        # Routing takes (B, I, J, D); this view keeps the (B, J, I, D) memory layout that
        # dynamic routing runs fastest on (see dynamic_routing).
        return self.router(u_hat.transpose(1, 2), capsule_lengths(u))


class SharedRoutingCaps(nn.Module):
    """Fully connected capsule layer whose prediction matrices are shared by groups of
    children (Aff-CapsNets, Gu & Tresp 2020): ``û_{j|i} = W_gj u_i`` for the ``groups`` equal
    groups of consecutive children (1 group: one W_j for every child), then routing.

    Input (B, I, in_dim), I a multiple of ``groups`` → :class:`~capsnet.nn.routing.Routed`, as
    :class:`RoutingCaps`. A routing with a ``shared`` fast path (dynamic) never forms the
    predictions; any other routing gets them as votes (B, I, J, out_dim).
    """

    @_deprecated.keyword_only(5)
    def __init__(
        self,
        in_caps: int,
        in_dim: int,
        out_caps: int,
        out_dim: int,
        *,
        groups: int = 1,
        spec: RoutingSpec = DYNAMIC,
    ):
        super().__init__()
        if in_caps % groups:
            raise ValueError(f"{in_caps} children do not split into {groups} equal groups")
        self.groups = groups
        self.weight = nn.Parameter(0.01 * torch.randn(groups, out_caps, out_dim, in_dim))
        self.router = Router(in_caps, out_caps, spec)

    def forward(self, u: Tensor) -> Routed:
        r, grouped = self.router, u.unflatten(1, (self.groups, -1))  # (B, G, P, in_dim)
        if r.routing.shared is not None:
            return r.routing.shared(
                grouped, self.weight, r.params, r.iterations, r.detach_agreement
            )
        columns = grouped.transpose(2, 3).unsqueeze(2)  # (B, G, 1, E, P)
        votes = (self.weight @ columns).permute(0, 1, 4, 2, 3)  # (B, G, P, J, D)
        return r(votes.flatten(1, 2), capsule_lengths(u))  # votes (B, I, J, D)


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


# --- matrix capsules (Hinton, Sabour & Frosst, 2018) ------------------------------------
# A layer of matrix capsules is a pair: poses (B, H, W, T, 16), each a flattened 4×4 pose
# matrix M, and activations (B, H, W, T) in [0, 1], for T capsule types on an H×W grid.

POSE = 4  # poses are POSE × POSE matrices


def _pose_weight(*shape: int) -> nn.Parameter:
    """Transformation matrices (…, 4, 4), near the identity so early votes keep the pose."""
    eye = torch.eye(POSE).expand(*shape, POSE, POSE)
    return nn.Parameter(eye + 0.1 * torch.randn(*shape, POSE, POSE))


class PrimaryMatrixCaps(nn.Module):
    """A 1×1 convolution to ``types`` capsules per position: a 4×4 pose and a logistic
    activation each. Input (B, C, H, W) → poses (B, H, W, T, 16), activations (B, H, W, T)."""

    def __init__(self, in_channels: int, types: int):
        super().__init__()
        self.types = types
        self.pose = nn.Conv2d(in_channels, types * POSE * POSE, 1)
        self.activation = nn.Conv2d(in_channels, types, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b, _, h, w = x.shape
        poses = self.pose(x).permute(0, 2, 3, 1).reshape(b, h, w, self.types, POSE * POSE)
        return poses, torch.sigmoid(self.activation(x)).permute(0, 2, 3, 1)  # (B, H, W, T)


def unfold_patches(x: Tensor, k: int, s: int) -> Tensor:
    """K×K patches at stride s over dims 1, 2: ``x.unfold(1, k, s).unfold(2, k, s)``,
    (B, H, W, …) → (B, H', W', …, K, K). ONNX cannot export ``unfold`` on a tensor with a
    dynamic batch axis, so under ``torch.onnx.export`` the patches are gathered by index
    (the same values)."""
    if not torch.onnx.is_in_onnx_export():
        return x.unfold(1, k, s).unfold(2, k, s)
    h, w = ((n - k) // s + 1 for n in x.shape[1:3])
    rows = (torch.arange(h) * s).unsqueeze(1) + torch.arange(k)  # (H', K)
    cols = (torch.arange(w) * s).unsqueeze(1) + torch.arange(k)  # (W', K)
    y = x.index_select(1, rows.flatten()).unflatten(1, (h, k))  # (B, H', K, W, …)
    y = y.index_select(3, cols.flatten()).unflatten(3, (w, k))  # (B, H', K, W', K, …)
    rest = range(5, y.dim())
    return y.permute(0, 1, 3, *rest, 2, 4)  # (B, H', W', …, K, K)


class ConvMatrixCaps(nn.Module):
    """Convolutional capsules: every K×K×T_in patch of children votes ``V_ij = M_i W_ij``
    for the T_out parents at its position, routed per patch.

    Input poses (B, H, W, T_in, 16), activations (B, H, W, T_in) → poses
    (B, H', W', T_out, 16), activations (B, H', W', T_out), H' = (H - K) // stride + 1.
    Simplification (as in most public implementations): a child that lies in several
    overlapping patches is routed in each patch separately, so its assignments sum to 1
    over the T_out parents of each patch rather than over all parents it reaches.
    """

    def __init__(
        self,
        in_types: int,
        out_types: int,
        kernel_size: int,
        stride: int,
        spec: RoutingSpec = EM,
    ):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride
        children = kernel_size * kernel_size * in_types
        self.weight = _pose_weight(children, out_types)  # (K·K·T_in, T_out, 4, 4)
        self.router = Router(children, out_types, spec)

    def forward(self, poses: Tensor, activations: Tensor) -> tuple[Tensor, Tensor]:
        k, s = self.kernel_size, self.stride
        b = poses.shape[0]
        patches = unfold_patches(poses, k, s)  # (B, H', W', T, 16, K, K)
        _, h, w, t, _, _, _ = patches.shape
        patches = patches.permute(0, 1, 2, 5, 6, 3, 4).reshape(b * h * w, k * k * t, POSE, POSE)
        acts = unfold_patches(activations, k, s)  # (B, H', W', T, K, K)
        acts = acts.permute(0, 1, 2, 4, 5, 3).reshape(b * h * w, k * k * t)  # (N, I)
        r = self.router
        if r.routing.patches is not None:  # the routing's own: no votes stored
            mu, a = r.routing.patches(
                patches,
                self.weight,
                acts,
                r.params,
                iterations=r.iterations,
                detach=r.detach_agreement,
            )
        else:
            votes = torch.einsum("nipq,ijqr->njipr", patches, self.weight)  # (N, J, I, 4, 4)
            mu, a, _ = r(votes.flatten(-2).transpose(1, 2), acts)  # votes (N, I, J, 16)
        return mu.view(b, h, w, -1, POSE * POSE), a.view(b, h, w, -1)


class ClassMatrixCaps(nn.Module):
    """Class capsules: every child votes for every class with a matrix shared by its type
    across positions, plus coordinate addition (the scaled (row, column) of the child's
    position, in [0, 1], added to the first two entries of the vote's last column).

    Input poses (B, H, W, T, 16), activations (B, H, W, T) → Routed: class poses
    (B, E, 16), activations (B, E), assignments (B, I, E) with the I = T·H·W children
    ordered (type, row, column).
    """

    def __init__(
        self,
        in_types: int,
        classes: int,
        spec: RoutingSpec = EM,
        grid: tuple[int, int] = (1, 1),
    ):
        super().__init__()
        self.weight = _pose_weight(in_types, classes)  # (T, E, 4, 4)
        h, w = grid
        self.router = Router(in_types * h * w, classes, spec)

    def forward(self, poses: Tensor, activations: Tensor) -> Routed:
        b, h, w, t, _ = poses.shape
        m = poses.permute(0, 3, 1, 2, 4).reshape(b, t, h, w, POSE, POSE)  # (type, row, col)
        votes = torch.einsum("bthwpq,teqr->bethwpr", m, self.weight)  # (B, E, T, H, W, 4, 4)
        rows = (torch.arange(h, device=m.device, dtype=votes.dtype) + 0.5) / h
        cols = (torch.arange(w, device=m.device, dtype=votes.dtype) + 0.5) / w
        coords = torch.zeros(h, w, POSE, POSE, device=m.device, dtype=votes.dtype)
        coords[:, :, 0, POSE - 1] = rows.view(h, 1)
        coords[:, :, 1, POSE - 1] = cols.view(1, w)
        votes = votes + coords.view(1, 1, 1, h, w, POSE, POSE)
        acts = activations.permute(0, 3, 1, 2).reshape(b, t * h * w)  # (B, I)
        votes = votes.reshape(b, -1, t * h * w, POSE * POSE).transpose(1, 2)  # (B, I, E, 16)
        return self.router(votes, acts)
