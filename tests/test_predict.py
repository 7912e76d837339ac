import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from capsnet import load_run
from capsnet.cli import main
from capsnet.data import load_split
from capsnet.data.tasks import task_class_names as class_names
from capsnet.errors import DataError
from capsnet.tools.predict import predict, read_inputs


@pytest.fixture(scope="module")
def digits(mnist_dir) -> np.ndarray:
    """The first 6 MNIST test digits, uint8 (6, 28, 28)."""
    return load_split("mnist", "test", mnist_dir)[0][:6, 0].numpy()


def _lengths(run, images: np.ndarray) -> torch.Tensor:
    """The model's capsule lengths for uint8 images (N, 28, 28), computed directly."""
    model, _ = load_run(run)
    with torch.no_grad():
        return model(torch.from_numpy(images)[:, None].float() / 255).scores


def test_png_and_npy_inputs_give_the_models_lengths_in_input_order(
    tiny_run, digits, tmp_path, capsys
):
    Image.fromarray(digits[0]).save(tmp_path / "a.png")
    np.save(tmp_path / "batch.npy", digits[1:4])  # (3, 28, 28) uint8
    np.save(tmp_path / "one.npy", digits[4].astype(np.float32) / 255)  # (28, 28) float
    files = [tmp_path / "a.png", tmp_path / "batch.npy", tmp_path / "one.npy"]
    assert main(["predict", str(tiny_run), *map(str, files), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["file"], r["index"]) for r in rows] == [
        (str(files[0]), 0),
        (str(files[1]), 0),
        (str(files[1]), 1),
        (str(files[1]), 2),
        (str(files[2]), 0),
    ]
    expected = _lengths(tiny_run, digits[:5])
    got = torch.tensor([r["scores"] for r in rows])
    torch.testing.assert_close(got, expected, atol=2e-6, rtol=0)
    assert [r["class"] for r in rows] == expected.argmax(1).tolist()
    assert all(r["class_name"] == str(r["class"]) for r in rows)


def test_text_output_is_one_line_per_image_with_its_class_and_all_lengths(
    tiny_run, digits, tmp_path, capsys
):
    np.save(tmp_path / "two.npy", digits[:2])
    assert main(["predict", str(tiny_run), str(tmp_path / "two.npy")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [f"{tmp_path}/two.npy[{i}]" for i in (0, 1)]
    expected = _lengths(tiny_run, digits[:2])
    for line, row in zip(lines, expected, strict=True):
        _, name, lengths = line.split("\t")
        assert name == str(int(row.argmax()))
        assert [float(v) for v in lengths.split()] == pytest.approx(row.tolist(), abs=1e-4)


def test_uint8_and_float_arrays_of_any_layout_read_alike(digits, tmp_path):
    np.save(tmp_path / "u8.npy", digits)  # (N, H, W) 0..255
    np.save(tmp_path / "f.npy", digits[:, None] / 255.0)  # (N, C, H, W) float64 in [0, 1]
    a = read_inputs([tmp_path / "u8.npy"], 1, (28, 28)).images
    b = read_inputs([tmp_path / "f.npy"], 1, (28, 28)).images
    assert a.shape == (6, 1, 28, 28) and a.dtype == torch.float32
    torch.testing.assert_close(a, b)
    assert float(a.max()) == 1.0  # MNIST has saturated pixels: 255 / 255


def test_png_is_converted_to_the_models_channels(digits, tmp_path):
    Image.fromarray(np.stack([digits[0]] * 3, -1)).save(tmp_path / "rgb.png")
    grey = read_inputs([tmp_path / "rgb.png"], 1, (28, 28)).images
    torch.testing.assert_close(grey[0, 0], torch.from_numpy(digits[0]).float() / 255)
    assert read_inputs([tmp_path / "rgb.png"], 3, (28, 28)).images.shape == (1, 3, 28, 28)


@pytest.mark.parametrize("suffix", [".bmp", ".gif", ".tif", ".webp"])
def test_lossless_picture_formats_read_like_png(digits, tmp_path, suffix):
    path = tmp_path / f"digit{suffix}"
    frames = {"save_all": True, "append_images": [Image.fromarray(255 - digits[1])]}
    more = {} if suffix == ".bmp" else frames  # of several frames, the first is read
    Image.fromarray(digits[0]).save(path, lossless=True, **more)
    x = read_inputs([path], 1, (28, 28)).images
    torch.testing.assert_close(x, torch.from_numpy(digits[:1, None]).float() / 255)


def test_predict_runs_in_batches_and_matches_one_big_batch(tiny_run):
    model, _ = load_run(tiny_run)
    calls = []
    model.register_forward_hook(lambda m, args, out: calls.append(len(args[0])))
    x = torch.rand(120, 1, 28, 28)
    lengths = predict(model, x, batch_size=50)
    assert calls == [50, 50, 20]
    with torch.no_grad():
        torch.testing.assert_close(lengths, model(x).scores, atol=1e-6, rtol=0)


def test_dark_on_light_input_is_warned_about(tmp_path, caplog):
    np.save(tmp_path / "inverted.npy", np.full((28, 28), 230, np.uint8))
    with caplog.at_level(logging.WARNING):
        read_inputs([tmp_path / "inverted.npy"], 1, (28, 28))
    assert "white-on-black" in caplog.text


def test_class_names_come_from_the_dataset_or_are_indices():
    assert class_names("fashion-mnist", 10)[9] == "Ankle boot"
    assert class_names(None, 3) == ("0", "1", "2")
    assert class_names("mnist", 4) == ("0", "1", "2", "3")  # a model of other classes
    assert class_names("expanded-mnist", 10)[3] == "3"  # a task, not a raw source


@pytest.mark.parametrize(
    ("dtype", "scale", "suffix"),
    [(np.uint16, 257, ".png"), (np.int32, 257, ".tif"), (np.float32, 1 / 255, ".tif")],
)
def test_16_bit_and_float_pictures_read_like_8_bit(digits, tmp_path, dtype, scale, suffix):
    path = tmp_path / f"deep{suffix}"
    Image.fromarray((digits[0].astype(np.float64) * scale).astype(dtype)).save(path)  # I;16, I, F
    x = read_inputs([path], 1, (28, 28)).images
    torch.testing.assert_close(x, torch.from_numpy(digits[:1, None]).float() / 255)


def test_a_float_picture_outside_0_1_is_refused(digits, tmp_path):
    Image.fromarray(digits[0].astype(np.float32), "F").save(tmp_path / "wide.tif")
    with pytest.raises(DataError, match=r"wide.tif: a F picture with values outside \[0, 1\]"):
        read_inputs([tmp_path / "wide.tif"], 1, (28, 28))


def _bad_inputs(d):
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(d / "big.png")
    (d / "text.png").write_text("not a picture")
    (d / "junk.npy").write_bytes(b"\x93NUMPY garbage")
    np.save(d / "nan.npy", np.full((28, 28), np.nan, np.float32))
    np.save(d / "range.npy", np.full((28, 28), 2.0))
    np.save(d / "ints.npy", np.zeros((28, 28), np.int64))
    np.save(d / "five.npy", np.zeros((1, 1, 1, 28, 28), np.uint8))
    np.save(d / "empty.npy", np.zeros((0, 28, 28), np.uint8))
    np.save(d / "hwc.npy", np.zeros((28, 28, 3), np.uint8))
    np.save(d / "objects.npy", np.array([None, 1], dtype=object), allow_pickle=True)
    np.savez(d / "archive.npz", images=np.zeros((28, 28), np.uint8))
    (d / "archive.npz").rename(d / "archive.npy")
    (d / "folder.png").mkdir()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("big.png", "30×30 (channels×height×width) but the model expects 1×28×28"),
        ("text.png", "not a readable PNG, JPEG, BMP, GIF, TIFF or WebP image"),
        ("junk.npy", "not a readable .npy array"),
        ("nan.npy", "non-finite"),
        ("range.npy", "must lie in [0, 1]"),
        ("ints.npy", "uint8 (0–255) or float (0–1)"),
        ("five.npy", "expected (H, W), (N, H, W) or (N, C, H, W)"),
        ("empty.npy", "holds no images"),
        ("hwc.npy", "shape (28, 28, 3) looks like one (H, W, C) picture; give (C, H, W) or"),
        ("objects.npy", "not a readable .npy array"),
        ("missing.png", "file not found"),
        ("archive.npy", "is an .npz archive, not an .npy array"),
        ("folder.png", "is a directory, not a picture"),
    ],
)
def test_bad_input_is_one_line_naming_the_file(tiny_run, tmp_path, capsys, name, message):
    _bad_inputs(tmp_path)
    assert main(["predict", str(tiny_run), str(tmp_path / name)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("capsnet: error: "), err
    assert str(tmp_path / name) in err and message in err, err
    assert captured.out == ""


def test_big_endian_float_npy_reads_like_native(digits, tmp_path):
    native = digits[:2].astype(np.float32) / 255
    np.save(tmp_path / "big.npy", native.astype(">f4"))
    x = read_inputs([tmp_path / "big.npy"], 1, (28, 28)).images
    torch.testing.assert_close(x, torch.from_numpy(native)[:, None], atol=0, rtol=0)


def test_black_ink_on_transparent_background_reads_as_white_on_black(digits, tmp_path):
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., 3] = digits[0]  # black ink whose opacity is the digit
    Image.fromarray(rgba, "RGBA").save(tmp_path / "ink.png")
    x = read_inputs([tmp_path / "ink.png"], 1, (28, 28)).images
    torch.testing.assert_close(x[0, 0], torch.from_numpy(digits[0]).float() / 255)


def test_an_opaque_rgba_picture_reads_by_its_colours(digits, tmp_path):
    Image.fromarray(digits[0]).convert("RGBA").save(tmp_path / "opaque.png")  # alpha 255
    x = read_inputs([tmp_path / "opaque.png"], 1, (28, 28)).images
    torch.testing.assert_close(x[0, 0], torch.from_numpy(digits[0]).float() / 255)


def test_a_huge_picture_is_refused_from_its_header(tmp_path, monkeypatch):
    Image.new("L", (300, 200)).save(tmp_path / "wide.png")
    from capsnet.tools import predict as predict_module

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded")

    monkeypatch.setattr(predict_module, "MAX_PIXELS", 300 * 200 - 1)
    monkeypatch.setattr(predict_module.np, "asarray", no_decoding)
    with pytest.raises(predict_module.DataError, match="300×200, larger than the 59,999 pixels"):
        read_inputs([tmp_path / "wide.png"], 1, (28, 28))


def test_blank_input_is_warned_about(tmp_path, caplog):
    np.save(tmp_path / "blank.npy", np.zeros((2, 28, 28), np.uint8))
    with caplog.at_level(logging.WARNING):
        read_inputs([tmp_path / "blank.npy"], 1, (28, 28))
    assert "2 of 2 images are blank" in caplog.text
