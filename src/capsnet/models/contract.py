"""The model contract: what a model must provide, and what each tool needs of it.

A registered model is a :class:`Classifier`: ``forward(images, targets=None)`` returns an
output with ``scores`` (B, K), whose largest entry is the prediction, and ``loss(out,
images, targets)`` gives the training loss. A :class:`CapsuleClassifier` adds, in its
output, the class capsules' ``poses`` (B, K, D) and the ``coupling`` coefficients
(B, I, K) of its I children (ordered type, row, column on ``coupling_grid``). A
:class:`PoseDecoder` also draws an image from masked class poses. The tools check these
protocols with :func:`require` before doing any work, and refuse in one line naming the
model and the missing part; a new family plugs in by meeting them.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from capsnet.errors import ConfigError
from capsnet.models.config import ModelConfig
from capsnet.targets import Targets


@runtime_checkable
class Scored(Protocol):
    """A classifier's output."""

    @property
    def scores(self) -> Tensor: ...  # (B, K) class scores; argmax is the prediction


@runtime_checkable
class CapsuleOutput(Scored, Protocol):
    """A capsule classifier's output."""

    @property
    def poses(self) -> Tensor: ...  # (B, K, D) class capsules
    @property
    def coupling(self) -> Tensor: ...  # (B, I, K) the children's coupling to each class


@runtime_checkable
class Classifier(Protocol):
    """What every tool needs: class scores from images, and a training loss."""

    config: ModelConfig  # in_channels, input_size (H, W), num_classes; to_dict()

    def __call__(self, x: Tensor, y: Targets | None = None) -> Scored: ...
    def loss(self, out: Any, x: Tensor, y: Targets) -> tuple[Tensor, dict[str, Tensor]]: ...


@runtime_checkable
class CapsuleClassifier(Classifier, Protocol):
    """A classifier whose output is a :class:`CapsuleOutput`."""

    @property
    def pose_dim(self) -> int: ...  # D of the class capsules
    @property
    def coupling_grid(self) -> tuple[int, int, int]: ...  # (types, H, W) of the I children


@runtime_checkable
class PoseDecoder(Protocol):
    """A capsule classifier that reconstructs images from class poses."""

    def decode(self, poses: Tensor, mask: Tensor) -> Tensor: ...  # (B,K,D), (B,K) → images


PARTS: dict[type, str] = {
    Classifier: "class scores and a loss (capsnet.models.contract.Classifier)",
    CapsuleClassifier: "capsule poses and coupling coefficients (CapsuleClassifier)",
    PoseDecoder: "a decoder (PoseDecoder)",
}


def provides(model: Any, part: type) -> bool:
    """Whether ``model`` meets the protocol ``part`` (a decoder must also be present)."""
    if part is PoseDecoder and getattr(model, "decoder", True) is None:
        return False  # a family that can have a decoder, built without one
    return isinstance(model, part)


def model_name(model: Any) -> str:
    return getattr(model, "name", None) or type(model).__name__


def require(model: Any, tool: str, *parts: type) -> None:
    """Raise ConfigError (one line) unless ``model`` provides every one of ``parts``."""
    for part in parts:
        if not provides(model, part):
            raise ConfigError(f"{tool} needs {PARTS[part]}; model {model_name(model)} has none")


__all__ = [
    "CapsuleClassifier",
    "CapsuleOutput",
    "Classifier",
    "PoseDecoder",
    "Scored",
    "model_name",
    "provides",
    "require",
]
