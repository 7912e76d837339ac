"""What a model is trained against: one label per image, or several overlaid digits.

Neutral ground between ``capsnet.data`` (which makes targets) and ``capsnet.models``
(whose losses read them): neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class OverlayTargets:
    """Targets of an image of overlaid digits: their classes and each digit alone.

    ``labels`` (N, L) int64; ``images`` (N, L, C, H, W), uint8 or floats in [0, 1], digit
    ``l`` alone on the canvas exactly where it is in the overlay. Indexing, ``len`` and
    ``to`` work as on a label tensor, so the trainer treats both alike.
    """

    labels: Tensor
    images: Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx: Tensor | slice) -> OverlayTargets:
        return OverlayTargets(self.labels[idx], self.images[idx])

    def to(self, device: torch.device | str) -> OverlayTargets:
        """On ``device``, images as floats in [0, 1] (the scale of the network's input)."""
        images = self.images.to(device)
        if images.dtype == torch.uint8:
            images = images.float().div_(255.0)
        return OverlayTargets(self.labels.to(device), images)

    def multi_hot(self, num_classes: int) -> Tensor:
        """(N, num_classes) float: 1 for every class present."""
        return F.one_hot(self.labels, num_classes).amax(1).float()


Targets = Tensor | OverlayTargets  # labels (N,) int64, or OverlayTargets


def num_correct(scores: Tensor, y: Targets) -> Tensor:
    """Correct predictions in a batch of class scores (B, K).

    One label per image: the highest score is the label. L labels per image
    (OverlayTargets, MultiMNIST): the L highest scores are exactly the L labels.
    """
    if not isinstance(y, OverlayTargets):
        return (scores.argmax(1) == y).sum()
    k = y.labels.shape[1]
    top = scores.topk(k, dim=1).indices.sort(1).values  # (B, L)
    return (top == y.labels.sort(1).values).all(1).sum()


__all__ = ["OverlayTargets", "Targets", "num_correct"]
