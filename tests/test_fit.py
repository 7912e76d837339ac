"""``predict --fit mnist``: users' pictures of any size and polarity brought to MNIST's
preprocessing (capsnet.data.images.fit_digit)."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tests.conftest import TINY_CAPSNET

from capsnet import create_model, load_pretrained
from capsnet.cli import main
from capsnet.data import load_split
from capsnet.data.digits import fit_digit
from capsnet.errors import DataError
from capsnet.models.checkpoint import save_checkpoint
from capsnet.tools.predict import predict, read_inputs


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
    [("capsnet-cifar10", {}, "3×24×24"), ("capsnet-small", {"input_size": (24, 24)}, "1×24×24")],
)
def test_fit_mnist_refuses_other_models_before_reading(tmp_path, capsys, model, overrides, shape):
    save_checkpoint(
        tmp_path / "best.safetensors", create_model(model, **TINY_CAPSNET, **overrides), model
    )
    assert main(["predict", str(tmp_path), str(tmp_path / "missing.png"), "--fit", "mnist"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "capsnet: error: --fit mnist is for 1-channel models of at least 28×28; this one takes "
        f"{shape} "
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


def photo(digit: np.ndarray, seed: int, speck: bool = True, light: float = 0.4) -> np.ndarray:
    """An MNIST digit (28, 28) uint8 as a photo of paper shows it: enlarged 5–9× (Pillow's
    bilinear resize), dark ink (absorbing 80%) at a random place on paper 0.9 bright at one
    corner and ``light`` darker (0.4: to about 0.5) across it, Gaussian noise of σ 0.03 and,
    if ``speck``, one dust speck (radius 2–4 px, absorbing 90%) 3–14 px from a corner.
    uint8 (H, W); every random choice from numpy's generator seeded ``seed``."""
    rng = np.random.default_rng(seed)
    s = int(rng.integers(5, 10))
    big = np.asarray(Image.fromarray(digit).resize((28 * s, 28 * s), Image.BILINEAR)) / 255
    h, w = 28 * s + int(rng.integers(40, 120)), 28 * s + int(rng.integers(40, 120))
    top, left = rng.integers(0, h - 28 * s), rng.integers(0, w - 28 * s)
    ink = np.zeros((h, w))
    ink[top : top + 28 * s, left : left + 28 * s] = big
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    sy, sx = rng.choice([-1, 1], 2)
    paper = 0.9 - light * ((y if sy > 0 else 1 - y) + (x if sx > 0 else 1 - x)) / 2
    picture = paper * (1 - 0.8 * ink) + rng.normal(0, 0.03, (h, w))
    cy, cx, r = rng.integers(3, 15), rng.integers(3, 15), rng.uniform(2, 4)
    if speck:
        cy, cx = (cy if rng.random() < 0.5 else h - cy), (cx if rng.random() < 0.5 else w - cx)
        picture[(y * max(h, w) - cy) ** 2 + (x * max(h, w) - cx) ** 2 <= r * r] *= 0.1
    return (np.clip(picture, 0, 1) * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def mnist_test(mnist_dir) -> tuple[np.ndarray, torch.Tensor]:
    """The first 20 MNIST test digits, uint8 (20, 28, 28), and their labels."""
    images, labels = load_split("mnist", "test", mnist_dir)
    return images[:20, 0].numpy(), labels[:20]


def _fitted(pictures: list[np.ndarray], size: tuple[int, int] = (28, 28)) -> torch.Tensor:
    return torch.stack([fit_digit(torch.from_numpy(p / 255).float(), size) for p in pictures])


@pytest.mark.parametrize("name", ["capsnet-mnist", "capsnet-expanded-mnist"])
def test_photos_of_digits_on_unevenly_lit_dusty_paper_are_recognised(mnist_test, name):
    images, labels = mnist_test
    model, _ = load_pretrained(name)
    pictures = [photo(digit, seed) for seed, digit in enumerate(images)]
    x = _fitted(pictures, tuple(model.config.input_size))[:, None]
    # 20 and 20 of 20; the fit before (the border's median as the paper) got 11 and 10
    assert (predict(model, x).argmax(1) == labels).sum() >= 19


def test_a_speck_of_dust_in_a_corner_leaves_the_digit_as_it_was(mnist_test):
    images, _ = mnist_test
    for seed in range(5):
        clean, dusty = _fitted([photo(images[seed], seed, speck=s) for s in (False, True)])
        assert (clean - dusty).abs().max() < 0.05, seed  # 2e-6 to 0.002


def test_uneven_light_leaves_the_digit_as_it_was(mnist_test):
    images, _ = mnist_test
    even, uneven = _fitted([photo(images[0], 0, speck=False, light=v) for v in (0.0, 0.5)])
    a = even > 0.5
    ious = [  # of the strokes, the digit shifted by a pixel or none (centres by mass round)
        float((a & b).sum() / (a | b).sum())
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
        for b in [torch.roll(uneven, (dy, dx), (0, 1)) > 0.5]
    ]
    assert max(ious) > 0.9  # 0.98 (the centre of mass lies at 14.49 in one, 13.55 in the other)


def test_a_40x40_model_gets_the_mnist_digit_in_the_middle_as_expanded_mnist_has_it(large):
    picture = torch.from_numpy(1 - large)
    torch.testing.assert_close(
        fit_digit(picture, (40, 40)), F.pad(fit_digit(picture), (6, 6, 6, 6)), atol=0, rtol=0
    )


def test_a_photo_of_blank_paper_is_blank_however_lit_and_noisy():
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:300, 0:200] / 300
    paper = 0.9 - 0.4 * (y + x) / 2 + rng.normal(0, 0.03, (300, 200))
    with pytest.raises(DataError, match="blank picture: no ink"):
        fit_digit(torch.from_numpy(paper).float().clamp(0, 1))
