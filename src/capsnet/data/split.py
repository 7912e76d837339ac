"""What a task's training data is made of (:class:`TrainData`), how a training split is
divided into training and validation images, and how a task is made (:class:`Recipe`, of
which :class:`capsnet.data.task.Task` makes its data): shared by the built-in tasks
(:mod:`capsnet.data.tasks`) and the folder, npz and official ones (:mod:`capsnet.data.custom`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from capsnet import _deprecated
from capsnet.data.transforms import train_val_split
from capsnet.targets import Targets

log = logging.getLogger(__name__)

Batch = tuple[Tensor, Targets]  # uint8 images (B, C, H, W) and their targets
VAL_FLOOR, VAL_CAP = 50, 5000  # of the default validation size (see default_val_size)


@dataclass
class TrainData:
    """What an epoch is made of and the fixed validation set."""

    size: int  # training examples per epoch
    val_x: Tensor  # uint8 (V, C, H, W)
    val_y: Targets
    make_batch: Callable[[Tensor, torch.Generator], Batch]  # training indices (B,) → batch
    held_out: int | None = None  # images held out of the training split; None: a val split

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.val_x.shape[1:])

    def batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        """One epoch: a random permutation of the training set, batch by batch."""
        for idx in torch.randperm(self.size, generator=generator).split(batch_size):
            yield self.make_batch(idx, generator)


class Recipe(NamedTuple):
    """How a task's data is made (an entry of the registry, ``capsnet.data.tasks``)."""

    source: str  # the IDX dataset the images come from (the task's name for the others)
    options: type  # config dataclass of the dataset's options
    train: Callable[..., TrainData] | None  # None: a test set only
    test: Callable[[str | Path | None, Any], tuple[Tensor, Targets]]
    classes: Callable[[], tuple[str, ...]] | None = None  # None: those of the IDX source


def default_val_size(n: int) -> int:
    """The validation images held out of a training split of ``n`` when ``val_size`` is
    not given: a tenth, at least 50 (a fifth of a split under 250), at most 5,000 (so
    MNIST's 60,000 and CIFAR-10's 50,000 hold out 5,000, older versions' fixed default)."""
    return min(VAL_CAP, max(n // 10, min(VAL_FLOOR, n // 5)))


def split_indices(n: int, val_size: int | None, where: str) -> tuple[Tensor, Tensor]:
    """Training and validation indices of a split of ``n`` (``train_val_split``, seed 0):
    ``val_size`` held out, or ``default_val_size(n)`` (logged) if it is None."""
    if val_size is None:
        val_size = default_val_size(n)
        log.info("validation: %d of the %d training images of %s held out", val_size, n, where)
    return train_val_split(n, val_size, seed=0)


__getattr__ = _deprecated.module_getattr(
    __name__, {"Task": ("capsnet.data.split.Recipe", lambda: Recipe)}
)

__all__ = ["Batch", "Recipe", "TrainData", "default_val_size", "split_indices"]
