"""CapsNet (Sabour et al., 2017): its config and the network."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from torch import Tensor, nn
from torch.nn import functional as F

from capsnet import _deprecated
from capsnet.errors import ConfigError
from capsnet.models.config import VectorCapsuleConfig, conv_out
from capsnet.models.registry import register_model
from capsnet.nn.layers import (
    Conv2d,
    Decoder,
    PrimaryCaps,
    RoutingCaps,
    binomial_blur,
    normalise_input,
)
from capsnet.nn.losses import capsnet_loss
from capsnet.nn.routing import Routed
from capsnet.targets import OverlayTargets, multi_hot

ANTIALIAS = (1, 3, 5)  # binomial filter sizes: none, [1, 2, 1], [1, 4, 6, 4, 1]


@dataclass(frozen=True)
class CapsNetConfig(VectorCapsuleConfig):
    """Hyper-parameters of a CapsNet. The defaults are the paper's MNIST network."""

    conv1_channels: int = 256
    conv1_kernel: int = 9
    primary_types: int = 32
    primary_kernel: int = 9
    primary_stride: int = 2
    conv_algorithm: str = "auto"  # "auto": PrimaryCaps through the DFT where cheaper; "direct"
    # binomial low-pass (size × size) of conv1's output before the primary capsules' strided
    # convolution, anti-aliasing its subsampling (capsnet.nn.layers.binomial_blur); 1: none
    antialias: int = 1

    def validate(self) -> None:
        super().validate()
        if self.conv_algorithm not in ("auto", "direct"):
            raise ConfigError(
                f"conv_algorithm must be 'auto' or 'direct', not {self.conv_algorithm!r}"
            )
        if self.antialias not in ANTIALIAS:
            raise ConfigError(f"antialias must be one of {ANTIALIAS}, not {self.antialias!r}")
        if min(self.primary_grid) < 1:
            raise ConfigError(
                f"input size {self.input_size} is too small for conv1 {self.conv1_kernel}×"
                f"{self.conv1_kernel} and primary caps {self.primary_kernel}×"
                f"{self.primary_kernel}/{self.primary_stride}"
            )
        conv1_size = min(self.conv1_grid)
        if conv1_size <= self.antialias // 2:  # reflect padding needs more pixels than it adds
            raise ConfigError(
                f"antialias {self.antialias} needs conv1's output larger than "
                f"{self.antialias // 2} pixels, got {conv1_size}"
            )

    @property
    def conv1_grid(self) -> tuple[int, int]:
        """Spatial size (H, W) of conv1's output."""
        h, w = (conv_out(s, self.conv1_kernel, 1) for s in self.input_size)
        return h, w

    @property
    def primary_grid(self) -> tuple[int, int]:
        """Spatial size (H', W') of the primary capsule grid."""
        h, w = self.conv1_grid
        return (
            conv_out(h, self.primary_kernel, self.primary_stride),
            conv_out(w, self.primary_kernel, self.primary_stride),
        )

    @property
    def coupling_grid(self) -> tuple[int, int, int]:
        """(types, H', W') of the children of the class capsules: ``coupling`` (B, I, K)
        views as (B, types, H', W', K)."""
        return (self.primary_types, *self.primary_grid)

    @property
    def num_primary_caps(self) -> int:
        h, w = self.primary_grid
        return self.primary_types * h * w


class CapsNetOutput(NamedTuple):
    """A capsule classifier's output (meets ``contract.CapsuleOutput``)."""

    scores: Tensor  # (B, K) class activations: capsule lengths (EM routing: its a_j)
    poses: Tensor  # (B, K, D) class capsules
    reconstructions: Tensor | None  # (B, C, H, W), None without a decoder
    coupling: Tensor  # (B, I, K) coupling coefficients of the children to the classes

    lengths = _deprecated.renamed_attribute("capsnet.models.capsnet.CapsNetOutput.lengths")
    routing_weights = _deprecated.renamed_attribute(
        "capsnet.models.capsnet.CapsNetOutput.routing_weights"
    )


class CapsuleModel(nn.Module):
    """What the class-capsule families share: the contract's ``pose_dim`` and
    ``coupling_grid``, read from their config's ``class_dim`` and ``coupling_grid``."""

    config: Any

    @property
    def pose_dim(self) -> int:
        return self.config.class_dim

    @property
    def coupling_grid(self) -> tuple[int, int, int]:
        return self.config.coupling_grid

    routing_grid = _deprecated.renamed_attribute("capsnet.models.capsnet.CapsuleModel.routing_grid")


class CapsNet(CapsuleModel):
    """Conv1 → PrimaryCaps → class capsules with routing → (optional) decoder.

    Subclasses with another encoder (see ``capsnet.models.efficient``) override
    :meth:`_build_encoder` and :meth:`encode`, with other class capsules
    (``capsnet.models.aff_capsnet``) :meth:`_build_classes`; the decoder and loss stay.
    The margin loss gives a blank example (``ABSENT``) all negatives: it learns absence.
    """

    learns_absence = True

    def __init__(self, config: CapsNetConfig | None = None):
        super().__init__()
        self.config = cfg = config or CapsNetConfig()
        self._build_encoder(cfg)
        self.classes = self._build_classes(cfg)
        self.decoder = (
            Decoder(
                cfg.num_classes * cfg.class_dim,
                cfg.decoder_hidden,
                cfg.input_shape,
            )
            if cfg.reconstruction
            else None
        )

    def _build_encoder(self, cfg: CapsNetConfig) -> None:
        self.conv1 = Conv2d(cfg.in_channels, cfg.conv1_channels, cfg.conv1_kernel)
        self.primary = PrimaryCaps(
            cfg.conv1_channels,
            cfg.primary_types,
            cfg.primary_dim,
            cfg.primary_kernel,
            cfg.primary_stride,
            dft=cfg.conv_algorithm == "auto",
        )

    def _build_classes(self, cfg: CapsNetConfig) -> nn.Module:
        """The class capsules: primary capsules (B, I, primary_dim) → Routed."""
        return RoutingCaps(
            cfg.num_primary_caps, cfg.primary_dim, cfg.num_classes, cfg.class_dim, cfg.routing_spec
        )

    def encode(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) → primary capsules (B, I, primary_dim), ordered (type, row,
        column) on the ``primary_grid``. The ReLU runs in place on conv1's output (no
        convolution's backward reads its output), which is low-passed if ``antialias`` > 1."""
        h = F.relu(self.conv1(x), inplace=True)  # (B, conv1_channels, H − k + 1, W − k + 1)
        return self.primary(binomial_blur(h, self.config.antialias))

    def forward(self, x: Tensor, y: Tensor | OverlayTargets | None = None) -> CapsNetOutput:
        """x: images (B, C, H, W) in [0, 1] (normalised as ``input_norm`` says); y: labels
        (B,), multi-hot (B, K), OverlayTargets or None.

        The decoder sees the capsule(s) of ``y`` when given, else of the longest capsule.
        """
        x = normalise_input(x, self.config.input_norm)
        return self._output(self.classes(self.encode(x)), y)

    def _output(self, routed: Routed, y: Tensor | OverlayTargets | None) -> CapsNetOutput:
        """The class capsules routed, with the decoder's reconstruction of those ``y`` names
        (else of the longest)."""
        v, lengths, c = routed  # (B, K, D), (B, K), (B, I, K)
        recon = None
        if self.decoder is not None:
            recon = self.decoder(v * self._mask(lengths, y).unsqueeze(-1))
        return CapsNetOutput(lengths, v, recon, c)

    def loss(
        self, out: CapsNetOutput, x: Tensor, y: Tensor | OverlayTargets
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Training loss: margin loss + ``reconstruction_weight`` · reconstruction SSE.

        With OverlayTargets (MultiMNIST, §6) every digit has a positive margin target and is
        reconstructed alone from its own capsule; the squared errors are summed over them.
        Every registered model has ``loss(out, x, y)``; the trainer calls nothing else.
        """
        w = self.config.reconstruction_weight
        if not isinstance(y, OverlayTargets):
            x = normalise_input(x, self.config.input_norm)  # what the decoder is to redraw
            return capsnet_loss(out.scores, out.reconstructions, x, y, w)
        recon = None
        if self.decoder is not None and w != 0:
            recon = self.decode_classes(out.poses, y.labels)  # (B, L, C, H, W)
        return capsnet_loss(out.scores, recon, y.images, y.multi_hot(self.config.num_classes), w)

    def decode(self, poses: Tensor, mask: Tensor) -> Tensor:
        """Decode class capsules (B, K, D) with a (B, K) mask of the capsules to keep."""
        if self.decoder is None:
            raise ConfigError("this model has no decoder (reconstruction=False)")
        return self.decoder(poses * mask.unsqueeze(-1))

    def decode_classes(self, poses: Tensor, classes: Tensor) -> Tensor:
        """Decode each listed class capsule alone: poses (B, K, D), classes (B, L) int →
        images (B, L, C, H, W). An ``ABSENT`` class decodes from no capsule at all."""
        masks = multi_hot(classes.flatten(), poses.shape[1]).to(poses.dtype)  # (B·L, K)
        repeated = poses.unsqueeze(1).expand(-1, classes.shape[1], -1, -1)  # (B, L, K, D)
        return self.decode(repeated.flatten(0, 1), masks).unflatten(0, classes.shape)

    def _mask(self, lengths: Tensor, y: Tensor | None) -> Tensor:
        k = lengths.shape[1]
        if y is None:
            return F.one_hot(lengths.argmax(1), k).to(lengths.dtype)
        if isinstance(y, OverlayTargets):
            return y.multi_hot(k).to(lengths.dtype)
        if y.dim() == 1:  # a blank's ABSENT label masks every capsule
            return multi_hot(y, k).to(lengths.dtype)
        return y.to(lengths.dtype)


PAPER = CapsNetConfig()
SMALL = CapsNetConfig(conv1_channels=64, primary_types=16, decoder_hidden=(256, 512))


# The paper's network: 8,215,568 parameters on 28×28 inputs with 10 classes.
register_model("capsnet-mnist", CapsNet, PAPER)


# A CPU-sized CapsNet: 64 conv1 channels, 16 primary capsule types, smaller decoder.
register_model("capsnet-small", CapsNet, SMALL)


__all__ = ["CapsNet", "CapsNetConfig", "CapsNetOutput", "CapsuleModel"]
