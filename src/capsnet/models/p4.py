"""Efficient-CapsNet made equivariant to quarter turns (p4): ``efficient-capsnet-p4``.

Every layer of the stem is a p4 group convolution (:mod:`capsnet.nn.group`; Cohen &
Welling, ICML 2016), so a digit turned 90° gives the same feature maps turned 90°, each
channel's content moved to the next of its 4 orientations. The depthwise primary capsules
filter each orientation with their filter turned to match: a capsule is one type at one
orientation (and position), its 8 numbers unchanged by the turn. The class capsules
(:class:`~capsnet.nn.group.FramedCaps`) route the primary capsules in each of ``frames``
(quarter turns of the children) with the same matrices W_ij and self-attention routing, and
each class keeps its longest frame: where frames are all four turns, the class activations
do not change when the image turns 90°. The default (0, 1, 3) leaves out 180°, a prior that
digits are never upside down, which a 6 and a 9 need.

This is the capsule idea "a part's pose moves with the object" built into the weights
rather than learned from examples: rotation-equivariant capsules in the spirit of Lenssen,
Fey & Libuschewski ("Group Equivariant Capsule Networks", NeurIPS 2018), here on the
Efficient-CapsNet of :mod:`capsnet.models.efficient`. The stem's widths count channels per
orientation: (8, 16, 16, 32) costs about what the paper's (32, 64, 64, 128) costs, with a
quarter of its stem parameters. The decoder redraws the input from the chosen frame's pose
as it is, unturned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor, nn

from capsnet.errors import ConfigError
from capsnet.models.config import conv_out
from capsnet.models.efficient import EfficientCapsNet, EfficientCapsNetConfig
from capsnet.models.registry import register_model
from capsnet.nn.group import (
    TURNS,
    FramedCaps,
    P4BatchNorm,
    P4Conv2d,
    symmetric_grid,
)
from capsnet.nn.layers import RoutingCaps, normalise_input
from capsnet.nn.routing import efficient_squash
from capsnet.targets import OverlayTargets


@dataclass(frozen=True)
class P4CapsNetConfig(EfficientCapsNetConfig):
    """An Efficient-CapsNet config whose widths count channels per orientation, plus
    ``frames``: the quarter turns (0-3) in which the class capsules look for a class."""

    stem_channels: tuple[int, ...] = (8, 16, 16, 32)
    stem_kernels: tuple[int, ...] = (5, 3, 3, 4)  # 4: a symmetric stride-2 grid on 20 px
    frames: tuple[int, ...] = field(default=(0, 1, 3), metadata={"min": 0})
    # the loss reads a true class in the upright frame 0 (its negatives in every frame), so
    # that frame 0 is every class's upright; False: in its longest frame, as it predicts
    anchored: bool = True

    def validate(self) -> None:
        super().validate()
        if not self.frames or len(set(self.frames)) != len(self.frames):
            raise ConfigError(f"frames must be distinct quarter turns, got {self.frames}")
        if max(self.frames) >= TURNS:
            raise ConfigError(f"frames are quarter turns 0-3, got {self.frames}")
        if self.anchored and 0 not in self.frames:
            raise ConfigError(f"anchored needs the upright frame 0 in frames, got {self.frames}")
        h, w = self.input_size
        if h != w:
            raise ConfigError(f"a p4 network needs square inputs, got {h}×{w}")
        for k, s in zip(self.stem_kernels, self.stem_strides, strict=True):
            if not symmetric_grid(h, k, s):
                raise ConfigError(
                    f"a {k}×{k} stride-{s} layer on {h} px samples a grid a quarter turn does "
                    f"not keep ({h} − {k} is not a multiple of {s}): change stem_kernels"
                )
            h = conv_out(h, k, s)

    @property
    def coupling_grid(self) -> tuple[int, int, int]:
        """(types · 4 orientations, H', W') of the primary capsules."""
        return (self.primary_types * TURNS, *self.primary_grid)

    @property
    def num_primary_caps(self) -> int:
        return super().num_primary_caps * TURNS


class P4PrimaryCaps(nn.Module):
    """Depthwise primary capsules of a p4 map (B, C·4, H, W) (a depthwise
    :class:`~capsnet.nn.group.P4Conv2d`); capsule type t is channels [t·dim, (t+1)·dim) at
    one orientation and position. Output (B, types·4·H'·W', dim), ordered (type,
    orientation, row, column), squashed by :func:`~capsnet.nn.routing.efficient_squash`."""

    def __init__(self, channels: int, dim: int, kernel_size: int):
        super().__init__()
        self.dim = dim
        self.conv = P4Conv2d(channels, channels, kernel_size, depthwise=True)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        b, _, h, w = y.shape  # (B, C·4, H', W')
        y = y.view(b, -1, self.dim, TURNS, h, w)  # channel → (type, component, orientation)
        y = y.permute(0, 1, 3, 4, 5, 2).reshape(b, -1, self.dim)  # (B, types·4·H'·W', dim)
        return efficient_squash(y)


class P4Output(NamedTuple):
    """A :class:`~capsnet.models.capsnet.CapsNetOutput` and the class activations in each
    frame (meets ``contract.CapsuleOutput``)."""

    scores: Tensor  # (B, K) each class's activation in its longest frame
    poses: Tensor  # (B, K, D) each class capsule in its longest frame
    reconstructions: Tensor | None  # (B, C, H, W)
    coupling: Tensor  # (B, I, K) in the children's own order
    frame_scores: Tensor  # (B, F, K) the activations in each of ``frames``


class P4CapsNet(EfficientCapsNet):
    """p4 stem → p4 depthwise PrimaryCaps → class capsules in ``frames`` → decoder.

    Without an anchor the frames are interchangeable: each class may come to be read
    upright in any of them (one seed, part-trained: frame 0 alone read 63.4% of the upright
    test digits right, the longest frame 99.2%), so leaving out "180°" leaves out a
    different turn for each class.
    ``anchored`` (the default) trains a true class in frame 0 alone: margin loss on its
    upright activation, on every other class's longest."""

    config: P4CapsNetConfig

    def __init__(self, config: P4CapsNetConfig | None = None):
        super().__init__(config or P4CapsNetConfig())

    def _stem_layer(self, c_in: int, c_out: int, k: int, s: int, first: bool) -> list[nn.Module]:
        """A p4 convolution (lifting the image if ``first``), ReLU, p4 batch norm."""
        return [
            P4Conv2d(c_in, c_out, k, s, lifting=first),
            nn.ReLU(inplace=True),
            P4BatchNorm(c_out),
        ]

    def _build_primary(self, cfg: P4CapsNetConfig) -> nn.Module:  # type: ignore[override]
        return P4PrimaryCaps(cfg.stem_channels[-1], cfg.primary_dim, cfg.primary_kernel)

    def _build_classes(self, cfg: P4CapsNetConfig) -> nn.Module:  # type: ignore[override]
        caps = RoutingCaps(
            cfg.num_primary_caps, cfg.primary_dim, cfg.num_classes, cfg.class_dim, cfg.routing_spec
        )
        return FramedCaps(caps, (cfg.primary_types, *cfg.primary_grid), cfg.frames)

    def forward(self, x: Tensor, y: Tensor | OverlayTargets | None = None) -> P4Output:
        """As :meth:`CapsNet.forward <capsnet.models.capsnet.CapsNet.forward>`, with the
        activations in every frame."""
        x = normalise_input(x, self.config.input_norm)
        routed, frame_scores = self.classes.route(self.encode(x))
        return P4Output(*self._output(routed, y), frame_scores)

    def loss(
        self, out: P4Output, x: Tensor, y: Tensor | OverlayTargets
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """CapsNet's loss; ``anchored``: with each true class's upright activation (frame 0)
        in place of its longest."""
        if self.config.anchored:
            upright = out.frame_scores[:, self.config.frames.index(0)]  # (B, K)
            true = self._mask(out.scores, y).bool()  # (B, K): the classes y names
            out = out._replace(scores=torch.where(true, upright, out.scores))
        return super().loss(out, x, y)  # type: ignore[arg-type]


# 16 primary capsules (4 types × 4 orientations) like efficient-capsnet's; 70,272 parameters
# + 1,411,344 in the decoder.
register_model("efficient-capsnet-p4", P4CapsNet, P4CapsNetConfig())


__all__ = ["P4CapsNet", "P4CapsNetConfig", "P4Output"]
