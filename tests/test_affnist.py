"""affNIST protocol: affine maps, generator ranges, translations, the .mat reader."""

import math

import numpy as np
import pytest
import torch

from capsnet.data.affnist import (
    AffineRanges,
    affine_matrices,
    load_affnist_mat,
    random_affine,
    random_translation,
    sample_affine,
    warp,
)
from capsnet.data.tasks import load_test
from capsnet.errors import DataError

scipy_io = pytest.importorskip("scipy.io")


def test_affine_matrices_by_hand():
    one, zero = torch.ones(1), torch.zeros(1)
    rot = affine_matrices(torch.tensor([math.pi / 2]), zero, one, one)
    torch.testing.assert_close(rot[0], torch.tensor([[0.0, -1.0], [1.0, 0.0]]))
    shear = affine_matrices(zero, torch.tensor([0.2]), one, one)
    torch.testing.assert_close(shear[0], torch.tensor([[1.0, 0.2], [0.0, 1.0]]))
    scale = affine_matrices(zero, zero, torch.tensor([0.8]), torch.tensor([1.2]))
    torch.testing.assert_close(scale[0], torch.tensor([[1.2, 0.0], [0.0, 0.8]]))


def test_warp_rotates_about_the_centre():
    # x right, y down, centre (2.5, 2.5) of a 6×6 image: a quarter turn (x, y) → (−y, x)
    # takes the pixel at row 2, column 4, i.e. (x, y) = (1.5, −0.5), to (0.5, 1.5): row 4,
    # column 3 (clockwise on screen).
    img = torch.zeros(1, 1, 6, 6)
    img[0, 0, 2, 4] = 1.0
    out = warp(img, affine_matrices(torch.tensor([math.pi / 2]), *torch.tensor([[0.0, 1, 1]]).T))
    expected = torch.zeros(1, 1, 6, 6)
    expected[0, 0, 4, 3] = 1.0
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)


def test_parameters_stay_within_and_span_affnists_ranges():
    rot, shear, sy, sx = sample_affine(20000, AffineRanges(), torch.Generator().manual_seed(0))
    for values, lo, hi in [
        (rot, -math.radians(20), math.radians(20)),
        (shear, -0.2, 0.2),
        (sy, 0.8, 1.2),
        (sx, 0.8, 1.2),
    ]:
        assert lo <= values.min() < lo + 0.01 * (hi - lo)
        assert hi - 0.01 * (hi - lo) < values.max() <= hi


def test_translation_keeps_every_inked_pixel_and_uses_the_whole_canvas():
    x = torch.zeros(2000, 1, 40, 40, dtype=torch.uint8)
    x[:, 0, 10:30, 15:25] = torch.randint(1, 256, (20, 10), dtype=torch.uint8)
    out = random_translation(x, torch.Generator().manual_seed(0))
    assert torch.equal(out.flatten(1).sort(1).values, x.flatten(1).sort(1).values)
    rows = (out[:, 0].amax(2) > 0).int().argmax(1)  # first inked row: 10 + dy, |dy| ≤ 10
    assert rows.min() == 0 and rows.max() == 20


def test_random_affine_makes_seeded_40x40_images():
    x = torch.zeros(50, 1, 28, 28, dtype=torch.uint8)
    x[:, 0, 8:20, 12:16] = 255
    a = random_affine(x, AffineRanges(), torch.Generator().manual_seed(3))
    b = random_affine(x, AffineRanges(), torch.Generator().manual_seed(3))
    assert a.shape == (50, 1, 40, 40) and a.dtype == torch.uint8 and torch.equal(a, b)
    ink = a.flatten(1).float().sum(1) / (255 * 48)  # area ratio = |det A| ∈ [0.64, 1.44]
    assert ink.min() > 0.55 and ink.max() < 1.55 and ink.std() > 0.05


def write_mat(path, images: np.ndarray, labels: np.ndarray) -> None:
    columns = images.reshape(len(images), -1).T  # (1600, N): one image per column, row-major
    scipy_io.savemat(str(path), {"affNISTdata": {"image": columns, "label_int": labels}})


def test_mat_reader_on_a_tiny_file(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (3, 40, 40), dtype=np.uint8)
    write_mat(tmp_path / "1.mat", images, np.array([7, 0, 3], dtype=np.uint8))
    x, y = load_affnist_mat(tmp_path / "1.mat")
    assert x.shape == (3, 1, 40, 40) and x.dtype == torch.uint8
    np.testing.assert_array_equal(x[:, 0].numpy(), images)
    assert y.tolist() == [7, 0, 3] and y.dtype == torch.int64
    write_mat(tmp_path / "2.mat", images[:1], np.array([5], dtype=np.uint8))
    x, y = load_test("affnist", tmp_path)  # every .mat file of the directory, in order
    assert len(x) == 4 and y.tolist() == [7, 0, 3, 5]


def test_not_an_affnist_file_is_a_one_line_error(tmp_path):
    (tmp_path / "bad.mat").write_bytes(b"not a mat file")
    with pytest.raises(DataError, match="bad.mat") as e:
        load_affnist_mat(tmp_path / "bad.mat")
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="no affNIST .mat files"):
        load_test("affnist", tmp_path / "empty")
