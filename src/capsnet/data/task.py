"""A task: what ``--dataset NAME`` names, with its options and data directory, resolved
once (:func:`capsnet.data.tasks.get_task`) and then asked for its classes, its training
data and its test set.

A :class:`Task` holds the registry's :class:`~capsnet.data.split.Recipe` for its name, so
what the recipe reads once (an ``.npz`` archive) is read once per Task, however often the
Task is asked; nothing is cached outside it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

from torch import Tensor

from capsnet.data.images import ImagePolicy
from capsnet.data.sources import DatasetSpec, get_spec
from capsnet.data.split import Recipe, TrainData
from capsnet.errors import ConfigError
from capsnet.targets import Targets
from capsnet.typecheck import check_field_types


class Classes(NamedTuple):
    """The classes of a task that is not an IDX dataset (DatasetSpec's class fields)."""

    name: str
    num_classes: int
    class_names: tuple[str, ...]


def checked_options(name: str, cls: type, options: Mapping[str, Any] | None) -> Any:
    """``options`` as the dataclass ``cls`` of task ``name``; ConfigError for unknown
    options or values of the wrong type."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options or {}) - known)
    if unknown:
        allowed = ", ".join(sorted(known)) or "none"
        raise ConfigError(f"unknown option(s) {', '.join(unknown)} for '{name}' (known: {allowed})")
    try:
        check_field_types(cls, options or {})
    except ConfigError as e:
        raise ConfigError(f"bad option for '{name}': {e}") from None
    try:
        return cls(**(options or {}))
    except TypeError as e:  # e.g. a string where a number belongs
        raise ConfigError(f"bad option for '{name}': {e}") from None


def check_shift(max_shift: int, size: tuple[int, ...]) -> None:
    """ConfigError if shifts of up to ±``max_shift`` pixels could move an image of
    ``size`` (H, W) by half its side or more: little or nothing of it would be left."""
    limit = (min(size) - 1) // 2
    if max_shift > limit:
        raise ConfigError(
            f"max_shift {max_shift} moves the {'×'.join(map(str, size))} images by half their "
            f"side or more; use at most {limit}"
        )


def sized_class_names(names: tuple[str, ...], num_classes: int) -> tuple[str, ...]:
    """``names`` if there are ``num_classes`` of them, else "0", "1", … (a model with
    another number of classes than its task's)."""
    return names if len(names) == num_classes else tuple(map(str, range(num_classes)))


@dataclass(frozen=True, eq=False)
class Task:
    """One dataset name resolved: ``name``, its ``recipe`` (from the registry), its checked
    ``options`` (the recipe's options dataclass) and ``data_dir`` (None: the search path).
    Make one with :func:`capsnet.data.tasks.get_task` or :meth:`create`."""

    name: str
    recipe: Recipe
    options: Any
    data_dir: str | Path | None = None

    @classmethod
    def create(
        cls,
        name: str,
        recipe: Recipe,
        options: Mapping[str, Any] | None = None,
        data_dir: str | Path | None = None,
    ) -> Task:
        """The Task of ``name`` made by ``recipe``; ConfigError for bad ``options``."""
        return cls(name, recipe, checked_options(name, recipe.options, options), data_dir)

    @property
    def source(self) -> str:
        """The raw source (a key of ``capsnet.data.sources.DATASETS``) of an MNIST-family
        task; the task's own name for the others."""
        return self.recipe.source

    @property
    def trainable(self) -> bool:
        """False for a test set only (affNIST)."""
        return self.recipe.train is not None

    def check_trainable(self) -> None:
        """ConfigError if the task is a test set only."""
        if not self.trainable:
            raise ConfigError(
                f"'{self.name}' is a test set only; train on expanded-mnist for affNIST"
            )

    @cached_property
    def spec(self) -> DatasetSpec | Classes:
        """Class count and names: the IDX source's, else the recipe's (read on first use:
        a folder's class folders, an archive's ``class_names``)."""
        if self.recipe.classes is None:
            return get_spec(self.source)
        names = self.recipe.classes()
        return Classes(self.name, len(names), names)

    @property
    def class_names(self) -> tuple[str, ...]:
        """The names of the task's classes, in label order."""
        return tuple(self.spec.class_names)

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    def load_train(
        self, *, val_size: int | None = None, train_limit: int | None = None, max_shift: int = 2
    ) -> TrainData:
        """Training data: the first ``train_limit`` of the training split after holding out
        ``val_size`` examples (a fixed permutation, seed 0) for validation (None:
        ``default_val_size``; a folder with ``val/`` validates on that instead).
        ``max_shift`` is the augmentation of ``mnist`` and ``fashion-mnist`` only: the other
        datasets place their digits as their options say. ConfigError for a test set only,
        or a shift of half the images' side or more."""
        self.check_trainable()
        data = self.recipe.train(
            self.source, self.data_dir, val_size, train_limit, max_shift, self.options
        )
        check_shift(max_shift, data.image_shape[1:])
        return data

    def load_test(
        self, *, limit: int | None = None, data_dir: str | Path | None = None
    ) -> tuple[Tensor, Targets]:
        """The fixed test set (the first ``limit`` examples if given), from ``data_dir``,
        else the task's."""
        x, y = self.recipe.test(data_dir or self.data_dir, self.options)
        return (x, y) if limit is None else (x[:limit], y[:limit])

    def record(self) -> dict[str, Any]:
        """What a run saves about its data (``config.json`` ``data``): class names and, for
        tasks that have one, the image policy predict and explore apply to new images."""
        policy = self.options
        return {
            "class_names": list(self.class_names),
            "image_policy": (
                {f.name: getattr(policy, f.name) for f in dataclasses.fields(ImagePolicy)}
                if isinstance(policy, ImagePolicy)
                else None
            ),
        }


__all__ = ["Classes", "Task", "check_shift", "checked_options", "sized_class_names"]
