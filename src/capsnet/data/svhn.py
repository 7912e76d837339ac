"""SVHN (Netzer et al., 2011) from the official format-2 (cropped digits) ``.mat`` files.

``train_32x32.mat`` and ``test_32x32.mat`` are found in the data search path
(``search_path("svhn", data_dir)``) or downloaded from the authors' page and checked by MD5.
Each holds ``X`` uint8 (32, 32, 3, N) and ``y`` (N, 1) with labels 1–10, where 10 is the
digit 0; they are read with ``scipy.io.loadmat`` (``pip install capsnet[svhn]``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from capsnet.data.sources import download_into_cache, search_path
from capsnet.errors import DataError

log = logging.getLogger(__name__)

FILES = {  # file name, MD5 (as torchvision.datasets.SVHN checks them)
    "train": ("train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
    "test": ("test_32x32.mat", "eb5a983be6a315427106f1b69d1d4f1a"),
}
MIRRORS = ("http://ufldl.stanford.edu/housenumbers/",)
CLASS_NAMES = tuple(str(d) for d in range(10))


def read_svhn_mat(path: str | Path) -> tuple[Tensor, Tensor]:
    """One format-2 file → uint8 images (N, 3, 32, 32) and int64 labels (N,) in 0–9."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DataError("reading SVHN needs scipy: pip install 'capsnet[svhn]'") from None
    path = Path(path)
    try:
        mat = loadmat(path, variable_names=["X", "y"])
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as e:  # scipy raises many types (even IndexError) for a malformed file
        raise DataError(f"{path}: not a readable MATLAB file ({e})") from None
    if "X" not in mat or "y" not in mat:
        raise DataError(f"{path}: expected variables X and y (SVHN format 2)")
    x, y = mat["X"], mat["y"].reshape(-1)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[2] != 3:
        raise DataError(f"{path}: X must be uint8 (H, W, 3, N), got {x.dtype} {x.shape}")
    if len(y) != x.shape[3]:
        raise DataError(f"{path}: {len(y)} labels for {x.shape[3]} images")
    if len(y) and (y.min() < 1 or y.max() > 10):
        raise DataError(f"{path}: labels must lie in 1..10 (10 is the digit 0)")
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))  # (N, 3, H, W)
    return torch.from_numpy(images), torch.from_numpy(y.astype(np.int64) % 10)


def load_svhn(
    split: str, data_dir: str | Path | None = None, download: bool = True
) -> tuple[Tensor, Tensor]:
    """The ``train`` (73,257) or ``test`` (26,032) split (see :func:`read_svhn_mat`)."""
    name, md5 = FILES[split]
    dirs = search_path("svhn", data_dir)
    path = next((d / name for d in dirs if (d / name).is_file()), None)
    if path is None and download:
        path = download_into_cache("svhn", data_dir, MIRRORS, md5, name)
    if path is None:
        raise DataError(f"SVHN {name} not found in {', '.join(map(str, dirs))}")
    log.info("loading SVHN %s from %s", split, path)
    return read_svhn_mat(path)


__all__ = ["CLASS_NAMES", "load_svhn", "read_svhn_mat"]
