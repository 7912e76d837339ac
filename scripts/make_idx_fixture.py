"""Write an IDX test fixture (tests/data/mnist-subset, …) from official t10k files.

Usage: python scripts/make_idx_fixture.py SOURCE_DIR OUT_DIR [--train N] [--test M]
  MNIST:         ../shared/data/mnist tests/data/mnist-subset  (--train 3000 --test 1000)
  Fashion-MNIST: /usr/share/datasets/fashion-mnist tests/data/fashion-mnist-subset
                 --train 100 --test 500 --first

By default the 10,000 official test images are permuted with numpy's default_rng(20261125);
the first N become the fixture's "train" split and the next M its "test" split (disjoint).
``--first``: the test split is the official test set's first M images in order (so an
accuracy on it is that of the official set's first M), the train split the next N.
Written as gzipped IDX files under the official names (mtime 0, so the bytes are
reproducible), so capsnet finds the directory with ``--data-dir``.
"""

from __future__ import annotations

import argparse
import gzip
import struct
from pathlib import Path

import numpy as np

SEED = 20261125


def read_idx(path: Path) -> np.ndarray:
    data = gzip.decompress(path.read_bytes())
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
        f.write(header + array.tobytes())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("source", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--first", action="store_true", help="test = the official first M, in order")
    args = ap.parse_args()
    images = read_idx(args.source / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(args.source / "t10k-labels-idx1-ubyte.gz")
    n, m = args.train, args.test
    if args.first:
        parts = {"t10k": np.arange(m), "train": np.arange(m, m + n)}
    else:
        order = np.random.default_rng(SEED).permutation(len(images))
        parts = {"train": order[:n], "t10k": order[n : n + m]}
    args.out.mkdir(parents=True, exist_ok=True)
    for prefix, idx in parts.items():
        write_idx(args.out / f"{prefix}-images-idx3-ubyte.gz", images[idx])
        write_idx(args.out / f"{prefix}-labels-idx1-ubyte.gz", labels[idx])


if __name__ == "__main__":
    main()
