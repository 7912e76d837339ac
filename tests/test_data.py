"""Tests of capsnet.data: IDX reading, dataset lookup and download, splits, shifts."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from capsnet.data import (
    DatasetSpec,
    find_dataset,
    get_spec,
    load_split,
    random_shift,
    read_idx,
    search_path,
    shift_images,
    train_val_split,
)
from capsnet.data.sources import download_into_cache
from capsnet.data.transforms import Augmentation, random_erase
from capsnet.errors import ConfigError, DataError

MNIST_DIR = Path(__file__).resolve().parent / "data" / "mnist-subset"
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
CODES = {np.dtype("u1"): 0x08, np.dtype("i2"): 0x0B, np.dtype("f4"): 0x0D}


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep every test away from the real ~/.cache/capsnet and $CAPSNET_DATA."""
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("CAPSNET_DATA", raising=False)
    return home


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of ``array``: magic, big-endian dimensions, big-endian payload."""
    header = bytes([0, 0, CODES[array.dtype], array.ndim])
    header += b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path: Path, data: bytes, gz: bool = True) -> Path:
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def write_dataset(directory: Path, images: np.ndarray, labels: np.ndarray) -> DatasetSpec:
    """Write a tiny dataset (same arrays for both splits); its spec has the files' real MD5s."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for key, (filename, _) in get_spec("mnist").files.items():
        array = images if key.endswith("images") else labels
        data = write(directory / f"{filename}.gz", idx_bytes(array)).read_bytes()
        files[key] = (filename, hashlib.md5(data).hexdigest())
    return dataclasses.replace(get_spec("mnist"), name="tiny", files=files, mirrors=())


def tiny_arrays(n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    images = np.arange(n * 4 * 5, dtype=np.uint8).reshape(n, 4, 5)
    return images, np.arange(n, dtype=np.uint8) % 10


# --- read_idx ---------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("dtype", ["u1", "i2", "f4"])
def test_read_idx_round_trip(tmp_path: Path, gz: bool, dtype: str) -> None:
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    result = read_idx(write(tmp_path / "a.idx", idx_bytes(array), gz=gz))
    assert result.dtype == array.dtype and result.flags.writeable
    np.testing.assert_array_equal(result, array)


def test_read_idx_detects_gzip_by_content_not_name(tmp_path: Path) -> None:
    array = np.arange(5, dtype=np.uint8)
    np.testing.assert_array_equal(
        read_idx(write(tmp_path / "x.gz", idx_bytes(array), False)), array
    )
    np.testing.assert_array_equal(read_idx(write(tmp_path / "x.raw", idx_bytes(array))), array)


GOOD = idx_bytes(np.zeros((3, 2, 2), np.uint8))


@pytest.mark.parametrize(
    ("data", "gz", "message"),
    [
        (b"\x01\x00" + GOOD[2:], True, "bad magic number 0x01000803"),
        (b"\x00\x00\x07\x03" + GOOD[4:], True, "unknown IDX data type code 0x07"),
        (b"\x00\x00\x08\x05" + GOOD[4:], True, "unsupported IDX rank 5"),
        (GOOD[:10], True, "truncated: expected a 16-byte header, found 10"),
        (GOOD[:-1], True, "truncated: expected 12 bytes of data, found 11"),
        (GOOD + b"\0\0", False, "2 trailing bytes"),
        (
            b"\x00\x00\x0c\x03" + GOOD[4:],
            True,
            "code 0x0C says 4 bytes per value, but the 12 "
            "bytes of data hold 1 per value of dimensions 3 x 2 x 2",
        ),
        (idx_bytes(np.zeros((0, 2, 2), np.uint8)), True, "holds no items"),
        (b"\x1f\x8b\x08\x00" + bytes(6) + b"garbage!", False, "corrupt gzip stream"),
        (gzip.compress(GOOD)[:-12], False, "corrupt gzip stream"),
    ],
    ids=[
        "magic",
        "dtype",
        "rank",
        "header",
        "truncated",
        "trailing",
        "type-size",
        "empty",
        "gzip",
        "gzip-end",
    ],
)
def test_read_idx_rejects_corrupt_file(tmp_path: Path, data: bytes, gz: bool, message: str) -> None:
    path = write(tmp_path / "bad-idx3-ubyte.gz", data, gz=gz)
    with pytest.raises(DataError, match=message) as error:
        read_idx(path)
    assert str(error.value).startswith(f"{path}: ") and "\n" not in str(error.value)


def test_read_idx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"^{tmp_path / 'nope.gz'}: file not found$"):
        read_idx(tmp_path / "nope.gz")


# --- specs and search path --------------------------------------------------------------


def test_get_spec_unknown_name() -> None:
    with pytest.raises(
        ConfigError, match="^unknown dataset 'cifar'; choose from: fashion-mnist, mnist$"
    ):
        get_spec("cifar")


def test_search_path_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPSNET_DATA", str(tmp_path / "env"))
    assert search_path("mnist", tmp_path / "dd") == [
        tmp_path / "dd",
        tmp_path / "dd" / "mnist",
        tmp_path / "env" / "mnist",
        tmp_path / "home" / ".cache" / "capsnet" / "mnist",
        Path("/usr/share/datasets/mnist"),
    ]


def test_search_path_without_data_dir_or_env(tmp_path: Path) -> None:
    assert search_path("mnist") == [
        tmp_path / "home" / ".cache" / "capsnet" / "mnist",
        Path("/usr/share/datasets/mnist"),
    ]


# --- find_dataset -----------------------------------------------------------------------


@pytest.mark.parametrize("via_parent", [False, True])
def test_find_dataset_in_data_dir(tmp_path: Path, via_parent: bool) -> None:
    spec = write_dataset(tmp_path / "data" / "tiny", *tiny_arrays())
    data_dir = tmp_path / "data" if via_parent else tmp_path / "data" / "tiny"
    assert find_dataset(spec, data_dir, download=False) == tmp_path / "data" / "tiny"


def test_find_dataset_accepts_raw_files(tmp_path: Path) -> None:
    spec = write_dataset(tmp_path / "tiny", *tiny_arrays())
    gz = tmp_path / "tiny" / "t10k-labels-idx1-ubyte.gz"
    (tmp_path / "tiny" / "t10k-labels-idx1-ubyte").write_bytes(gzip.decompress(gz.read_bytes()))
    gz.unlink()
    assert find_dataset(spec, tmp_path / "tiny", download=False) == tmp_path / "tiny"


def test_find_dataset_not_found_lists_directories(tmp_path: Path) -> None:
    spec = write_dataset(tmp_path / "elsewhere", *tiny_arrays())
    (tmp_path / "elsewhere" / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError) as error:
        find_dataset(spec, tmp_path / "elsewhere", download=False)
    message = str(error.value)
    assert message.startswith(f"dataset 'tiny' not found in {tmp_path / 'elsewhere'}, ")
    assert "download is disabled" in message and "t10k-images-idx3-ubyte.gz" in message
    assert "\n" not in message


def test_download_from_mirror_verifies_and_keeps_files(tmp_path: Path) -> None:
    spec = write_dataset(tmp_path / "mirror", *tiny_arrays())
    missing = (tmp_path / "missing").as_uri() + "/"
    spec = dataclasses.replace(spec, mirrors=(missing, (tmp_path / "mirror").as_uri() + "/"))
    directory = find_dataset(spec, tmp_path / "data")
    assert directory == tmp_path / "data" / "tiny"
    names = sorted(p.name for p in directory.iterdir())
    assert names == sorted(f"{name}.gz" for name, _ in spec.files.values())
    images, labels = load_split(spec, "test", tmp_path / "data", download=False)
    assert images.shape == (6, 1, 4, 5) and labels.tolist() == list(range(6))


def test_download_with_wrong_md5_keeps_nothing(tmp_path: Path) -> None:
    spec = write_dataset(tmp_path / "mirror", *tiny_arrays())
    files = {key: (name, "0" * 32) for key, (name, _) in spec.files.items()}
    spec = dataclasses.replace(spec, files=files, mirrors=((tmp_path / "mirror").as_uri() + "/",))
    with pytest.raises(DataError, match="download failed .*checksum mismatch") as error:
        find_dataset(spec, tmp_path / "data")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "data").exists()  # the directories it made are gone too


# --- load_split -------------------------------------------------------------------------


def test_load_split_count_mismatch(tmp_path: Path) -> None:
    images, labels = tiny_arrays()
    spec = write_dataset(tmp_path, images, labels[:-1])
    match = (
        r"t10k-images-idx3-ubyte.gz holds 6 images but .*t10k-labels-idx1-ubyte.gz holds 5 labels"
    )
    with pytest.raises(DataError, match=match):
        load_split(spec, "test", tmp_path, download=False)


def test_load_split_label_out_of_range(tmp_path: Path) -> None:
    images, labels = tiny_arrays()
    labels[3] = 12
    spec = write_dataset(tmp_path, images, labels)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    with pytest.raises(DataError, match=f"^{path}: label 12 out of range 0..9 \\(item 3\\)$"):
        load_split(spec, "train", tmp_path, download=False)


def test_load_split_rejects_images_that_are_not_3d(tmp_path: Path) -> None:
    images, labels = tiny_arrays()
    spec = write_dataset(tmp_path, images.reshape(6, 20), labels)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: expected images as 3-D"):
        load_split(spec, "test", tmp_path, download=False)


def test_load_split_unknown_split(tmp_path: Path) -> None:
    spec = write_dataset(tmp_path, *tiny_arrays())
    with pytest.raises(ConfigError, match="unknown split 'val'"):
        load_split(spec, "val", tmp_path, download=False)  # type: ignore[arg-type]


def test_load_split_real_mnist_subset() -> None:
    images, labels = load_split("mnist", "test", MNIST_DIR, download=False)
    assert images.shape == (1000, 1, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (1000,) and labels.dtype == torch.int64
    assert labels.unique().tolist() == list(range(10))


def test_load_split_fashion_mnist_from_system_package() -> None:
    if not FASHION_DIR.is_dir():
        pytest.skip(f"Fashion-MNIST not installed at {FASHION_DIR}")
    images, labels = load_split("fashion-mnist", "test", download=False)
    assert images.shape == (10000, 1, 28, 28)
    assert labels.bincount().tolist() == [1000] * 10


# --- train_val_split --------------------------------------------------------------------


def test_train_val_split_is_a_disjoint_cover() -> None:
    train, val = train_val_split(100, 20)
    assert train.dtype == val.dtype == torch.int64
    assert len(train) == 80 and len(val) == 20
    assert sorted(torch.cat([train, val]).tolist()) == list(range(100))


def test_train_val_split_is_deterministic() -> None:
    first, second = train_val_split(50, 10, seed=3), train_val_split(50, 10, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not torch.equal(first[1], train_val_split(50, 10, seed=4)[1])


def test_train_val_split_without_validation() -> None:
    train, val = train_val_split(10, 0)
    assert len(train) == 10 and len(val) == 0


@pytest.mark.parametrize("val_size", [10, 11, -1])
def test_train_val_split_rejects_bad_size(val_size: int) -> None:
    message = rf"validation size {val_size} must be in 0..9 .*\(--val-size; e.g. 1 holds out"
    with pytest.raises(ConfigError, match=message):
        train_val_split(10, val_size)


# --- shifts -----------------------------------------------------------------------------


def test_shift_images_exact_placement() -> None:
    x = torch.zeros(2, 1, 5, 5, dtype=torch.uint8)
    x[0, 0, 2, 2] = 1
    x[1, 0, 2, 1], x[1, 0, 2, 2] = 5, 9
    out = shift_images(x, torch.tensor([1, -1]), torch.tensor([-2, 3]))
    expected = torch.zeros_like(x)
    expected[0, 0, 3, 0] = 1  # down 1, left 2
    expected[1, 0, 1, 4] = 5  # up 1, right 3; the 9 lands on column 5, outside the image
    assert torch.equal(out, expected)


def test_shift_images_keeps_channels_and_dtype() -> None:
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    out = shift_images(x, torch.tensor([0, 1]), torch.tensor([1, 0]))
    assert out.dtype == x.dtype and out.shape == x.shape
    assert torch.equal(out[0, :, :, 1:], x[0, :, :, :-1]) and (out[0, :, :, 0] == 0).all()
    assert torch.equal(out[1, :, 1:], x[1, :, :-1]) and (out[1, :, 0] == 0).all()


def test_random_shift_stays_within_bounds() -> None:
    x = torch.zeros(400, 1, 9, 9)
    x[:, 0, 4, 4] = 1
    out = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert (out.sum(dim=(1, 2, 3)) == 1).all()  # the pixel never leaves the image
    position = out.flatten(1).argmax(dim=1)
    rows, cols = position // 9, position % 9
    assert set((rows - 4).tolist()) == set((cols - 4).tolist()) == {-2, -1, 0, 1, 2}


def test_random_shift_is_deterministic_with_seeded_generator() -> None:
    x = torch.rand(8, 1, 6, 6)
    first = random_shift(x, 2, torch.Generator().manual_seed(1))
    assert torch.equal(first, random_shift(x, 2, torch.Generator().manual_seed(1)))
    assert not torch.equal(first, random_shift(x, 2, torch.Generator().manual_seed(2)))


def test_random_shift_zero_is_identity() -> None:
    x = torch.rand(3, 1, 4, 4)
    assert random_shift(x, 0) is x


# --- Augmentation -------------------------------------------------------------------------
def _digits() -> torch.Tensor:
    return load_split("mnist", "test", MNIST_DIR, download=False)[0][:32]


def test_default_augmentation_is_the_papers_shift():
    x = _digits()
    a = Augmentation()(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, random_shift(x, 2, torch.Generator().manual_seed(5)))


def test_rotation_scale_elastic_are_seeded_and_keep_shape_dtype_and_ink():
    x = _digits()
    aug = Augmentation(max_shift=0, rotation=15, scale=0.1, elastic=8)
    a, b = aug(x, torch.Generator().manual_seed(1)), aug(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == x.shape and a.dtype == torch.uint8
    assert not torch.equal(a, x)
    ink = a.double().sum((1, 2, 3)) / x.double().sum((1, 2, 3))  # (B,) per image
    assert ((ink > 0.7) & (ink < 1.4)).all(), ink


def test_erase_zeroes_one_square_of_the_given_side_per_image():
    x = torch.full((6, 2, 9, 7), 5.0)
    a = random_erase(x, 3, torch.Generator().manual_seed(0))
    assert torch.equal(a, random_erase(x, 3, torch.Generator().manual_seed(0)))
    zero = a == 0  # (6, 2, 9, 7)
    assert (zero.sum((1, 2, 3)) == 2 * 9).all() and torch.equal(zero[:, 0], zero[:, 1])
    rows, cols = zero[:, 0].any(2), zero[:, 0].any(1)  # (6, 9), (6, 7): 3 adjacent each
    assert (rows.sum(1) == 3).all() and (cols.sum(1) == 3).all()
    assert random_erase(x, 0) is x and torch.equal(x, torch.full_like(x, 5.0))


def test_erase_larger_than_the_image_is_a_config_error():
    with pytest.raises(ConfigError, match="erase size 10 must be in 0..6 for 9×7 images"):
        random_erase(torch.zeros(1, 1, 9, 7), 10)


def test_full_squeeze_of_a_column_moves_ink_towards_the_centre_only_horizontally():
    x = torch.zeros(4, 1, 28, 28)
    x[:, :, 4:24, 2:4] = 1.0  # a bar near the left edge
    a = Augmentation(max_shift=0, squeeze=0.5)(x, torch.Generator().manual_seed(3))
    cols = torch.arange(28.0)
    centre_of_ink = (a.sum((1, 2)) * cols).sum(1) / a.sum((1, 2, 3))  # (4,)
    assert (centre_of_ink > 3.0).all()  # 2.5 unsqueezed; squeezing pulls it towards 14
    assert torch.equal(a.sum((1, 3)) > 0, x.sum((1, 3)) > 0)  # rows untouched


@pytest.mark.parametrize(
    "bad", [{"scale": 1.0}, {"squeeze": 1.0}, {"rotation": -1.0}, {"max_shift": -1}, {"erase": -1}]
)
def test_bad_augmentation_settings_are_config_errors(bad):
    with pytest.raises(ConfigError):
        Augmentation(**bad)


def test_a_failed_archive_download_leaves_no_empty_directory(tmp_path: Path) -> None:
    missing = (tmp_path / "missing").as_uri() + "/"
    with pytest.raises(DataError, match="a.tar.gz"):
        download_into_cache("cifar10", tmp_path / "data", (missing,), "0" * 32, "a.tar.gz")
    assert not (tmp_path / "data").exists()
