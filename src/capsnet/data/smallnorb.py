"""smallNORB (LeCun, Huang & Bottou, 2004) from the official binary-matrix files.

The data is not downloaded: get the six files from
https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/ (raw or ``.gz``) and pass their directory.

Binary-matrix format: a header of int32 little-endian words, ``magic``, ``ndim``, then
``max(ndim, 3)`` dimensions (unused ones are 1), followed by the row-major data.
Magic 0x1E3D4C55 is a ubyte matrix, 0x1E3D4C54 an int32 matrix. The files:

* ``…-dat.mat``: ubyte (N, 2, 96, 96), the stereo pair of each image;
* ``…-cat.mat``: int32 (N,), the category 0-4 (animal, human, airplane, truck, car);
* ``…-info.mat``: int32 (N, 4), instance, elevation, azimuth, lighting (not read here).

N = 24,300 per split.
"""

from __future__ import annotations

from math import prod
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from capsnet.data.idx import _read_bytes
from capsnet.errors import DataError

NORB_DTYPES = {0x1E3D4C55: np.dtype("<u1"), 0x1E3D4C54: np.dtype("<i4")}
PREFIX = {
    "train": "smallnorb-5x46789x9x18x6x2x96x96-training",
    "test": "smallnorb-5x01235x9x18x6x2x96x96-testing",
}
CLASS_NAMES = ("animal", "human", "airplane", "truck", "car")


def read_norb_matrix(path: str | Path) -> np.ndarray:
    """Read one binary-matrix file (raw or gzip-compressed) into an array of its shape.

    Raises DataError naming the file if it is missing, unreadable, of an unknown type,
    or its size does not match its header.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 20:
        raise DataError(f"{path}: truncated: {len(data)} bytes, too short for a header")
    magic, ndim = (int.from_bytes(data[i : i + 4], "little") for i in (0, 4))
    if magic not in NORB_DTYPES:
        raise DataError(f"{path}: bad magic number 0x{magic:08X}, not a NORB ubyte/int32 matrix")
    if not 1 <= ndim <= 8:
        raise DataError(f"{path}: unsupported rank {ndim}, expected 1..8")
    header = 8 + 4 * max(ndim, 3)
    if len(data) < header:
        raise DataError(f"{path}: truncated: expected a {header}-byte header, found {len(data)}")
    shape = tuple(int.from_bytes(data[i : i + 4], "little") for i in range(8, 8 + 4 * ndim, 4))
    dtype = NORB_DTYPES[magic]
    expected, found = prod(shape) * dtype.itemsize, len(data) - header
    if found != expected:
        raise DataError(
            f"{path}: {found} bytes of data, expected {expected} for shape "
            f"{' x '.join(map(str, shape))}"
        )
    return (
        np.frombuffer(data, dtype=dtype, offset=header)
        .reshape(shape)
        .astype(dtype.newbyteorder("="))
    )


def _find(data_dir: Path, name: str) -> Path:
    for candidate in (data_dir / name, data_dir / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"{data_dir / name}: file not found (nor .gz); smallNORB is not downloaded")


def load_smallnorb(split: str, data_dir: str | Path) -> tuple[Tensor, Tensor]:
    """The ``train`` or ``test`` split: uint8 images (N, 2, 96, 96) and int64 labels (N,).

    The images and labels are checked against each other: N stereo pairs of equal-sized
    images and N categories in 0-4.
    """
    if split not in PREFIX:
        raise DataError(f"smallNORB split must be 'train' or 'test', got '{split}'")
    data_dir = Path(data_dir)
    dat_path = _find(data_dir, f"{PREFIX[split]}-dat.mat")
    cat_path = _find(data_dir, f"{PREFIX[split]}-cat.mat")
    images, labels = read_norb_matrix(dat_path), read_norb_matrix(cat_path)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 2:
        raise DataError(
            f"{dat_path}: expected ubyte stereo images (N, 2, H, W), got "
            f"{images.dtype} {images.shape}"
        )
    if labels.dtype != np.int32 or labels.ndim != 1:
        raise DataError(
            f"{cat_path}: expected int32 categories (N,), got {labels.dtype} {labels.shape}"
        )
    if len(labels) != len(images):
        raise DataError(f"{cat_path}: {len(labels)} categories for {len(images)} images")
    if len(labels) and not 0 <= labels.min() <= labels.max() < len(CLASS_NAMES):
        raise DataError(f"{cat_path}: categories outside 0..{len(CLASS_NAMES) - 1}")
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


__all__ = ["CLASS_NAMES", "load_smallnorb", "read_norb_matrix"]
