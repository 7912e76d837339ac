"""CIFAR-10 (Krizhevsky, 2009) from the official binary version, never the pickled one.

``cifar-10-binary.tar.gz`` (read in place, nothing extracted) or its extracted
``data_batch_1.bin`` … ``data_batch_5.bin`` and ``test_batch.bin``, found in the data search
path (``capsnet.data.sources.search_path("cifar10", data_dir)``, also below a
``cifar-10-batches-bin/`` folder) or downloaded from the authors' page and checked by MD5.
Each record is 3,073 bytes: the label (0–9), then 1,024 red, 1,024 green and 1,024 blue
pixel values of a 32×32 image, row by row.
"""

from __future__ import annotations

import logging
import tarfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from capsnet.data.sources import download_into_cache, search_path
from capsnet.errors import DataError

log = logging.getLogger(__name__)

ARCHIVE = "cifar-10-binary.tar.gz"
MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)
MEMBER_DIR = "cifar-10-batches-bin"
FILES = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
RECORD = 1 + 3 * 32 * 32
CLASS_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def parse_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One binary batch → uint8 images (N, 3, 32, 32) and int64 labels (N,).

    DataError naming ``where`` for a size that is not a whole number of records or a label
    outside 0–9."""
    if len(data) == 0 or len(data) % RECORD:
        raise DataError(
            f"{where}: {len(data)} bytes is not a whole number of {RECORD}-byte CIFAR-10 records"
        )
    records = np.frombuffer(data, np.uint8).reshape(-1, RECORD)
    labels = records[:, 0].astype(np.int64)
    bad = np.flatnonzero(labels > 9)
    if bad.size:
        raise DataError(f"{where}: label {labels[bad[0]]} out of range 0..9 (record {bad[0]})")
    return records[:, 1:].reshape(-1, 3, 32, 32).copy(), labels


def _read_members(archive: Path, names: list[str]) -> list[tuple[bytes, str]]:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            out = []
            for name in names:
                member = tar.extractfile(f"{MEMBER_DIR}/{name}")
                if member is None:
                    raise KeyError(name)
                out.append((member.read(), f"{archive}:{MEMBER_DIR}/{name}"))
            return out
    except KeyError as e:
        raise DataError(f"{archive}: no {MEMBER_DIR}/{e.args[0]} in the archive") from None
    except (OSError, tarfile.TarError, EOFError) as e:
        raise DataError(f"{archive}: not a readable .tar.gz archive ({e})") from None


def _sources(data_dir: str | Path | None) -> Path | None:
    """The first directory (or archive) of the search path holding the dataset."""
    for directory in search_path("cifar10", data_dir):
        for d in (directory, directory / MEMBER_DIR):
            if all((d / n).is_file() for n in FILES["train"] + FILES["test"]):
                return d
        if (directory / ARCHIVE).is_file():
            return directory / ARCHIVE
    return None


def load_cifar10(
    split: str, data_dir: str | Path | None = None, download: bool = True
) -> tuple[Tensor, Tensor]:
    """The ``train`` (50,000) or ``test`` (10,000) split: uint8 images (N, 3, 32, 32) and
    int64 labels (N,). Downloads the archive (MD5-checked) if it is nowhere and allowed."""
    source = _sources(data_dir)
    if source is None and download:
        source = download_into_cache("cifar10", data_dir, MIRRORS, MD5, ARCHIVE)
    if source is None:
        where = ", ".join(map(str, search_path("cifar10", data_dir)))
        raise DataError(f"CIFAR-10 ({ARCHIVE} or its .bin files) not found in {where}")
    if source.is_file():
        parts = _read_members(source, FILES[split])
    else:
        parts = [((source / n).read_bytes(), str(source / n)) for n in FILES[split]]
    batches = [parse_batch(data, where) for data, where in parts]
    log.info("loaded CIFAR-10 %s from %s", split, source)
    x, y = np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
    return torch.from_numpy(x), torch.from_numpy(y)


__all__ = ["CLASS_NAMES", "load_cifar10", "parse_batch"]
