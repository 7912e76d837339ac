"""Array datasets in one ``.npz`` file.

Arrays: ``images`` (N, H, W), (N, H, W, C) or (N, C, H, W) with C in 1..4, uint8 (0–255)
or float (0–1); ``labels`` (N,) integers in 0..K-1; optional ``test_images`` and
``test_labels`` (both or neither) and ``class_names`` (K,) strings. Without class names
K is the largest label + 1. The file is read without pickle.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from capsnet.errors import DataError


def _open(path: Path) -> dict[str, np.ndarray]:
    try:
        with path.open("rb") as fh:
            f = np.load(fh, allow_pickle=False)
            if not isinstance(f, np.lib.npyio.NpzFile):  # a .npy: one array, no names
                raise DataError(f"{path}: a single .npy array, not an .npz of named arrays")
            with f:
                return {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from None


def _as_nchw(a: np.ndarray, path: Path, key: str) -> np.ndarray:
    """uint8 (N, C, H, W) from the accepted layouts and dtypes."""
    if a.ndim == 3:
        a = a[:, None]
    elif a.ndim == 4 and 1 <= a.shape[-1] <= 4:
        a = a.transpose(0, 3, 1, 2)
    elif a.ndim != 4 or not 1 <= a.shape[1] <= 4:
        raise DataError(
            f"{path}: '{key}' has shape {a.shape}; expected (N, H, W), (N, H, W, C) or "
            "(N, C, H, W) with C in 1..4"
        )
    if len(a) == 0:
        raise DataError(f"{path}: '{key}' holds no images")
    if 0 in a.shape[2:]:
        raise DataError(f"{path}: '{key}' images are {a.shape[2]}×{a.shape[3]} pixels")
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype.kind != "f":
        raise DataError(f"{path}: '{key}' must be uint8 (0–255) or float (0–1), not {a.dtype}")
    if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
        raise DataError(f"{path}: '{key}' float values must be finite and lie in [0, 1]")
    return np.ascontiguousarray((a * 255).round().astype(np.uint8))


def _labels(a: np.ndarray, n: int, k: int | None, path: Path, key: str) -> np.ndarray:
    if a.ndim != 1 or a.dtype.kind not in "iu":
        raise DataError(f"{path}: '{key}' must be 1-D integers, got {a.dtype} {a.shape}")
    if len(a) != n:
        raise DataError(f"{path}: '{key}' holds {len(a)} labels for {n} images")
    out = (a < 0) | (a >= (np.inf if k is None else k))
    if out.any():
        bad = int(np.flatnonzero(out)[0])
        allowed = "must be ≥ 0" if k is None else f"out of range 0..{k - 1}"
        raise DataError(f"{path}: '{key}' label {a[bad]} (item {bad}) {allowed}")
    return a.astype(np.int64)


def _numbered_classes(
    labels: np.ndarray, test_labels: np.ndarray | None, path: Path
) -> tuple[str, ...]:
    """Class names "0".."K-1" for labels without ``class_names``: K is the largest label + 1,
    and every class must occur among the training labels (DataError otherwise, so that
    labels counted from 1 or a stray huge label are not taken for empty classes)."""
    k = 1 + int(max(labels.max(), -1 if test_labels is None else test_labels.max()))
    missing = np.setdiff1d(np.arange(min(k, len(labels) + 1)), labels)  # K > N: a gap within 0..N
    if len(missing):
        raise DataError(
            f"{path}: labels run up to {k - 1} but class {missing[0]} has no training images; "
            "number the classes 0..K-1, or give 'class_names'"
        )
    return tuple(str(i) for i in range(k))


def load_npz(path: str | Path) -> dict[str, object]:
    """The validated contents: ``train`` and ``test`` (None if absent) as (uint8 images
    (N, C, H, W), int64 labels (N,)), and ``class_names`` (a tuple of K strings)."""
    path = Path(path)
    arrays = _open(path)
    for key in ("images", "labels"):
        if key not in arrays:
            raise DataError(f"{path}: no '{key}' array (has: {', '.join(sorted(arrays)) or '-'})")
    if ("test_images" in arrays) != ("test_labels" in arrays):
        raise DataError(f"{path}: 'test_images' and 'test_labels' must come together")
    names = None
    if "class_names" in arrays:
        if arrays["class_names"].ndim != 1 or arrays["class_names"].dtype.kind != "U":
            raise DataError(f"{path}: 'class_names' must be a 1-D array of strings")
        names = tuple(str(s) for s in arrays["class_names"])
        if not names:
            raise DataError(f"{path}: 'class_names' is empty")
    k = len(names) if names is not None else None
    splits: dict[str, object] = {"test": None}
    for split, prefix in (("train", ""), ("test", "test_")):
        if f"{prefix}images" in arrays:
            x = _as_nchw(arrays[f"{prefix}images"], path, f"{prefix}images")
            y = _labels(arrays[f"{prefix}labels"], len(x), k, path, f"{prefix}labels")
            splits[split] = (x, y)
    train, test = splits["train"], splits["test"]
    if test is not None and test[0].shape[1:] != train[0].shape[1:]:
        raise DataError(
            f"{path}: test images are {test[0].shape[1:]} but train images {train[0].shape[1:]}"
        )
    if names is None:
        names = _numbered_classes(train[1], None if test is None else test[1], path)
    if len(names) < 2:
        raise DataError(f"{path}: one class ({names[0]}); a classifier needs two or more")
    return {"train": train, "test": test, "class_names": names}


__all__ = ["load_npz"]
