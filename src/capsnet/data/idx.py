"""Reader for the IDX format of MNIST-like datasets, raw or gzip-compressed."""

from __future__ import annotations

import gzip
import zlib
from math import prod
from pathlib import Path

import numpy as np

from capsnet.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"

# IDX data type code -> big-endian numpy dtype.
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
SIZES = {dtype.itemsize for dtype in IDX_DTYPES.values()}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file, gzip-compressed (detected by its first bytes) or raw.

    Returns a writable array in native byte order whose shape is the file's dimensions,
    e.g. (N, H, W) uint8 for images and (N,) uint8 for labels. Raises DataError naming
    the file if it is missing, unreadable, not IDX, or its size does not match its header.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: truncated: {len(data)} bytes, too short for an IDX header")
    magic = int.from_bytes(data[:4], "big")
    code, ndim = data[2], data[3]
    if data[:2] != b"\0\0":
        raise DataError(f"{path}: bad magic number 0x{magic:08X}, not a gzip or IDX file")
    if code not in IDX_DTYPES:
        raise DataError(f"{path}: unknown IDX data type code 0x{code:02X} (magic 0x{magic:08X})")
    if not 1 <= ndim <= 4:
        raise DataError(f"{path}: unsupported IDX rank {ndim} (magic 0x{magic:08X}), expected 1..4")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated: expected a {header}-byte header, found {len(data)}")
    shape = tuple(int.from_bytes(data[i : i + 4], "big") for i in range(4, header, 4))
    if 0 in shape:
        raise DataError(f"{path}: holds no items (dimensions {' x '.join(map(str, shape))})")
    dtype = IDX_DTYPES[code]
    count = prod(shape)
    expected, found = count * dtype.itemsize, len(data) - header
    if found != expected and found % count == 0 and found // count in SIZES:
        raise DataError(
            f"{path}: the data type code 0x{code:02X} says {dtype.itemsize} bytes per value, "
            f"but the {found} bytes of data hold {found // count} per value "
            f"of dimensions {' x '.join(map(str, shape))}"
        )
    if found < expected:
        raise DataError(f"{path}: truncated: expected {expected} bytes of data, found {found}")
    if found > expected:
        raise DataError(f"{path}: {found - expected} trailing bytes after {expected} bytes of data")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def _read_bytes(path: Path) -> bytes:
    """The file's contents, decompressed if they start with the gzip magic bytes."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e.strerror or e})") from None
    if not data.startswith(GZIP_MAGIC):
        return data
    try:
        return gzip.decompress(data)
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{path}: corrupt gzip stream ({e})") from None
