"""What a model is trained against: one label per image, or several overlaid digits.

A label ``ABSENT`` (-1) says "no object": an image with that label shows nothing of any
class (training's ``blank`` examples, :func:`blank_out`), and an OverlayTargets slot with it
holds no digit. Under the margin loss every class of such an image is a negative.

Neutral ground between ``capsnet.data`` (which makes targets) and ``capsnet.models``
(whose losses read them): neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

ABSENT = -1  # the label of "no object of any class"


def multi_hot(labels: Tensor, num_classes: int) -> Tensor:
    """(N, num_classes) float: 1 for every class in ``labels`` (N,) or (N, L) int, whose
    ``ABSENT`` entries name no class (a row of only ``ABSENT`` is all zeros)."""
    present = labels >= 0  # (N,) or (N, L)
    hot = F.one_hot(labels.clamp_min(0).long(), num_classes) * present.unsqueeze(-1)
    return (hot if labels.dim() == 1 else hot.amax(1)).float()  # (N, num_classes)


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
        """(N, num_classes) float: 1 for every class present (``ABSENT`` slots name none)."""
        return multi_hot(self.labels, num_classes)


Targets = Tensor | OverlayTargets  # labels (N,) int64, or OverlayTargets


def blank_out(
    x: Tensor, y: Targets, share: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Targets]:
    """Each example of a batch, with probability ``share``, made blank: its image (B, …)
    all zeros and every label of it ``ABSENT`` (an OverlayTargets' digit images zeroed too).

    The draw (B uniforms) comes from ``generator`` on the CPU. New tensors; ``x`` and ``y``
    are not changed. ``share`` 0 returns them as they are.
    """
    if share == 0:
        return x, y
    blank = torch.rand(len(x), generator=generator) < share  # (B,) on the CPU
    x = x.masked_fill(blank.view(-1, *[1] * (x.dim() - 1)).to(x.device), 0)
    if not isinstance(y, OverlayTargets):
        return x, y.masked_fill(blank.to(y.device), ABSENT)
    labels = y.labels.masked_fill(blank.view(-1, 1).to(y.labels.device), ABSENT)  # (B, L)
    images = y.images.masked_fill(blank.view(-1, 1, 1, 1, 1).to(y.images.device), 0)
    return x, OverlayTargets(labels, images)


def shows_object(y: Targets) -> Tensor:
    """(B,) bool: the examples with a label that is not ``ABSENT`` (all but the blanks)."""
    labels = y.labels if isinstance(y, OverlayTargets) else y.unsqueeze(1)  # (B, L)
    return (labels != ABSENT).any(1)


def num_correct(scores: Tensor, y: Targets) -> Tensor:
    """Correct predictions in a batch of class scores (B, K).

    One label per image: the highest score is the label. L labels per image
    (OverlayTargets, MultiMNIST): the L highest scores are exactly the L labels. An example
    with an ``ABSENT`` label (a blank) never counts as correct: scores name a class.
    """
    if not isinstance(y, OverlayTargets):
        return (scores.argmax(1) == y).sum()
    k = y.labels.shape[1]
    top = scores.topk(k, dim=1).indices.sort(1).values  # (B, L)
    return (top == y.labels.sort(1).values).all(1).sum()


__all__ = [
    "ABSENT",
    "OverlayTargets",
    "Targets",
    "blank_out",
    "multi_hot",
    "num_correct",
    "shows_object",
]
