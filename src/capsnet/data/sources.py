"""Raw sources: the MNIST-like IDX datasets (``DATASETS``): where their files live, how to
download them, how to load a split. What ``--dataset`` means (a task built from a source,
or a folder, array or official archive) is :mod:`capsnet.data.tasks`.

Local files are accepted on their structure (magic numbers, shapes, counts, label range);
MD5 checksums are enforced only for files this module downloads itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from capsnet.data.idx import read_idx
from capsnet.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

FILE_KEYS = ("train_images", "train_labels", "test_images", "test_labels")
DOWNLOAD_TIMEOUT = 30.0  # seconds per connection attempt or read
SYSTEM_DATA_DIR = Path("/usr/share/datasets")
_SAID: set[str] = set()  # the "found" and "loaded" lines logged at INFO so far (_say_once)


def _say_once(message: str, *args: object) -> None:
    """Log at INFO the first time this process says it, at DEBUG after: a ``train``
    command finds its dataset for each split and reads the test set twice (its test, and
    its figures)."""
    text = message % args
    logger.log(logging.DEBUG if text in _SAID else logging.INFO, text)
    _SAID.add(text)


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset of four IDX files: (N, H, W) ubyte images and (N,) ubyte labels per split.

    ``files`` maps each of FILE_KEYS to (file name without ".gz", MD5 of the official .gz);
    ``mirrors`` are base URLs (ending in "/") tried in order when downloading.
    """

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    files: Mapping[str, tuple[str, str]]
    mirrors: tuple[str, ...]

    def __post_init__(self) -> None:
        if sorted(self.files) != sorted(FILE_KEYS):
            raise ConfigError(f"dataset '{self.name}': files must have keys {', '.join(FILE_KEYS)}")
        if len(self.class_names) != self.num_classes:
            raise ConfigError(
                f"dataset '{self.name}': {len(self.class_names)} class names "
                f"for {self.num_classes} classes"
            )


def _idx_files(md5s: tuple[str, str, str, str]) -> dict[str, tuple[str, str]]:
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
    names += ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    return {key: (name, md5) for key, name, md5 in zip(FILE_KEYS, names, md5s, strict=True)}


# Checksums and mirrors as in torchvision.datasets.MNIST / FashionMNIST.
DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        num_classes=10,
        class_names=tuple(str(digit) for digit in range(10)),
        files=_idx_files(
            (
                "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "d53e105ee54ea40749a09fcbcd1e9432",
                "9fb629c4189551a2d022fa330f9573f3",
                "ec29112dd5afa0611ce80d1b7f02629c",
            )
        ),
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        num_classes=10,
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        files=_idx_files(
            (
                "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "25c81989df183df01b3e8a0aad5dffbe",
                "bef4ecab320f06d8554ea6380940ec79",
                "bb300cfdad3c16e7a12a480ee83cd310",
            )
        ),
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    ),
}


def get_spec(name: str) -> DatasetSpec:
    """The spec of a known dataset; ConfigError for an unknown name."""
    try:
        return DATASETS[name]
    except KeyError:
        choices = ", ".join(sorted(DATASETS))
        raise ConfigError(f"unknown dataset '{name}'; choose from: {choices}") from None


def _as_spec(dataset: str | DatasetSpec) -> DatasetSpec:
    return dataset if isinstance(dataset, DatasetSpec) else get_spec(dataset)


def search_path(name: str, data_dir: str | Path | None = None) -> list[Path]:
    """Directories searched for a dataset's files, in order.

    ``data_dir`` and ``data_dir/<name>`` (if given), ``$CAPSNET_DATA/<name>`` (if set),
    ``~/.cache/capsnet/<name>``, ``/usr/share/datasets/<name>``.
    """
    dirs = []
    if data_dir is not None:
        data_dir = Path(data_dir).expanduser()
        dirs += [data_dir, data_dir / name]
    if os.environ.get("CAPSNET_DATA"):
        dirs.append(Path(os.environ["CAPSNET_DATA"]).expanduser() / name)
    dirs += [Path.home() / ".cache" / "capsnet" / name, SYSTEM_DATA_DIR / name]
    return dirs


def _download_dir(name: str, data_dir: str | Path | None) -> Path:
    """Where a download goes: the first of search_path's own directories for this dataset."""
    if data_dir is not None:
        return Path(data_dir).expanduser() / name
    if os.environ.get("CAPSNET_DATA"):
        return Path(os.environ["CAPSNET_DATA"]).expanduser() / name
    return Path.home() / ".cache" / "capsnet" / name


def download_into_cache(
    name: str, data_dir: str | Path | None, mirrors: tuple[str, ...], md5: str, filename: str
) -> Path:
    """Download ``filename`` (MD5-checked, from the first mirror that works) into the
    dataset's download directory (see :func:`find_dataset`); returns its path."""
    directory = _download_dir(name, data_dir)
    with _new_directory(directory):
        _download_file(mirrors, md5, directory / filename)
    return directory / filename


@contextlib.contextmanager
def _new_directory(directory: Path) -> Iterator[None]:
    """Make ``directory`` (with its parents) for a download; if the download fails, remove
    the directories this made that are still empty (deepest first)."""
    created = [p for p in (directory, *directory.parents) if not p.exists()]
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{directory}: cannot create directory ({e.strerror or e})") from None
    try:
        yield
    except BaseException:
        for p in created:
            if p.is_dir() and not any(p.iterdir()):
                p.rmdir()
        raise


def _locate(directory: Path, filename: str) -> Path:
    """``directory/filename.gz`` if it exists, else ``directory/filename`` (raw, maybe absent)."""
    gz = directory / f"{filename}.gz"
    return gz if gz.is_file() else directory / filename


def _has_dataset(directory: Path, spec: DatasetSpec) -> bool:
    return all(_locate(directory, filename).is_file() for filename, _ in spec.files.values())


def find_dataset(
    dataset: str | DatasetSpec, data_dir: str | Path | None = None, download: bool = True
) -> Path:
    """The first directory of search_path holding all four files of the dataset.

    If none does and ``download`` is true, downloads them into ``data_dir/<name>``, else
    ``$CAPSNET_DATA/<name>``, else ``~/.cache/capsnet/<name>``. Raises DataError if that fails.
    """
    spec = _as_spec(dataset)
    dirs = search_path(spec.name, data_dir)
    for directory in dirs:
        if _has_dataset(directory, spec):
            _say_once("dataset '%s' found in %s", spec.name, directory)
            return directory
    reason = "download is disabled"
    if download:
        try:
            return download_dataset(spec, _download_dir(spec.name, data_dir))
        except DataError as e:
            reason = f"download failed ({e})"
    files = ", ".join(f"{filename}.gz" for filename, _ in spec.files.values())
    raise DataError(
        f"dataset '{spec.name}' not found in {', '.join(map(str, dirs))} and {reason}; "
        f"put the four IDX files ({files}) in one of these directories or pass --data-dir"
    )


def download_dataset(dataset: str | DatasetSpec, directory: str | Path) -> Path:
    """Download the dataset's missing files into ``directory``, verifying each file's MD5.

    Mirrors are tried in order for each file; a file is written under a temporary name and
    renamed into place only once its checksum matches, so no unverified file is ever kept.
    Files already present (raw or .gz) are left alone. Returns ``directory``.
    """
    spec = _as_spec(dataset)
    directory = Path(directory)
    with _new_directory(directory):
        for filename, md5 in spec.files.values():
            if not _locate(directory, filename).is_file():
                _download_file(spec.mirrors, md5, directory / f"{filename}.gz")
    logger.info("dataset '%s' downloaded into %s", spec.name, directory)
    return directory


def _download_file(mirrors: tuple[str, ...], md5: str, dest: Path) -> None:
    """Fetch ``dest.name`` from the first mirror that serves it with the right MD5."""
    errors = []
    for mirror in mirrors:
        url = mirror + dest.name
        logger.info("downloading %s", url)
        try:
            _fetch(url, md5, dest)
            return
        except (DataError, OSError, ValueError, HTTPException) as e:
            logger.info("%s: %s", url, e)  # the error raised below names every failure
            errors.append(f"{url}: {e}")
    raise DataError(f"{dest}: {'; '.join(errors) or 'no mirrors'}")


def _fetch(url: str, md5: str, dest: Path) -> None:
    """Download ``url`` to a temporary file next to ``dest``; rename it if its MD5 matches."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as r:
            while chunk := r.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != md5:
            raise DataError(f"checksum mismatch: md5 {digest.hexdigest()}, expected {md5}")
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _check_array(array: np.ndarray, ndim: int, path: Path, what: str) -> None:
    if array.dtype != np.uint8 or array.ndim != ndim:
        raise DataError(
            f"{path}: expected {what} as {ndim}-D IDX ubyte data (magic 0x{0x800 + ndim:08X}), "
            f"found {array.ndim}-D {array.dtype}"
        )


def load_split(
    dataset: str | DatasetSpec,
    split: Literal["train", "test"],
    data_dir: str | Path | None = None,
    download: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split: images uint8 (N, 1, H, W) and labels int64 (N,) in [0, num_classes).

    The directory is found (or downloaded) by find_dataset. Raises DataError naming the
    file if the images are not 3-D ubyte, the labels not 1-D ubyte, their counts differ
    or a label is out of range.
    """
    spec = _as_spec(dataset)
    if split not in ("train", "test"):
        raise ConfigError(f"unknown split '{split}'; choose from: test, train")
    directory = find_dataset(spec, data_dir, download)
    images, labels = _read_split(spec, directory, split)
    n, height, width = images.shape
    _say_once(
        "loaded %s %s: %d images of %dx%d from %s", spec.name, split, n, height, width, directory
    )
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).long()


def verify_dataset(
    dataset: str | DatasetSpec, data_dir: str | Path | None = None, download: bool = True
) -> Path:
    """find_dataset, then every file read and checked as load_split does (and both splits
    of one image size): DataError naming the first bad file. Returns the directory."""
    spec = _as_spec(dataset)
    directory = find_dataset(spec, data_dir, download)
    train, test = (_read_split(spec, directory, split)[0] for split in ("train", "test"))
    if train.shape[1:] != test.shape[1:]:
        path = _locate(directory, spec.files["test_images"][0])
        size = "×".join(map(str, train.shape[1:]))
        raise DataError(f"{path}: images of {'×'.join(map(str, test.shape[1:]))}, not {size}")
    return directory


def _read_split(spec: DatasetSpec, directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W) and labels (N,) of a split, checked (see load_split)."""
    images_path = _locate(directory, spec.files[f"{split}_images"][0])
    labels_path = _locate(directory, spec.files[f"{split}_labels"][0])
    images, labels = read_idx(images_path), read_idx(labels_path)
    _check_array(images, 3, images_path, "images")
    _check_array(labels, 1, labels_path, "labels")
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels"
        )
    bad = np.flatnonzero(labels >= spec.num_classes)
    if bad.size:
        raise DataError(
            f"{labels_path}: label {labels[bad[0]]} out of range 0..{spec.num_classes - 1} "
            f"(item {bad[0]})"
        )
    return images, labels
