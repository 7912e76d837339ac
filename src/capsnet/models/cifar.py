"""The paper's CIFAR-10 CapsNet (Sabour et al., 2017, §7): the MNIST network with three
input channels and 64 primary capsule types, on 24×24 patches, with an optional
"none-of-the-above" category for the routing softmaxes.

The none-of-the-above category is one more class capsule that every primary capsule can
route to, so background clutter need not be explained by a real class; it is never a
label, its length is not a score and it is not reconstructed. The model's outputs are
those of the K real classes: ``scores`` (B, K), ``poses`` (B, K, D) and
``coupling`` (B, I, K), whose rows then sum to less than 1 (the rest went to
none-of-the-above).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from capsnet.models.capsnet import CapsNet, CapsNetConfig
from capsnet.models.registry import register_model
from capsnet.nn.layers import RoutingCaps
from capsnet.nn.routing import Routed, RoutingSpec


@dataclass(frozen=True)
class CifarCapsNetConfig(CapsNetConfig):
    """CapsNetConfig plus the none-of-the-above category (defaults: the paper's CIFAR-10)."""

    in_channels: int = 3
    input_size: tuple[int, int] = (24, 24)
    primary_types: int = 64
    none_of_the_above: bool = True


class NoneOfTheAboveCaps(RoutingCaps):
    """RoutingCaps with one extra parent, routed to like the others and dropped after."""

    def __init__(self, in_caps: int, in_dim: int, out_caps: int, out_dim: int, spec: RoutingSpec):
        super().__init__(in_caps, in_dim, out_caps + 1, out_dim, spec)

    def forward(self, u: Tensor) -> Routed:
        r = super().forward(u)  # (B, K+1, D), (B, K+1), (B, I, K+1)
        return Routed(r.poses[:, :-1], r.activations[:, :-1], r.weights[..., :-1])


class CifarCapsNet(CapsNet):
    """CapsNet whose class capsules have a none-of-the-above category if configured."""

    def __init__(self, config: CifarCapsNetConfig | None = None):
        cfg = config or CifarCapsNetConfig()
        super().__init__(cfg)
        if cfg.none_of_the_above:
            self.classes = NoneOfTheAboveCaps(
                cfg.num_primary_caps,
                cfg.primary_dim,
                cfg.num_classes,
                cfg.class_dim,
                cfg.routing_spec,
            )


# The paper's CIFAR-10 network (one model of its 7-model ensemble).
register_model("capsnet-cifar10", CifarCapsNet, CifarCapsNetConfig())


__all__ = ["CifarCapsNet", "CifarCapsNetConfig", "NoneOfTheAboveCaps"]
