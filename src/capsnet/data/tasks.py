"""Datasets as the trainer sees them: training batches made per epoch, fixed val/test sets.

| name | images | training batches | validation / test |
| --- | --- | --- | --- |
| ``mnist``, ``fashion-mnist`` | 28×28 | random shifts of up to ±``max_shift`` | as is |
| ``expanded-mnist`` | 40×40 | each digit at a random place (±6 px) | fixed random places |
| ``multimnist`` | 36×36 | fresh pairs of overlaid digits | fixed seeded pairs |
| ``affnist-generated`` | 40×40 | (test only) | MNIST test digits, random affine |
| ``affnist`` | 40×40 | (test only) | the real affNIST ``.mat`` files |

Targets are labels (N,) or, for MultiMNIST, :class:`OverlayTargets`. ``options`` set a
dataset's own settings (a dict checked against its config dataclass, e.g.
``{"shift": 3}`` for MultiMNIST).

This module is the registry: :func:`get_task` resolves a name (these, ``custom``'s
official datasets, ``folder:PATH`` and ``npz:PATH``) once into a
:class:`~capsnet.data.task.Task`. The functions taking a name (:func:`load_train`,
:func:`load_test`, …) resolve it on each call: one-off conveniences.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from capsnet.data import custom  # folder:PATH, npz:PATH, cifar10, svhn, smallnorb
from capsnet.data.affnist import AffineRanges, load_affnist_mat, random_affine
from capsnet.data.multimnist import MultiMNISTConfig, fixed_pairs, make_pairs
from capsnet.data.sources import DatasetSpec, load_split, search_path
from capsnet.data.split import Recipe, TrainData, default_val_size, split_indices
from capsnet.data.task import Classes, Task, check_shift, sized_class_names
from capsnet.data.transforms import random_shift
from capsnet.errors import CapsNetError, ConfigError, DataError, did_you_mean
from capsnet.targets import OverlayTargets, Targets

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CanvasConfig:
    """``expanded-mnist``: each digit anywhere on a canvas ``pad`` pixels wider per side."""

    pad: int = 6  # 28×28 → 40×40; the digit is shifted by up to ±pad pixels per axis
    seed: int = 0  # of the fixed placements (test: seed, validation: seed + 1)

    def __post_init__(self) -> None:
        if self.pad < 0:
            raise ConfigError(f"canvas pad must be ≥ 0, got {self.pad}")


@dataclass(frozen=True)
class NoOptions:
    """Datasets without options of their own."""


def _pad(x: Tensor, pad: int) -> Tensor:
    return F.pad(x, (pad, pad, pad, pad))


def _placed(x: Tensor, cfg: CanvasConfig, seed: int) -> Tensor:
    """Digits padded and shifted to fixed, seeded random places on the canvas."""
    return random_shift(_pad(x, cfg.pad), cfg.pad, torch.Generator().manual_seed(seed))


def _split(source: str, data_dir: str | Path | None, val_size: int | None, limit: int | None):
    images, labels = load_split(source, "train", data_dir)
    if val_size is not None and val_size >= len(labels):
        raise ConfigError(f"--val-size {val_size} leaves no training data ({len(labels)})")
    train_idx, val_idx = split_indices(len(labels), val_size, source)
    if limit is not None:
        train_idx = train_idx[:limit]
    return images[train_idx], labels[train_idx], images[val_idx], labels[val_idx]


def _train_plain(source, data_dir, val_size, train_limit, max_shift, cfg) -> TrainData:
    x, y, val_x, val_y = _split(source, data_dir, val_size, train_limit)
    return TrainData(
        len(y),
        val_x,
        val_y,
        lambda idx, gen: (random_shift(x[idx], max_shift, gen), y[idx]),
        len(val_y),
    )


def _test_plain(source: str) -> Callable[[str | Path | None, Any], tuple[Tensor, Tensor]]:
    return lambda data_dir, cfg: load_split(source, "test", data_dir)


def _train_canvas(source, data_dir, val_size, train_limit, max_shift, cfg) -> TrainData:
    x, y, val_x, val_y = _split(source, data_dir, val_size, train_limit)
    x = _pad(x, cfg.pad)
    return TrainData(
        len(y),
        _placed(val_x, cfg, cfg.seed + 1),
        val_y,
        lambda idx, gen: (random_shift(x[idx], cfg.pad, gen), y[idx]),
        len(val_y),
    )


def _test_canvas(data_dir, cfg: CanvasConfig) -> tuple[Tensor, Tensor]:
    x, y = load_split("mnist", "test", data_dir)
    return _placed(x, cfg, cfg.seed), y


def _train_multi(source, data_dir, val_size, train_limit, max_shift, cfg) -> TrainData:
    x, y, val_x, val_y = _split(source, data_dir, val_size, train_limit)
    pairs = fixed_pairs(val_x, val_y, cfg.val_pairs_per_digit, cfg, cfg.seed + 1)
    return TrainData(len(y), *pairs, lambda idx, gen: make_pairs(x, y, idx, cfg, gen), len(val_y))


def _test_multi(data_dir, cfg: MultiMNISTConfig) -> tuple[Tensor, OverlayTargets]:
    x, y = load_split("mnist", "test", data_dir)
    return fixed_pairs(x, y, cfg.test_pairs_per_digit, cfg, cfg.seed)


def _test_affine(data_dir, cfg: AffineRanges) -> tuple[Tensor, Tensor]:
    x, y = load_split("mnist", "test", data_dir)
    return random_affine(x, cfg, torch.Generator().manual_seed(cfg.seed)), y


def affnist_files(data_dir: str | Path | None = None) -> list[Path]:
    """The real affNIST ``.mat`` files: ``data_dir`` itself if it is a file, else all
    ``*.mat`` (sorted) in the first directory of the search path that has any."""
    if data_dir is not None and Path(data_dir).is_file():
        return [Path(data_dir)]
    dirs = search_path("affnist", data_dir)
    for directory in dirs:
        files = sorted(directory.glob("*.mat"))
        if files:
            return files
    raise DataError(
        f"no affNIST .mat files in {', '.join(map(str, dirs))}; download the test set from "
        "https://www.cs.toronto.edu/~tijmen/affNIST/ (e.g. transformed/test_batches) "
        "and pass --data-dir"
    )


def _test_affnist(data_dir, cfg: NoOptions) -> tuple[Tensor, Tensor]:
    parts = [load_affnist_mat(p) for p in affnist_files(data_dir)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


TASKS: dict[str, Recipe] = {
    "mnist": Recipe("mnist", NoOptions, _train_plain, _test_plain("mnist")),
    "fashion-mnist": Recipe("fashion-mnist", NoOptions, _train_plain, _test_plain("fashion-mnist")),
    "expanded-mnist": Recipe("mnist", CanvasConfig, _train_canvas, _test_canvas),
    "multimnist": Recipe("mnist", MultiMNISTConfig, _train_multi, _test_multi),
    "affnist-generated": Recipe("mnist", AffineRanges, None, _test_affine),
    "affnist": Recipe("mnist", NoOptions, None, _test_affnist),
}


def get_task(
    name: str, options: Mapping[str, Any] | None = None, data_dir: str | Path | None = None
) -> Task:
    """The Task ``name`` names, with ``options`` (checked) and ``data_dir``; ConfigError
    for an unknown name (suggesting a close one) or bad options. Reads no data."""
    return Task.create(name, _recipe(name), options, data_dir)


def _recipe(name: str) -> Recipe:
    """The registry's entry for ``name``: ``custom``'s (a new one per call), else TASKS'."""
    if (found := custom.recipe(name)) is not None:
        return found
    try:
        return TASKS[name]
    except KeyError:
        choices = sorted([*TASKS, *custom.OFFICIAL, "folder:PATH", "npz:PATH"])
        raise ConfigError(
            f"unknown dataset '{name}'{_suggestion(name, choices)}; "
            f"choose from: {', '.join(choices)}"
        ) from None


def _suggestion(name: str, choices: list[str]) -> str:
    """A close name among ``choices``, else ``folder:NAME`` for a directory or ``npz:NAME``
    for an ``.npz`` file given without its prefix, as " (did you mean …?)"; else ""."""
    if hint := did_you_mean(name, choices):
        return hint
    if Path(name).is_dir() or name.endswith(".npz"):
        return f" (did you mean {'npz' if name.endswith('.npz') else 'folder'}:{name}?)"
    return ""


def dataset_options(name: str, options: Mapping[str, Any] | None = None) -> Any:
    """The dataset's options as its config dataclass; ConfigError for unknown ones."""
    return get_task(name, options).options


def check_dataset(name: str, options: Mapping[str, Any] | None = None, train: bool = False):
    """Raise ConfigError unless ``name`` is known, its options valid, and (if ``train``)
    it can be trained on."""
    task = get_task(name, options)
    if train:
        task.check_trainable()


def task_source(name: str) -> str:
    """The raw source (a key of ``capsnet.data.sources.DATASETS``) a task's images come from."""
    return _recipe(name).source


def dataset_spec(name: str) -> DatasetSpec | Classes:
    """Class count and names (those of the IDX dataset the images come from)."""
    return get_task(name).spec


def task_class_names(name: str | None, num_classes: int) -> tuple[str, ...]:
    """The class names of task ``name`` for a model of ``num_classes`` classes (see
    ``sized_class_names``); "0", "1", … when ``name`` is None or cannot be resolved."""
    try:
        names = get_task(name).class_names if name else ()
    except CapsNetError:
        names = ()
    return sized_class_names(names, num_classes)


def load_train(
    name: str,
    data_dir: str | Path | None = None,
    *,
    val_size: int | None = None,
    train_limit: int | None = None,
    max_shift: int = 2,
    options: Mapping[str, Any] | None = None,
) -> TrainData:
    """``get_task(name, options, data_dir).load_train(...)``: see :meth:`Task.load_train`."""
    task = get_task(name, options, data_dir)
    return task.load_train(val_size=val_size, train_limit=train_limit, max_shift=max_shift)


def load_test(
    name: str,
    data_dir: str | Path | None = None,
    *,
    limit: int | None = None,
    options: Mapping[str, Any] | None = None,
) -> tuple[Tensor, Targets]:
    """The fixed test set of ``name`` (the first ``limit`` examples if given)."""
    return get_task(name, options, data_dir).load_test(limit=limit)


def run_record(name: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """What a run saves about its data: ``get_task(name, options).record()``."""
    return get_task(name, options).record()


__all__ = [
    "TASKS",
    "CanvasConfig",
    "TrainData",
    "affnist_files",
    "check_dataset",
    "check_shift",
    "dataset_options",
    "dataset_spec",
    "default_val_size",
    "get_task",
    "load_test",
    "load_train",
    "run_record",
    "split_indices",
    "task_class_names",
    "task_source",
]
