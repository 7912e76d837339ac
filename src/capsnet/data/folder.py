"""Image-folder datasets: ``ROOT/train/<class>/*.png|jpg|…`` (EXTENSIONS), optional
``ROOT/test`` and ``ROOT/val`` with the same class folders (each a subset of train's).

Class names are the sorted folder names of ``train/``; their index is the label. Each split
is decoded once, under its :class:`~capsnet.data.images.ImagePolicy`, into an uncompressed
uint8 ``.npy`` array (N, C, H, W) in the cache directory (``$CAPSNET_CACHE``, else
``$CAPSNET_DATA/cache``, else ``~/.cache/capsnet/cache``), keyed by the files' names, sizes
and modification times and the policy; later runs memory-map it instead of decoding again.
The cache needs C·H·W bytes per image on disk (50,000 RGB 32×32 images: 154 MB); training
reads batches from the memory map, so the training set need not fit in RAM, while the
validation and test sets are read into memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from capsnet import _deprecated
from capsnet.data.images import (
    ImagePolicy,
    fit_image,
    open_picture,
    picture_channels,
    read_picture,
)
from capsnet.errors import DataError
from capsnet.files import atomic_write

log = logging.getLogger(__name__)

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def cache_dir() -> Path:
    """Where decoded folder datasets are cached (see the module docstring)."""
    if os.environ.get("CAPSNET_CACHE"):
        return Path(os.environ["CAPSNET_CACHE"]).expanduser()
    if os.environ.get("CAPSNET_DATA"):
        return Path(os.environ["CAPSNET_DATA"]).expanduser() / "cache"
    return Path.home() / ".cache" / "capsnet" / "cache"


def _images_in(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix.lower() in EXTENSIONS and p.is_file())


def class_folders(root: str | Path) -> tuple[str, ...]:
    """The sorted class folder names of ``root/train``; DataError if there are none."""
    train = Path(root) / "train"
    if not train.is_dir():
        raise DataError(f"{train}: not found; expected ROOT/train/<class>/*.png|jpg|…")
    names = tuple(sorted(p.name for p in train.iterdir() if p.is_dir()))
    if not names:
        raise DataError(f"{train}: no class folders; expected {train}/<class>/*.png|jpg|…")
    return names


def list_split(root: str | Path, split: str) -> list[tuple[Path, int]] | None:
    """(file, label) of every image of ``root/split`` (None if that split is absent).

    DataError for an empty class folder or a class folder that ``train/`` does not have.
    """
    names = class_folders(root)
    directory = Path(root) / split
    if not directory.is_dir():
        return None
    items = []
    for folder in sorted(p for p in directory.iterdir() if p.is_dir()):
        if folder.name not in names:
            raise DataError(f"{folder}: class '{folder.name}' is not a folder of {root}/train")
        files = _images_in(folder)
        if not files:
            raise DataError(f"{folder}: no images ({', '.join(EXTENSIONS)}) in this class folder")
        items += [(f, names.index(folder.name)) for f in files]
    if not items:
        raise DataError(f"{directory}: no class folders with images")
    if len(names) < 2:
        raise DataError(
            f"{directory}: one class folder ({names[0]}); a classifier needs two or more"
        )
    return items


def _probe(items: list[tuple[Path, int]], policy: ImagePolicy) -> tuple[int, int, int]:
    """The (C, H, W) every image will have; DataError for mixed channels or sizes."""
    first: dict[str, tuple[int, Path]] = {}
    for path, _ in items:
        with open_picture(path) as im:
            c, (w, h) = picture_channels(im), im.size
        for key, value in (("channels", c), ("size", (h, w))):
            seen = first.setdefault(key, (value, path))
            if key == "channels" and policy.channels is None and seen[0] != value:
                kinds = {1: "greyscale", 3: "colour"}
                raise DataError(
                    f"{path}: mixed channel counts ({kinds[value]}, but {seen[1]} is "
                    f"{kinds[seen[0]]}); pass --channels 1 or 3"
                )
            if key == "size" and policy.input_size is None and seen[0] != value:
                sh, sw = seen[0]
                raise DataError(
                    f"{path}: image is {h}×{w} but {seen[1]} is {sh}×{sw}; pass "
                    "--input-size H W with --resize pad|crop|stretch"
                )
    channels = policy.channels or first["channels"][0]
    return (channels, *(policy.input_size or first["size"][0]))


def _cache_key(items: list[tuple[Path, int]], policy: ImagePolicy, shape: tuple) -> str:
    stats = [(str(p.resolve()), y, p.stat().st_size, p.stat().st_mtime_ns) for p, y in items]
    text = json.dumps([stats, dataclasses.asdict(policy), list(shape)])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _decode(items: list[tuple[Path, int]], shape: tuple[int, int, int], policy: ImagePolicy):
    images = np.empty((len(items), *shape), np.uint8)
    for i, (path, _) in enumerate(items):
        images[i] = fit_image(read_picture(path, shape[0]), policy, str(path))
    return images


def _read_cache(cached: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The cached array memory-mapped, or None if it is absent or damaged (e.g. cut off
    by a full disk): a damaged one is decoded again, with a warning."""
    if not cached.is_file():
        return None
    try:
        images = np.load(cached, mmap_mode="c")
    except (OSError, ValueError, EOFError) as e:
        log.warning("%s: damaged cache file (%s); decoding again", cached, e)
        return None
    if images.shape != shape or images.dtype != np.uint8:
        log.warning(
            "%s: cache holds %s %s, not uint8 %s; decoding again",
            cached,
            images.dtype,
            images.shape,
            shape,
        )
        return None
    return images


def load_folder_split(
    root: str | Path, split: str, policy: ImagePolicy
) -> tuple[np.ndarray, np.ndarray] | None:
    """Images uint8 (N, C, H, W) (memory-mapped from the cache) and int64 labels (N,) of
    ``root/split``, or None if the split is absent. The first call decodes and caches."""
    items = list_split(root, split)
    if items is None:
        return None
    shape = _probe(items, policy)
    cached = cache_dir() / f"folder-{_cache_key(items, policy, shape)}.npy"
    labels = np.array([y for _, y in items], np.int64)
    images = _read_cache(cached, (len(items), *shape))
    if images is None:
        log.info(
            "decoding %d images of %s/%s (once; cached in %s)", len(items), root, split, cached
        )
        images = _decode(items, shape, policy)
        cached.parent.mkdir(parents=True, exist_ok=True)

        def write(p: Path) -> None:
            with p.open("wb") as f:  # a file object: np.save would append ".npy" to a path
                np.save(f, images)

        atomic_write(cached, write)
        images = np.load(cached, mmap_mode="c")
    return images, labels


__getattr__ = _deprecated.module_getattr(
    __name__, {"class_names": ("capsnet.data.folder.class_folders", lambda: class_folders)}
)

__all__ = ["EXTENSIONS", "cache_dir", "class_folders", "list_split", "load_folder_split"]
