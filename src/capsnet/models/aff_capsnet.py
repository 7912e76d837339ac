"""Aff-CapsNets (Gu & Tresp, "Improving the Robustness of Capsule Networks to Image Affine
Transformations", CVPR 2020): CapsNet whose class capsules see every primary capsule through
one transformation matrix per class, ``û_{j|i} = W_j u_i``, and (by default) no routing.

Gu & Tresp found that dynamic routing helps neither generalisation nor affine robustness,
and that a matrix W_ij of its own for every primary capsule i lets the network learn what
each position looks like instead of how parts transform. Sharing W_j across positions makes
the class capsules see a coupling-weighted sum of the primary capsules, whatever their
place: s_j = W_j Σ_i c_ij u_i. Their MNIST → affNIST result: 93.21% (CapsNet 79%).

``share`` chooses the groups that share a matrix: ``"all"`` (the paper: one W_j for all
1152 primary capsules) or ``"type"`` (one W_tj per primary capsule type t, shared over its
positions, as convolutional capsules share weights). ``routing_iterations`` 1 is uniform
coupling (no routing); more iterations route by agreement without forming the votes
(:func:`capsnet.nn.routing.shared_dynamic_routing`).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from capsnet.errors import ConfigError
from capsnet.models.capsnet import CapsNet, CapsNetConfig
from capsnet.models.registry import register_model
from capsnet.nn.layers import SharedRoutingCaps

SHARES = ("all", "type")


@dataclass(frozen=True)
class AffCapsNetConfig(CapsNetConfig):
    """A CapsNet config plus ``share``; the defaults are the paper network with one shared
    matrix per class and uniform coupling."""

    share: str = "all"  # which primary capsules share a matrix: "all" or "type"
    routing_iterations: int = 1  # 1 = uniform coupling, Gu & Tresp's choice

    def validate(self) -> None:
        super().validate()
        if self.share not in SHARES:
            raise ConfigError(f"share must be one of {', '.join(SHARES)}, not {self.share!r}")

    @property
    def transform_groups(self) -> int:
        """How many matrices each class has: 1, or one per primary capsule type."""
        return 1 if self.share == "all" else self.primary_types


class AffCapsNet(CapsNet):
    """Conv1 → PrimaryCaps → class capsules through shared matrices → decoder: a
    :class:`~capsnet.models.capsnet.CapsNet` with :class:`~capsnet.nn.layers.SharedRoutingCaps`
    in place of W_ij (the same output, loss and decoder)."""

    def __init__(self, config: AffCapsNetConfig | None = None):
        super().__init__(config or AffCapsNetConfig())

    def _build_classes(self, cfg: AffCapsNetConfig) -> nn.Module:  # type: ignore[override]
        return SharedRoutingCaps(
            cfg.num_primary_caps,
            cfg.primary_dim,
            cfg.num_classes,
            cfg.class_dim,
            groups=cfg.transform_groups,
            spec=cfg.routing_spec,
        )


AFF = AffCapsNetConfig()
AFF_SMALL = AffCapsNetConfig(
    conv1_channels=64, primary_types=16, decoder_hidden=(256, 512), share="type"
)

# The paper network's encoder and decoder; 10 matrices of 16×8 in place of 1152×10.
register_model("aff-capsnet", AffCapsNet, AFF)

# capsnet-small's encoder and decoder, one matrix per class and primary capsule type.
register_model("aff-capsnet-small", AffCapsNet, AFF_SMALL)

__all__ = ["AffCapsNet", "AffCapsNetConfig"]
