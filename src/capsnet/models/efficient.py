"""Efficient-CapsNet (Mazzia, Salvetti & Chiaberge, 2021): a small convolutional stem,
depthwise primary capsules, and one class-capsule layer with self-attention routing.

The MNIST network of the reference implementation (github.com/EscVM/Efficient-CapsNet,
``models/efficient_capsnet_graph_mnist.py``): four convolutions (32 5×5, 64 3×3, 64 3×3,
128 3×3 stride 2; ReLU then batch norm each) take 28×28 to 9×9×128; a 9×9 depthwise
convolution makes 16 primary capsules of 8 dimensions, squashed by
:func:`~capsnet.nn.routing.efficient_squash`; self-attention routing makes 10 class capsules
of 16. The paper's 161,824 trainable parameters are exactly ours without the decoder
(832 + 18,496 + 36,928 + 73,856 conv, 576 batch-norm scales and shifts, 10,496 depthwise,
20,480 W and 160 coupling biases); the reconstruction decoder (FC 512, 1024, 784, as in
CapsNet) adds 1,411,344, so ``efficient-capsnet`` has 1,573,168 in all. The published
training loss is margin loss + 0.392 · mean squared reconstruction error, i.e. 0.0005 ·
the summed squared error on 28×28 images (``reconstruction_weight=0.0005``; the default,
0.01, is the CapsNet authors' balance, see ``VectorCapsuleConfig``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from capsnet.errors import ConfigError
from capsnet.models.capsnet import CapsNet
from capsnet.models.config import VectorCapsuleConfig, conv_out
from capsnet.models.registry import register_model
from capsnet.nn.layers import Conv2d, PrimaryCaps
from capsnet.nn.routing import efficient_squash


@dataclass(frozen=True)
class EfficientCapsNetConfig(VectorCapsuleConfig):
    """Hyper-parameters of an Efficient-CapsNet. The defaults are the paper's MNIST one."""

    routing: str = "self-attention"  # routing_iterations: only for dynamic and EM routing
    stem_channels: tuple[int, ...] = (32, 64, 64, 128)
    stem_kernels: tuple[int, ...] = (5, 3, 3, 3)
    stem_strides: tuple[int, ...] = (1, 1, 1, 2)
    primary_kernel: int = 9  # depthwise, stride 1: 9×9 → one position on MNIST

    def validate(self) -> None:
        super().validate()
        if not len(self.stem_channels) == len(self.stem_kernels) == len(self.stem_strides):
            raise ConfigError("stem_channels, stem_kernels and stem_strides differ in length")
        if self.stem_channels[-1] % self.primary_dim:
            raise ConfigError(
                f"the last stem width {self.stem_channels[-1]} is not a multiple of "
                f"primary_dim {self.primary_dim}"
            )
        if min(self.primary_grid) < 1:
            raise ConfigError(f"input size {self.input_size} is too small for the stem")

    @property
    def primary_types(self) -> int:
        return self.stem_channels[-1] // self.primary_dim

    @property
    def primary_grid(self) -> tuple[int, int]:
        sizes = list(self.input_size)
        for k, s in zip(self.stem_kernels, self.stem_strides, strict=True):
            sizes = [conv_out(n, k, s) for n in sizes]
        return tuple(conv_out(n, self.primary_kernel, 1) for n in sizes)

    @property
    def num_primary_caps(self) -> int:
        h, w = self.primary_grid
        return self.primary_types * h * w

    @property
    def coupling_grid(self) -> tuple[int, int, int]:
        return (self.primary_types, *self.primary_grid)


class EfficientCapsNet(CapsNet):
    """Stem → depthwise PrimaryCaps → class capsules (self-attention routing) → decoder.

    A :class:`~capsnet.models.capsnet.CapsNet` with another encoder: the same output, margin +
    reconstruction loss and decoder API.
    """

    config: EfficientCapsNetConfig

    def __init__(self, config: EfficientCapsNetConfig | None = None):
        super().__init__(config or EfficientCapsNetConfig())

    def _build_encoder(self, cfg: EfficientCapsNetConfig) -> None:  # type: ignore[override]
        layers: list[nn.Module] = []
        widths = (cfg.in_channels, *cfg.stem_channels)
        for n, (c_in, c_out, k, s) in enumerate(
            zip(widths[:-1], widths[1:], cfg.stem_kernels, cfg.stem_strides, strict=True)
        ):
            layers += self._stem_layer(c_in, c_out, k, s, first=n == 0)
        self.stem = nn.Sequential(*layers)
        self.primary = self._build_primary(cfg)

    def _stem_layer(self, c_in: int, c_out: int, k: int, s: int, first: bool) -> list[nn.Module]:
        """One layer of the stem: convolution, ReLU, batch norm (``first``: of the image)."""
        return [Conv2d(c_in, c_out, k, s), nn.ReLU(inplace=True), nn.BatchNorm2d(c_out)]

    def _build_primary(self, cfg: EfficientCapsNetConfig) -> nn.Module:
        """The depthwise primary capsules on the stem's last map."""
        f = cfg.stem_channels[-1]
        return PrimaryCaps(
            f,
            cfg.primary_types,
            cfg.primary_dim,
            cfg.primary_kernel,
            1,
            groups=f,
            squash_fn=efficient_squash,
        )

    def encode(self, x: Tensor) -> Tensor:
        return self.primary(self.stem(x))  # (B, I, primary_dim)


# The paper's MNIST network: 161,824 parameters + 1,411,344 in the decoder.
register_model("efficient-capsnet", EfficientCapsNet, EfficientCapsNetConfig())


__all__ = ["EfficientCapsNet", "EfficientCapsNetConfig"]
