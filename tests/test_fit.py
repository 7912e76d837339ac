"""``predict --fit mnist``: users' pictures of any size and polarity brought to MNIST's
preprocessing (capsnet.data.images.fit_digit)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tests.conftest import TINY_CAPSNET

from capsnet import create_model
from capsnet.checkpoint import save_checkpoint
from capsnet.cli import main
from capsnet.data.images import fit_digit
from capsnet.errors import DataError
from capsnet.predict import read_inputs


def _nine(v: np.ndarray, u: np.ndarray) -> np.ndarray:
    """A '9' in units of its box (20 tall, 12 wide): a ring of radii 6 and 3.5, a stem."""
    r2 = (v - 6) ** 2 + (u - 6) ** 2
    return ((r2 <= 36) & (r2 >= 3.5**2)) | ((u >= 9.5) & (u <= 12) & (v >= 6) & (v <= 20))


def draw(height: int, width: int, scale: float, top: int, left: int) -> np.ndarray:
    """The '9', ``scale`` px per unit, its box's corner at (top, left): white ink on black,
    float32 (height, width), each pixel the ink's coverage (4×4 samples per pixel)."""
    y = (np.arange(height * 4) + 0.5) / 4
    x = (np.arange(width * 4) + 0.5) / 4
    ink = _nine((y[:, None] - top) / scale, (x[None, :] - left) / scale)
    return ink.reshape(height, 4, width, 4).mean((1, 3)).astype(np.float32)


def centre_of_mass(image: torch.Tensor) -> tuple[float, float]:
    """(row, column) in pixel-index coordinates (pixel i at coordinate i)."""
    h, w = image.shape
    mass = image.sum()
    return (
        float((image.sum(1) * torch.arange(h)).sum() / mass),
        float((image.sum(0) * torch.arange(w)).sum() / mass),
    )


@pytest.fixture(scope="module")
def original() -> torch.Tensor:
    """The '9' as MNIST has a digit: 20 px tall (12 wide), centre of mass at 14 ± 0.5."""
    x = torch.from_numpy(draw(28, 28, 1, 4, 8))
    assert tuple(int(s) for s in (x > 0).nonzero().amax(0) - (x > 0).nonzero().amin(0)) == (19, 11)
    cy, cx = centre_of_mass(x)  # 11.77, 13.76: away from a rounding tie
    return torch.roll(x, (round(14 - cy), round(14 - cx)), (0, 1))


@pytest.fixture(scope="module")
def large() -> np.ndarray:
    """The same '9' drawn 8× larger (160 px tall) off-centre in a 200×150 picture, white ink."""
    return draw(200, 150, 8, 20, 30)


def test_a_large_black_on_white_digit_fits_back_to_the_mnist_sized_one(original, large):
    fitted = fit_digit(torch.from_numpy(1 - large))
    assert fitted.shape == (28, 28) and fitted.dtype == torch.float32
    diff = (fitted - original).abs()
    assert diff.max() < 0.25 and diff.mean() < 0.02, (diff.max(), diff.mean())  # 0.14, 0.007
    a, b = fitted > 0.5, original > 0.5
    assert (a & b).sum() / (a | b).sum() > 0.8  # IoU of the strokes: 0.87


def test_white_on_black_and_black_on_white_fit_alike(large):
    u8 = (large * 255).round()  # as a picture file has it: 0..255
    white = fit_digit(torch.from_numpy(u8 / 255))
    black = fit_digit(torch.from_numpy((255 - u8) / 255))
    torch.testing.assert_close(white, black, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("height", "width", "scale", "top", "left"),
    [(200, 150, 8, 20, 30), (300, 500, 13, 5, 300), (40, 30, 1.5, 2, 9), (20, 16, 0.6, 4, 4)],
)
def test_the_centre_of_mass_is_where_mnist_has_it(height, width, scale, top, left):
    fitted = fit_digit(torch.from_numpy(1 - draw(height, width, scale, top, left)))
    cy, cx = centre_of_mass(fitted)
    assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5, (cy, cx)


@pytest.mark.parametrize("transpose", [False, True])
def test_the_longer_side_of_the_ink_box_is_20_px(large, transpose):
    picture = torch.from_numpy(large)
    fitted = fit_digit(picture.T if transpose else picture)
    rows, cols = int((fitted > 0).any(1).sum()), int((fitted > 0).any(0).sum())
    assert ((cols, rows) if transpose else (rows, cols)) == (20, 12)


def test_an_opaque_rgba_picture_is_read_by_its_colours(large, tmp_path):
    grey = Image.fromarray((255 - large * 255).round().astype(np.uint8))  # black ink on white
    grey.save(tmp_path / "grey.png")
    grey.convert("RGBA").save(tmp_path / "rgba.png")  # alpha 255 everywhere: not the ink
    x = read_inputs([tmp_path / "grey.png", tmp_path / "rgba.png"], 1, (28, 28), fit="mnist")
    torch.testing.assert_close(x.images[1], x.images[0], atol=0, rtol=0)


def test_a_phone_picture_is_turned_upright_by_its_exif_orientation(large, tmp_path):
    grey = Image.fromarray((255 - large * 255).round().astype(np.uint8))
    grey.save(tmp_path / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: turn 90° clockwise to show it upright
    grey.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "phone.png", exif=exif)
    x = read_inputs([tmp_path / "upright.png", tmp_path / "phone.png"], 1, (28, 28), fit="mnist")
    torch.testing.assert_close(x.images[1], x.images[0], atol=0, rtol=0)


def test_a_picture_of_another_size_without_fit_points_to_it(large, tmp_path):
    Image.fromarray((large * 255).round().astype(np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(DataError, match=r"1×200×150 .* \(or pass --fit mnist for a picture"):
        read_inputs([tmp_path / "big.png"], 1, (28, 28))


def test_a_blank_picture_is_a_one_line_error_naming_it(tiny_run, tmp_path, capsys):
    paper = np.full((200, 150), 240, np.uint8)
    paper[50:60, 70:80] = 232  # a smudge 8 grey levels darker: not ink
    Image.fromarray(paper).save(tmp_path / "blank.png")
    assert main(["predict", str(tiny_run), str(tmp_path / "blank.png"), "--fit", "mnist"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("capsnet: error: "), err
    assert f"{tmp_path / 'blank.png'}: blank picture: no ink" in err and captured.out == ""


@pytest.mark.parametrize(
    ("model", "overrides", "shape"),
    [("capsnet-cifar10", {}, "3×24×24"), ("capsnet-small", {"input_size": (32, 32)}, "1×32×32")],
)
def test_fit_mnist_refuses_other_models_before_reading(tmp_path, capsys, model, overrides, shape):
    save_checkpoint(
        tmp_path / "best.safetensors", create_model(model, **TINY_CAPSNET, **overrides), model
    )
    assert main(["predict", str(tmp_path), str(tmp_path / "missing.png"), "--fit", "mnist"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"capsnet: error: --fit mnist is for 1-channel 28×28 models; this one takes {shape} "
        "(channels×height×width)"
    )


def test_predict_fits_pictures_and_arrays_of_different_sizes(tiny_run, large, tmp_path, capsys):
    rgb = np.stack([(255 - large * 255).round().astype(np.uint8)] * 3, -1)  # 200×150 RGB
    Image.fromarray(rgb).save(tmp_path / "paper.png")
    Image.fromarray((draw(90, 60, 3, 10, 5) * 255).round().astype(np.uint8)).save(
        tmp_path / "w.jpg"
    )
    np.save(tmp_path / "two.npy", np.stack([large, large[::-1]]))  # float (2, 200, 150)
    files = [tmp_path / "paper.png", tmp_path / "w.jpg", tmp_path / "two.npy"]
    assert main(["predict", str(tiny_run), *map(str, files), "--fit", "mnist", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["file"], r["index"]) for r in rows] == [
        (str(files[0]), 0),
        (str(files[1]), 0),
        (str(files[2]), 0),
        (str(files[2]), 1),
    ]
    assert rows[0]["scores"] == pytest.approx(rows[2]["scores"], abs=1e-3)  # the same digit
