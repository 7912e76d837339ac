"""Matrix capsules with EM routing (Hinton, Sabour & Frosst, ICLR 2018), the smallNORB
network with configurable sizes A, B, C, D:

ReLU Conv1 (5×5, stride 2, A channels) → PrimaryCaps (1×1, B types of 4×4 pose +
activation) → ConvCaps1 (K=3, stride 2, C types) → ConvCaps2 (K=3, stride 1, D types) →
class capsules (shared per type, coordinate addition), trained with the spread loss.

The paper's A = B = C = D = 32 network on 32×32 inputs with 5 classes has 310K
parameters by its count; ours (``em-capsnet``) has 316,394: 832 (conv1) + 17,952
(primary) + 2 × 147,520 (ConvCaps, incl. β_u, β_a per type) + 2,570 (class capsules).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from capsnet.errors import ConfigError
from capsnet.models.capsnet import CapsNetOutput, CapsuleModel
from capsnet.models.config import CapsuleConfig
from capsnet.models.config import conv_out as _conv_out
from capsnet.models.registry import register_model
from capsnet.nn.layers import (
    ClassMatrixCaps,
    Conv2d,
    ConvMatrixCaps,
    PrimaryMatrixCaps,
    normalise_input,
)
from capsnet.nn.losses import spread_loss
from capsnet.targets import OverlayTargets


@dataclass(frozen=True)
class EMCapsNetConfig(CapsuleConfig):
    """Hyper-parameters of a matrix capsule network. The defaults are a CPU-sized one."""

    routing: str = "em"
    conv1_channels: int = 32  # A
    conv1_kernel: int = 5
    conv1_stride: int = 2
    primary_types: int = 8  # B
    caps1_types: int = 8  # C
    caps2_types: int = 8  # D
    caps1_kernel: int = 3
    caps1_stride: int = 2
    caps2_kernel: int = 3
    caps2_stride: int = 1
    margin_start: float = 0.2  # spread-loss margin, raised linearly …
    margin_end: float = 0.9
    margin_steps: int = 5000  # … over this many training steps (forward calls in train mode)

    def validate(self) -> None:
        super().validate()
        if self.margin_steps < 1:
            raise ConfigError("routing_iterations and margin_steps must be ≥ 1")
        if min(self.caps2_grid) < 1:
            raise ConfigError(f"input size {self.input_size} is too small for the capsule layers")

    def _grids(self) -> list[tuple[int, ...]]:
        conv = tuple(_conv_out(s, self.conv1_kernel, self.conv1_stride) for s in self.input_size)
        caps1 = tuple(_conv_out(s, self.caps1_kernel, self.caps1_stride) for s in conv)
        return [
            conv,
            caps1,
            tuple(_conv_out(s, self.caps2_kernel, self.caps2_stride) for s in caps1),
        ]

    @property
    def caps2_grid(self) -> tuple[int, int]:
        """Spatial size of ConvCaps2, the children of the class capsules."""
        return self._grids()[2]

    @property
    def coupling_grid(self) -> tuple[int, int, int]:
        """(types, H, W) of the children of the class capsules (ConvCaps2): ``coupling``
        (B, I, K) views as (B, types, H, W, K)."""
        return (self.caps2_types, *self.caps2_grid)

    @property
    def class_dim(self) -> int:
        return 16


class EMCapsNet(CapsuleModel):
    """Conv1 → PrimaryMatrixCaps → ConvMatrixCaps ×2 → ClassMatrixCaps.

    ``forward`` returns a :class:`~capsnet.models.capsnet.CapsNetOutput`: class activations
    ``scores`` (B, K), class poses (B, K, 16), no reconstructions, and the class layer's
    assignments ``coupling`` (B, I, K), I = D · H · W children ordered (type, row, column).
    Every forward call in train mode advances the buffer ``step`` that drives the margin
    schedule of the spread loss, so the trainer needs to know nothing about it (and the
    schedule resumes with the checkpoint).
    """

    def __init__(self, config: EMCapsNetConfig | None = None):
        super().__init__()
        self.config = cfg = config or EMCapsNetConfig()
        route = cfg.routing_spec
        self.conv1 = Conv2d(cfg.in_channels, cfg.conv1_channels, cfg.conv1_kernel, cfg.conv1_stride)
        self.primary = PrimaryMatrixCaps(cfg.conv1_channels, cfg.primary_types)
        self.caps1 = ConvMatrixCaps(
            cfg.primary_types, cfg.caps1_types, cfg.caps1_kernel, cfg.caps1_stride, route
        )
        self.caps2 = ConvMatrixCaps(
            cfg.caps1_types, cfg.caps2_types, cfg.caps2_kernel, cfg.caps2_stride, route
        )
        self.classes = ClassMatrixCaps(cfg.caps2_types, cfg.num_classes, route, cfg.caps2_grid)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def forward(self, x: Tensor, y: Any = None) -> CapsNetOutput:
        """x: images (B, C, H, W) in [0, 1] (normalised as ``input_norm`` says); ``y`` is
        ignored (the trainer passes it)."""
        x = normalise_input(x, self.config.input_norm)
        if self.training:
            self.step += 1
        poses, acts = self.primary(F.relu(self.conv1(x)))  # (B, H, W, B_, 16), (B, H, W, B_)
        poses, acts = self.caps1(poses, acts)  # (B, H', W', C, 16), (B, H', W', C)
        poses, acts = self.caps2(poses, acts)  # (B, H'', W'', D, 16), (B, H'', W'', D)
        out = self.classes(poses, acts)  # (B, K, 16), (B, K), (B, I, K)
        return CapsNetOutput(out.activations, out.poses, None, out.weights)

    def margin(self) -> Tensor:
        """The spread-loss margin at the current ``step``: linear from start to end."""
        cfg = self.config
        progress = (self.step.float() / cfg.margin_steps).clamp(max=1.0)
        return cfg.margin_start + (cfg.margin_end - cfg.margin_start) * progress

    def loss(
        self, out: CapsNetOutput, x: Tensor, y: Tensor | OverlayTargets
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Spread loss with the scheduled margin (one label per image)."""
        if isinstance(y, OverlayTargets):
            raise ConfigError("em-capsnet trains on one label per image, not on MultiMNIST")
        margin = self.margin()
        loss = spread_loss(out.scores, y, margin)
        return loss, {"spread": loss.detach(), "margin": margin.detach()}


PAPER_EM = EMCapsNetConfig(
    input_size=(32, 32),
    num_classes=5,
    conv1_channels=32,
    primary_types=32,
    caps1_types=32,
    caps2_types=32,
)
SMALL_EM = EMCapsNetConfig()


# The paper's smallNORB network, A = B = C = D = 32 (316,394 parameters).
register_model("em-capsnet", EMCapsNet, PAPER_EM)


# A CPU-sized matrix capsule network: A = 32, B = C = D = 8.
register_model("em-capsnet-small", EMCapsNet, SMALL_EM)


__all__ = ["EMCapsNet", "EMCapsNetConfig"]
