"""The base of every model config: a frozen dataclass that owns its defaults, turns JSON
lists back into tuples, validates itself and round-trips through a dict."""

from __future__ import annotations

import dataclasses
import numbers
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import Tensor

from capsnet.errors import ConfigError
from capsnet.nn.routing import RoutingSpec

C = TypeVar("C", bound="ModelConfig")
PAPER_TEXT_WEIGHT = 0.0005  # the reconstruction weight in the paper's text
INPUT_NORMS = ("none", "peak", "levels", "autolevels")  # capsnet.nn.layers.normalise_input


def conv_out(size: int, kernel: int, stride: int) -> int:
    """Output size of a valid (unpadded) convolution."""
    return (size - kernel) // stride + 1


@dataclass(frozen=True)
class ModelConfig:
    """What every model is built for: input channels, input size (H, W), classes.

    Subclasses add fields (all with defaults) and checks in :meth:`validate`; every field
    holding a tuple may be given as a list (as JSON gives it back).
    """

    in_channels: int = 1
    input_size: tuple[int, int] = (28, 28)
    num_classes: int = 10
    # "peak": each image is divided by its brightest value before anything else; "levels":
    # that, then its values stretched and clipped; "autolevels": the same with the black
    # point lowered for images with little ink (capsnet.nn.layers.normalise_input);
    # "none": images as given
    input_norm: str = "none"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # JSON round-trips give lists; keep it hashable
            if isinstance(getattr(self, f.name), list):
                object.__setattr__(self, f.name, tuple(getattr(self, f.name)))
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError for inconsistent fields (subclasses extend it)."""
        self._check_counts()
        if self.input_norm not in INPUT_NORMS:
            raise ConfigError(
                f"input_norm must be one of {', '.join(INPUT_NORMS)}, not {self.input_norm!r}"
            )
        if self.in_channels < 1 or self.num_classes < 2 or len(self.input_size) != 2:
            raise ConfigError(
                f"need in_channels ≥ 1, num_classes ≥ 2 and input_size (H, W), got "
                f"{self.in_channels}, {self.num_classes}, {self.input_size}"
            )

    def _check_counts(self) -> None:
        """ConfigError unless every integer field (a size, count, kernel or stride), and
        every entry of a tuple of them, is an integer ≥ 1 (≥ the field's ``metadata["min"]``
        where it has one)."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            hint, value = hints[f.name], getattr(self, f.name)
            if hint is int:
                values, what = (value,), "an integer"
            elif typing.get_origin(hint) is tuple and int in typing.get_args(hint):
                values, what = value, "integers"
            else:
                continue
            least = f.metadata.get("min", 1)
            if not all(isinstance(v, numbers.Integral) and v >= least for v in values):
                raise ConfigError(f"{f.name} must be {what} ≥ {least}, found {value!r}")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(C, H, W) of the images the model takes."""
        return (self.in_channels, *self.input_size)

    def check_images(self, images: Tensor, source: str) -> None:
        """ConfigError unless ``images`` (N, C, H, W) are of :attr:`input_shape`; the
        message names them as ``source`` images."""
        if tuple(images.shape[1:]) != self.input_shape:
            raise ConfigError(
                f"{source} images are {tuple(images.shape[1:])} but the model expects "
                f"{self.input_shape}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[C], d: dict[str, Any]) -> C:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
        return cls(**d)


@dataclass(frozen=True)
class CapsuleConfig(ModelConfig):
    """A model whose class capsules are routed: the three routing settings, kept flat so
    saved configs stay as they were, and handed to the layers as one :class:`RoutingSpec`."""

    routing: str = "dynamic"  # a key of capsnet.nn.routing.ROUTINGS
    routing_iterations: int = 3
    detach_agreement: bool = False

    def validate(self) -> None:
        super().validate()
        self.routing_spec  # noqa: B018 (checks the name and the iterations)

    @property
    def routing_spec(self) -> RoutingSpec:
        return RoutingSpec(self.routing, self.routing_iterations, self.detach_agreement)


@dataclass(frozen=True)
class VectorCapsuleConfig(CapsuleConfig):
    """Vector capsules with a reconstruction decoder (CapsNet, Efficient-CapsNet)."""

    primary_dim: int = 8
    class_dim: int = 16
    reconstruction: bool = True
    decoder_hidden: tuple[int, ...] = (512, 1024)
    # × the summed squared reconstruction error. 0.01 is the balance of the authors' code
    # (half the margin loss averaged over the classes, + 0.0005 × SSE: 20× this library's
    # summed margin loss), chosen over the paper's text (0.0005) on the evidence of two A/Bs
    # (results/README.md, "What the capsules encode"). Configs saved without this field
    # trained with 0.0005: see migrate_config.
    reconstruction_weight: float = 0.01

    def validate(self) -> None:
        super().validate()
        if not self.reconstruction_weight >= 0:
            raise ConfigError(f"reconstruction_weight {self.reconstruction_weight} is not ≥ 0")


def migrate_config(saved: dict[str, Any]) -> dict[str, Any]:
    """A model config saved by an older version, as the fields mean today: one with a
    decoder but no ``reconstruction_weight`` trained with the paper's text's 0.0005."""
    if "reconstruction" in saved and "reconstruction_weight" not in saved:
        return {**saved, "reconstruction_weight": PAPER_TEXT_WEIGHT}
    return saved


__all__ = ["CapsuleConfig", "ModelConfig", "VectorCapsuleConfig", "conv_out", "migrate_config"]
