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
"""

from __future__ import annotations

import dataclasses
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
from capsnet.data.images import ImagePolicy
from capsnet.data.multimnist import MultiMNISTConfig, fixed_pairs, make_pairs
from capsnet.data.sources import DatasetSpec, get_spec, load_split, search_path
from capsnet.data.split import Task, TrainData, default_val_size, split_indices
from capsnet.data.transforms import random_shift
from capsnet.errors import ConfigError, DataError, did_you_mean
from capsnet.targets import OverlayTargets, Targets
from capsnet.typecheck import check_field_types

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


TASKS: dict[str, Task] = {
    "mnist": Task("mnist", NoOptions, _train_plain, _test_plain("mnist")),
    "fashion-mnist": Task("fashion-mnist", NoOptions, _train_plain, _test_plain("fashion-mnist")),
    "expanded-mnist": Task("mnist", CanvasConfig, _train_canvas, _test_canvas),
    "multimnist": Task("mnist", MultiMNISTConfig, _train_multi, _test_multi),
    "affnist-generated": Task("mnist", AffineRanges, None, _test_affine),
    "affnist": Task("mnist", NoOptions, None, _test_affnist),
}


def _task(name: str) -> Task:
    if (task := custom.task(name)) is not None:
        return task
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
    cls = _task(name).options
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


def check_dataset(name: str, options: Mapping[str, Any] | None = None, train: bool = False):
    """Raise ConfigError unless ``name`` is known, its options valid, and (if ``train``)
    it can be trained on."""
    dataset_options(name, options)
    if train and _task(name).train is None:
        raise ConfigError(f"'{name}' is a test set only; train on expanded-mnist for affNIST")


def task_source(name: str) -> str:
    """The raw source (a key of ``capsnet.data.sources.DATASETS``) a task's images come from."""
    return _task(name).source


def dataset_spec(name: str) -> DatasetSpec:
    """Class count and names (those of the IDX dataset the images come from)."""
    return custom.classes(name) or get_spec(_task(name).source)


def load_train(
    name: str,
    data_dir: str | Path | None = None,
    *,
    val_size: int | None = None,
    train_limit: int | None = None,
    max_shift: int = 2,
    options: Mapping[str, Any] | None = None,
) -> TrainData:
    """Training data of ``name``: the first ``train_limit`` of the training split after
    holding out ``val_size`` examples (a fixed permutation, seed 0) for validation (None:
    :func:`default_val_size`; a folder with ``val/`` validates on that instead).
    ``max_shift`` is the augmentation of ``mnist`` and ``fashion-mnist`` only: the other
    datasets place their digits as their options say."""
    check_dataset(name, options, train=True)
    task = _task(name)
    data = task.train(
        task.source, data_dir, val_size, train_limit, max_shift, dataset_options(name, options)
    )
    check_shift(max_shift, data.image_shape[1:])
    return data


def check_shift(max_shift: int, size: tuple[int, ...]) -> None:
    """ConfigError if shifts of up to ±``max_shift`` pixels could move an image of
    ``size`` (H, W) by half its side or more: little or nothing of it would be left."""
    limit = (min(size) - 1) // 2
    if max_shift > limit:
        raise ConfigError(
            f"max_shift {max_shift} moves the {'×'.join(map(str, size))} images by half their "
            f"side or more; use at most {limit}"
        )


def load_test(
    name: str,
    data_dir: str | Path | None = None,
    *,
    limit: int | None = None,
    options: Mapping[str, Any] | None = None,
) -> tuple[Tensor, Targets]:
    """The fixed test set of ``name`` (the first ``limit`` examples if given)."""
    x, y = _task(name).test(data_dir, dataset_options(name, options))
    return (x, y) if limit is None else (x[:limit], y[:limit])


def run_record(name: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """What a run saves about its data (``config.json`` ``data``): class names and, for
    tasks that have one, the image policy predict and explore apply to new images."""
    policy = dataset_options(name, options)
    return {
        "class_names": list(dataset_spec(name).class_names),
        "image_policy": (
            {f.name: getattr(policy, f.name) for f in dataclasses.fields(ImagePolicy)}
            if isinstance(policy, ImagePolicy)
            else None
        ),
    }


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
    "load_test",
    "load_train",
    "run_record",
    "split_indices",
    "task_source",
]
