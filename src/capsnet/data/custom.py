"""Tasks beyond the MNIST family: ``folder:PATH``, ``npz:PATH``, ``cifar10``, ``svhn``,
``smallnorb``. :func:`recipe` gives the registry (``capsnet.data.tasks``) the entry of such
a name.

| name | images | training batches | validation / test |
| --- | --- | --- | --- |
| ``folder:PATH`` | as the policy says | random shifts | ``val/`` or held out; ``test/`` |
| ``npz:PATH`` | as the policy says | random shifts (and crops) | held out; ``test_images`` |
| ``cifar10`` | 24×24 RGB | random 24×24 crops of 32×32, shifts | centre crops |
| ``svhn`` | 32×32 RGB | random shifts | as is |
| ``smallnorb`` | 32×32, 2 (stereo) | random 32×32 crops of 48×48, brightness/contrast | centre |

Every split is normalised as its options say (``normalize``: see
:mod:`capsnet.data.images`); CIFAR-10, SVHN and smallNORB are normalised per image by
default. A folder without ``test/`` is tested on ``val/``; with neither (or an ``.npz``
without ``test_images``) training stops before it starts, asking for a test split.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from capsnet import _deprecated
from capsnet.data import cifar10, smallnorb, svhn
from capsnet.data.folder import class_folders, list_split, load_folder_split
from capsnet.data.images import ImagePolicy, convert_channels, fit_image, normalize_images
from capsnet.data.npz import load_npz
from capsnet.data.sources import search_path
from capsnet.data.split import Recipe, TrainData, split_indices
from capsnet.data.task import Classes
from capsnet.data.transforms import random_shift
from capsnet.errors import ConfigError, DataError

log = logging.getLogger(__name__)

PREFIXES = ("folder:", "npz:")


@dataclass(frozen=True)
class ArrayOptions(ImagePolicy):
    """An ImagePolicy plus training augmentation."""

    random_crop: bool = False  # training: cut input_size at a random place (resize "crop")
    jitter: bool = False  # training: random brightness ±32/255 and contrast ×0.5–1.5


@dataclass(frozen=True)
class Cifar10Options(ArrayOptions):
    """CIFAR-10 as in the paper: random 24×24 patches for training, the centre for testing."""

    input_size: tuple[int, int] | None = (24, 24)  # the paper's 24×24 patches
    resize: str | None = "crop"
    normalize: str = "per-image"
    random_crop: bool = True


@dataclass(frozen=True)
class SvhnOptions(ArrayOptions):
    """SVHN: 32×32 RGB as is, normalised per image."""

    normalize: str = "per-image"


@dataclass(frozen=True)
class NorbOptions(ArrayOptions):
    """smallNORB as in the paper: random 32×32 crops of 48×48 with brightness/contrast
    jitter for training, the centre crop for testing."""

    input_size: tuple[int, int] | None = (32, 32)  # of the 48×48 downsampled images
    resize: str | None = "crop"
    normalize: str = "per-image"
    random_crop: bool = True
    jitter: bool = True


Split = tuple[np.ndarray | Tensor, np.ndarray | Tensor]


def _fitted(x: np.ndarray | Tensor, policy: ImagePolicy, where: str) -> Tensor:
    """uint8 (N, C, H, W) with the policy's channels, size and normalisation."""
    x = convert_channels(torch.as_tensor(x), policy.channels, where)
    if len(x) and policy.input_size is not None and tuple(x.shape[2:]) != policy.input_size:
        x = torch.from_numpy(np.stack([fit_image(a, policy, where) for a in x.numpy()]))
    return normalize_images(x, policy.normalize)


def _random_crop(x: Tensor, size: tuple[int, int], gen: torch.Generator) -> Tensor:
    """Each image of (B, C, H, W) cut to ``size`` at its own random place."""
    (b, _, h, w), (th, tw) = x.shape, size
    top = torch.randint(0, h - th + 1, (b, 1, 1), generator=gen)
    left = torch.randint(0, w - tw + 1, (b, 1, 1), generator=gen)
    rows = (top + torch.arange(th).view(1, th, 1)).expand(b, th, tw)  # (B, th, tw)
    cols = (left + torch.arange(tw).view(1, 1, tw)).expand(b, th, tw)
    batch = torch.arange(b).view(b, 1, 1)
    return x.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def _jitter(x: Tensor, gen: torch.Generator) -> Tensor:
    """Random brightness (±32/255) and contrast (×0.5–1.5 about the mean) per image."""
    b = len(x)
    brightness = (torch.rand(b, 1, 1, 1, generator=gen) * 2 - 1) * 32
    contrast = 0.5 + torch.rand(b, 1, 1, 1, generator=gen)
    f = x.float()
    mean = f.mean((1, 2, 3), keepdim=True)
    return ((f - mean) * contrast + mean + brightness).clamp_(0, 255).round_().to(torch.uint8)


def _train_data(train: Split, val: Split | None, cfg: ImagePolicy, where: str, args) -> TrainData:
    """TrainData from arrays: ``val``, else ``args.val_size`` held out of ``train`` (see
    ``split.split_indices``)."""
    val_size, limit, max_shift = args
    x, y = torch.as_tensor(train[0]), torch.as_tensor(train[1])  # x may be memory-mapped
    idx, held_out = torch.arange(len(y)), None
    if val is None:
        idx, val_idx = split_indices(len(y), val_size, where)
        val, held_out = (x[val_idx], y[val_idx]), len(val_idx)
    idx = idx[:limit] if limit is not None else idx
    crop = getattr(cfg, "random_crop", False) and cfg.resize == "crop"
    jitter = getattr(cfg, "jitter", False)

    def make_batch(i: Tensor, gen: torch.Generator):
        xb = convert_channels(x[idx[i]], cfg.channels, where)
        if crop and tuple(xb.shape[2:]) != cfg.input_size:
            xb = _random_crop(xb, cfg.input_size, gen)
        else:
            xb = _fitted(xb, dataclasses.replace(cfg, normalize="none"), where)
        xb = normalize_images(xb, cfg.normalize)
        xb = _jitter(xb, gen) if jitter else xb
        return random_shift(xb, max_shift, gen), y[idx[i]]

    val_x, val_y = _fitted(val[0], cfg, where), torch.as_tensor(val[1])
    return TrainData(len(idx), val_x, val_y, make_batch, held_out)


def _no_test(where: str) -> DataError:
    return DataError(f"{where}: no test split (a test/ or val/ folder, or test_images); add one")


# --- folder: and npz: ------------------------------------------------------------------


def _train_folder(root, _source, _dir, val_size, limit, max_shift, cfg) -> TrainData:
    train = load_folder_split(root, "train", cfg)
    val = load_folder_split(root, "val", cfg)
    if val is None and list_split(root, "test") is None:
        raise _no_test(root)  # before training, not after it
    return _train_data(train, val, cfg, root, (val_size, limit, max_shift))


def _test_folder(root, _dir, cfg) -> Split:
    test = load_folder_split(root, "test", cfg)
    if test is None:
        log.warning("%s has no test/ folder: testing on val/", root)
        test = load_folder_split(root, "val", cfg)
    if test is None:
        raise _no_test(root)
    return _fitted(test[0], cfg, root), torch.as_tensor(test[1])


class Archive:
    """An ``.npz`` file, read and validated (``load_npz``) on first use, then kept: one
    per Task, so that a run reads its archive once."""

    def __init__(self, path: str) -> None:
        self.path = path

    @cached_property
    def contents(self) -> dict[str, Any]:
        """``load_npz`` of the file, on first use (DataError if it is not a valid archive)."""
        return load_npz(Path(self.path))


def _train_npz(archive: Archive, _source, _dir, val_size, limit, max_shift, cfg) -> TrainData:
    data, path = archive.contents, archive.path
    if data["test"] is None:
        raise _no_test(path)
    return _train_data(data["train"], None, cfg, path, (val_size, limit, max_shift))


def _test_npz(archive: Archive, _dir, cfg) -> Split:
    test = archive.contents["test"]
    if test is None:
        raise _no_test(archive.path)
    return _fitted(test[0], cfg, archive.path), torch.as_tensor(test[1])


# --- the official datasets -------------------------------------------------------------


def _official(load, name: str):
    """Train and test functions of a dataset whose loader is ``load(split, data_dir)``."""

    def train(_source, data_dir, val_size, limit, max_shift, cfg) -> TrainData:
        return _train_data(load("train", data_dir), None, cfg, name, (val_size, limit, max_shift))

    def test(data_dir, cfg) -> Split:
        x, y = load("test", data_dir)
        return _fitted(x, cfg, name), y

    return train, test


def load_smallnorb48(split: str, data_dir: str | Path | None = None) -> Split:
    """smallNORB from the first search-path directory holding it, downsampled from 96×96
    to the paper's 48×48 by averaging 2×2 blocks: uint8 (N, 2, 48, 48), int64 labels (N,)."""
    dirs = search_path("smallnorb", data_dir)
    pattern = f"{smallnorb.PREFIX[split]}-dat.mat*"
    directory = next((d for d in dirs if d.is_dir() and any(d.glob(pattern))), None)
    if directory is None:
        raise DataError(f"smallNORB {split} files not found in {', '.join(map(str, dirs))}")
    x, y = smallnorb.load_smallnorb(split, directory)
    n, c, h, w = x.shape
    if h % 2 or w % 2:
        raise DataError(f"{directory}: smallNORB images are {h}×{w}, expected even sizes")
    small = torch.cat(
        [
            part.view(-1, c, h // 2, 2, w // 2, 2).float().mean((3, 5)).round().to(torch.uint8)
            for part in x.split(1000)  # (B, C, H/2, 2, W/2, 2) blocks, in chunks
        ]
    )
    return small, y


OFFICIAL = {
    "cifar10": (cifar10.load_cifar10, Cifar10Options, cifar10.CLASS_NAMES),
    "svhn": (svhn.load_svhn, SvhnOptions, svhn.CLASS_NAMES),
    "smallnorb": (load_smallnorb48, NorbOptions, smallnorb.CLASS_NAMES),
}


def recipe(name: str) -> Recipe | None:
    """The recipe of ``name`` if it is one of this module's tasks, else None. Each call
    makes a new one: an ``npz:`` recipe holds its own :class:`Archive`."""
    if name in OFFICIAL:
        load, options, names = OFFICIAL[name]
        return Recipe(name, options, *_official(load, name), classes=lambda: names)
    prefix, sep, path = name.partition(":")
    if not sep or f"{prefix}:" not in PREFIXES:
        return None
    if not path:
        raise ConfigError(f"'{name}': give a path after '{prefix}:'")
    if prefix == "folder":
        train, test = partial(_train_folder, path), partial(_test_folder, path)
        return Recipe(name, ImagePolicy, train, test, classes=partial(class_folders, path))
    archive = Archive(path)
    train, test = partial(_train_npz, archive), partial(_test_npz, archive)
    return Recipe(name, ArrayOptions, train, test, classes=lambda: archive.contents["class_names"])


def absolute_path(path: str) -> str:
    """``path`` with ``~`` expanded, made absolute against the current directory (``..``
    removed, symbolic links kept)."""
    return os.path.abspath(os.path.expanduser(path))


def absolute_task(name: str) -> str:
    """``name`` with the path of a ``folder:PATH`` or ``npz:PATH`` task made absolute
    (:func:`absolute_path`); any other name as it is."""
    prefix, sep, path = name.partition(":")
    if not sep or f"{prefix}:" not in PREFIXES or not path:
        return name
    return f"{prefix}:{absolute_path(path)}"


def saved_policy(record: Mapping[str, Any] | None) -> ImagePolicy | None:
    """The ImagePolicy of a run's ``data`` record (None if it has none)."""
    saved = (record or {}).get("image_policy")
    return ImagePolicy(**saved) if saved else None


def _classes(name: str) -> Classes | None:
    """The classes of ``name`` if it is one of this module's tasks, else None."""
    found = recipe(name)
    return None if found is None else Classes(name, len(names := found.classes()), names)


def _class_names(name: str) -> tuple[str, ...] | None:
    """The class names of ``name`` if it is one of this module's tasks, else None."""
    found = recipe(name)
    return None if found is None else found.classes()


__getattr__ = _deprecated.module_getattr(
    __name__,
    {
        "task": ("capsnet.data.custom.recipe", lambda: recipe),
        "classes": ("capsnet.data.tasks.get_task(name).spec", lambda: _classes),
        "class_names": ("capsnet.data.tasks.get_task(name).class_names", lambda: _class_names),
    },
)

__all__ = [
    "OFFICIAL",
    "Archive",
    "ArrayOptions",
    "Classes",
    "Cifar10Options",
    "absolute_path",
    "absolute_task",
    "recipe",
    "saved_policy",
]
