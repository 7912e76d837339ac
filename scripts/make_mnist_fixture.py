"""Write the MNIST test fixture (tests/data/mnist-subset) from the official t10k files.

Usage: python scripts/make_mnist_fixture.py ../shared/data/mnist tests/data/mnist-subset

The 10,000 official test images are permuted with numpy's default_rng(20261125); the first
3,000 become the fixture's "train" split and the next 1,000 its "test" split (disjoint).
Written as gzipped IDX files under MNIST's own file names (mtime 0, so the bytes are
reproducible), so capsnet finds the directory as dataset ``mnist`` with ``--data-dir``.
"""

from __future__ import annotations

import gzip
import struct
import sys
from pathlib import Path

import numpy as np

SEED, TRAIN, TEST = 20261125, 3000, 1000


def read_idx(path: Path) -> np.ndarray:
    data = gzip.decompress(path.read_bytes())
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
        f.write(header + array.tobytes())


def main(source: Path, out: Path) -> None:
    images = read_idx(source / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(source / "t10k-labels-idx1-ubyte.gz")
    order = np.random.default_rng(SEED).permutation(len(images))
    parts = {"train": order[:TRAIN], "t10k": order[TRAIN : TRAIN + TEST]}
    out.mkdir(parents=True, exist_ok=True)
    for prefix, idx in parts.items():
        write_idx(out / f"{prefix}-images-idx3-ubyte.gz", images[idx])
        write_idx(out / f"{prefix}-labels-idx1-ubyte.gz", labels[idx])


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
