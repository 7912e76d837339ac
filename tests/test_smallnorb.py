"""The smallNORB reader, on small files written here in the official binary-matrix format."""

import gzip
import struct

import numpy as np
import pytest
import torch

from capsnet.data.smallnorb import PREFIX, load_smallnorb, read_norb_matrix
from capsnet.errors import DataError

UBYTE, INT32 = 0x1E3D4C55, 0x1E3D4C54


def norb_bytes(magic: int, array: np.ndarray) -> bytes:
    dims = list(array.shape) + [1] * (3 - array.ndim)  # padded to ≥ 3 dimensions
    header = struct.pack(f"<ii{len(dims)}i", magic, array.ndim, *dims)
    return header + array.astype("<u1" if magic == UBYTE else "<i4").tobytes()


@pytest.fixture
def norb_dir(tmp_path):
    images = np.arange(3 * 2 * 4 * 5, dtype=np.uint8).reshape(3, 2, 4, 5)
    (tmp_path / f"{PREFIX['train']}-dat.mat").write_bytes(norb_bytes(UBYTE, images))
    cat = gzip.compress(norb_bytes(INT32, np.array([4, 0, 2])))
    (tmp_path / f"{PREFIX['train']}-cat.mat.gz").write_bytes(cat)
    return tmp_path


def test_reads_images_and_gzipped_labels(norb_dir):
    x, y = load_smallnorb("train", norb_dir)
    assert x.shape == (3, 2, 4, 5) and x.dtype == torch.uint8
    assert x[1, 0, 0, 0] == 40 and y.tolist() == [4, 0, 2]


def test_header_dimensions_beyond_ndim_are_padding(tmp_path):
    # A vector: ndim 1, dims (5, 1, 1); a rank-4 matrix has exactly 4 dims.
    (tmp_path / "v.mat").write_bytes(norb_bytes(INT32, np.array([1, -2, 3, 4, 5])))
    assert read_norb_matrix(tmp_path / "v.mat").tolist() == [1, -2, 3, 4, 5]


@pytest.mark.parametrize(
    "data, message",
    [
        (struct.pack("<iiiii", 0x1E3D4C51, 1, 2, 1, 1) + b"\0" * 8, "bad magic number 0x1E3D4C51"),
        (struct.pack("<iiiii", UBYTE, 1, 4, 1, 1) + b"\0" * 3, "3 bytes of data, expected 4"),
        (struct.pack("<iiiii", UBYTE, 1, 4, 1, 1) + b"\0" * 5, "5 bytes of data, expected 4"),
        (struct.pack("<ii", UBYTE, 4) + b"\0" * 12, "truncated"),
        (b"\1\2\3", "truncated"),
    ],
    ids=["magic", "short", "long", "header", "tiny"],
)
def test_malformed_files_are_one_line_data_errors(tmp_path, data, message):
    path = tmp_path / "bad.mat"
    path.write_bytes(data)
    with pytest.raises(DataError, match=message) as e:
        read_norb_matrix(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_labels_must_match_the_images(norb_dir):
    cat = norb_dir / f"{PREFIX['train']}-cat.mat.gz"
    cat.write_bytes(gzip.compress(norb_bytes(INT32, np.array([4, 0]))))
    with pytest.raises(DataError, match="2 categories for 3 images"):
        load_smallnorb("train", norb_dir)
    cat.write_bytes(gzip.compress(norb_bytes(INT32, np.array([4, 0, 5]))))
    with pytest.raises(DataError, match="outside 0..4"):
        load_smallnorb("train", norb_dir)


def test_images_must_be_stereo_pairs(norb_dir):
    dat = norb_dir / f"{PREFIX['train']}-dat.mat"
    dat.write_bytes(norb_bytes(UBYTE, np.zeros((3, 4, 5), dtype=np.uint8)))
    with pytest.raises(DataError, match="stereo images"):
        load_smallnorb("train", norb_dir)


def test_missing_files_say_the_data_is_not_downloaded(tmp_path):
    with pytest.raises(DataError, match="not downloaded"):
        load_smallnorb("test", tmp_path)
