"""folder:PATH and npz:PATH datasets: structure errors, the image policy, caching, training,
and predict / explore on a folder run."""

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from tests.conftest import TINY_CAPSNET

from capsnet.cli import main
from capsnet.data import folder
from capsnet.data.folder import load_folder_split
from capsnet.data.images import ImagePolicy, fit_image, normalize_images, read_picture
from capsnet.data.npz import load_npz
from capsnet.data.tasks import dataset_spec, load_test, load_train
from capsnet.errors import ConfigError, DataError
from capsnet.tools.explore import load_explorer
from capsnet.training import TrainConfig, train

# the paper text's reconstruction weight: these tests read a drop of the loss as learning,
# which the margin loss shows within a few steps and the reconstruction error does not
TINY = {**TINY_CAPSNET, "reconstruction_weight": 0.0005}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPSNET_CACHE", str(tmp_path / "cache"))


def pattern(label: int, rng: np.random.Generator, size=(20, 20), rgb=False) -> np.ndarray:
    """An easy two-class image: class 0 bright on top, class 1 bright at the bottom."""
    h, w = size
    a = rng.integers(0, 40, size, dtype=np.uint8)
    rows = slice(0, h // 2) if label == 0 else slice(h // 2, h)
    a[rows] += 200
    return np.stack([a] * 3, -1) if rgb else a


def write_folder(root, n=12, splits=("train", "test"), names=("cat", "dog"), suffix=".png", **kw):
    rng = np.random.default_rng(0)
    for split in splits:
        for k, name in enumerate(names):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(pattern(k, rng, **kw)).save(root / split / name / f"{i}{suffix}")
    return root


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err.strip()


def tiny_cfg(dataset: str, **kw) -> TrainConfig:
    base = TrainConfig(
        dataset=dataset, model="capsnet-small", model_overrides=TINY, epochs=4, batch_size=8
    )
    return dataclasses.replace(base, val_size=4, lr=0.01, max_shift=0, **kw)


# --- the image policy ------------------------------------------------------------------


def test_pad_centres_crop_cuts_the_centre_and_stretch_resizes():
    a = np.arange(2 * 4, dtype=np.uint8).reshape(1, 2, 4)
    padded = fit_image(a, ImagePolicy((4, 6), "pad"), "a")
    assert padded.shape == (1, 4, 6) and (padded[0, 1:3, 1:5] == a[0]).all()
    assert padded.sum() == a.sum()
    cropped = fit_image(a, ImagePolicy((2, 2), "crop"), "a")
    assert cropped.tolist() == [[[1, 2], [5, 6]]]
    assert fit_image(a, ImagePolicy((3, 7), "stretch"), "a").shape == (1, 3, 7)


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (ImagePolicy((2, 2), "pad"), "cannot pad: larger than 2×2"),
        (ImagePolicy((9, 9), "crop"), "cannot crop: smaller than 9×9"),
        (ImagePolicy((3, 3)), "pass --resize"),
    ],
)
def test_a_size_the_policy_cannot_give_is_an_error(policy, message):
    with pytest.raises(DataError, match=message):
        fit_image(np.zeros((1, 4, 4), np.uint8), policy, "x.png")


def test_resize_without_input_size_is_a_config_error():
    with pytest.raises(ConfigError, match="needs --input-size"):
        ImagePolicy(resize="pad")


def test_per_image_normalisation_stretches_each_image_to_0_255():
    x = torch.tensor([[[[10, 20], [30, 10]]], [[[5, 5], [5, 5]]]], dtype=torch.uint8)
    out = normalize_images(x, "per-image")
    assert out[0].flatten().tolist() == [0, 128, 255, 0]  # (20-10)·255/20 = 127.5 → 128
    assert out[1].flatten().tolist() == [0, 0, 0, 0]


# --- folder structure errors -----------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda r: r.mkdir(), "train: not found"),
        (lambda r: (r / "train").mkdir(parents=True), "no class folders"),
        (lambda r: (r / "train" / "cat").mkdir(parents=True), "no images (.png, .jpg, .jpeg, .bmp"),
        (
            lambda r: (write_folder(r, 2, ("train",)), (r / "test" / "cow").mkdir(parents=True)),
            "class 'cow' is not a folder",
        ),
        (lambda r: write_folder(r, 2, ("train",)), "no test split"),
        (lambda r: write_folder(r, 2, names=("cat",)), "train: one class folder (cat); a classi"),
    ],
)
def test_folder_structure_errors_are_one_line(tmp_path, capsys, make, message):
    root = tmp_path / "data"
    make(root)
    code, err = run_cli(
        capsys, "train", "--dataset", f"folder:{root}", "--out", str(tmp_path / "r")
    )
    assert code == 2 and message in err and err.startswith("capsnet: error: ")
    assert "\n" not in err


def test_a_folder_of_bmp_gif_and_tiff_pictures_reads_like_png(tmp_path):
    png = load_folder_split(write_folder(tmp_path / "png", 3, ("train",)), "train", ImagePolicy())
    for suffix in (".bmp", ".gif", ".tif"):
        root = write_folder(tmp_path / suffix[1:], 3, ("train",), suffix=suffix)
        x, y = load_folder_split(root, "train", ImagePolicy())
        assert np.array_equal(x, png[0]) and np.array_equal(y, png[1])


def test_mixed_channel_counts_are_an_error_unless_channels_is_given(tmp_path):
    root = write_folder(tmp_path / "d", 2, ("train",))
    Image.new("RGB", (20, 20)).save(root / "train" / "cat" / "rgb.png")
    with pytest.raises(DataError, match="mixed channel counts"):
        load_folder_split(root, "train", ImagePolicy())
    x, _ = load_folder_split(root, "train", ImagePolicy(channels=3))
    assert x.shape == (5, 3, 20, 20)


def test_mixed_sizes_need_a_resize_policy(tmp_path):
    root = write_folder(tmp_path / "d", 2, ("train",))
    Image.new("L", (24, 18)).save(root / "train" / "dog" / "odd.png")
    with pytest.raises(DataError, match="odd.png: image is 18×24 but .* is 20×20; pass"):
        load_folder_split(root, "train", ImagePolicy())
    with pytest.raises(DataError, match="odd.png: image is 18×24, expected 20×20 .*cannot pad"):
        load_folder_split(root, "train", ImagePolicy((20, 20), "pad"))
    with pytest.raises(DataError, match="cat.*image is 20×20, expected 18×18 .*cannot pad"):
        load_folder_split(root, "train", ImagePolicy((18, 18), "pad"))
    x, _ = load_folder_split(root, "train", ImagePolicy((24, 24), "pad"))
    assert x.shape == (5, 1, 24, 24)
    with pytest.raises(DataError, match="cannot crop"):
        load_folder_split(root, "train", ImagePolicy((19, 19), "crop"))
    assert load_folder_split(root, "train", ImagePolicy((16, 16), "crop"))[0].shape[2:] == (16, 16)
    assert load_folder_split(root, "train", ImagePolicy((9, 9), "stretch"))[0].shape[2:] == (9, 9)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_or_truncated_images_are_named(tmp_path, damage):
    root = write_folder(tmp_path / "d", 2, ("train",))
    bad = root / "train" / "cat" / "0.png"
    data = bad.read_bytes()
    bad.write_bytes(b"not a png at all" if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(DataError, match="0.png: not a readable PNG, JPEG, BMP, GIF, TIFF or WebP"):
        load_folder_split(root, "train", ImagePolicy())


def test_a_folder_is_decoded_once_then_read_from_the_cache(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "d", 3, ("train",))
    x, y = load_folder_split(root, "train", ImagePolicy())
    assert x.shape == (6, 1, 20, 20) and y.tolist() == [0, 0, 0, 1, 1, 1]
    monkeypatch.setattr(folder, "read_picture", lambda *a: pytest.fail("decoded again"))
    again, _ = load_folder_split(root, "train", ImagePolicy())
    assert isinstance(again, np.memmap) and (np.asarray(again) == np.asarray(x)).all()


def test_a_damaged_cache_file_is_decoded_again(tmp_path, caplog):
    root = write_folder(tmp_path / "d", 3, ("train",))
    x = np.array(load_folder_split(root, "train", ImagePolicy())[0])
    (cached,) = (tmp_path / "cache").iterdir()
    cached.write_bytes(cached.read_bytes()[:200])  # cut off, as by a full disk
    again, _ = load_folder_split(root, "train", ImagePolicy())
    assert (np.asarray(again) == x).all()
    assert "damaged cache file" in caplog.text


# --- training, predict, explore on a folder run ----------------------------------------


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A tiny CapsNet trained on 16×16 RGB images padded to 20×20."""
    tmp = tmp_path_factory.mktemp("folder-run")
    root = write_folder(tmp / "data", 12, ("train", "test"), size=(16, 16), rgb=True)
    cache = tmp / "cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CAPSNET_CACHE", str(cache))
        options = {"input_size": [20, 20], "resize": "pad", "normalize": "per-image"}
        metrics = train(tiny_cfg(f"folder:{root}", dataset_options=options), tmp / "run")
    return tmp / "run", root, metrics


def test_a_tiny_folder_dataset_trains_and_the_loss_drops(folder_run):
    run, _, metrics = folder_run
    history = [r.split(",") for r in (run / "history.csv").read_text().splitlines()[1:]]
    losses = [float(r[2]) for r in history]
    assert losses[-1] < 0.7 * losses[0], losses
    assert metrics["test_examples"] == 24
    saved = json.loads((run / "config.json").read_text())["data"]
    assert saved["class_names"] == ["cat", "dog"]
    assert saved["image_policy"] == {
        "input_size": [20, 20],
        "resize": "pad",
        "channels": None,
        "normalize": "per-image",
    }


def test_predict_uses_the_runs_class_names_and_resize_policy(folder_run, tmp_path, capsys):
    run, root, _ = folder_run
    png = root / "test" / "dog" / "0.png"  # 16×16: only the run's "pad" makes it 20×20
    assert main(["predict", str(run), str(png), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["class_name"] in ("cat", "dog") and len(out["scores"]) == 2
    Image.new("RGB", (30, 30)).save(tmp_path / "big.png")
    assert main(["predict", str(run), str(tmp_path / "big.png")]) == 2
    assert "cannot pad: larger than 20×20" in capsys.readouterr().err


def test_explore_shows_the_runs_class_names_and_fitted_test_images(folder_run):
    run, _, _ = folder_run
    client = TestClient(load_explorer(run), base_url="http://127.0.0.1:8000")
    info = client.get("/api/info").json()
    assert info["class_names"] == ["cat", "dog"] and info["test_images"] == 24
    image = client.get("/api/random").json()
    assert image["class_name"] in ("cat", "dog") and len(image["pixels"]) == 3 * 20 * 20


# --- npz: ------------------------------------------------------------------------------


def write_npz(path, **arrays):
    rng = np.random.default_rng(1)
    labels = np.arange(16) % 2
    base = {
        "images": np.stack([pattern(k, rng, rgb=True) for k in labels]),  # (N, H, W, C)
        "labels": labels,
        "test_images": np.stack([pattern(k, rng, rgb=True) for k in labels[:6]]) / 255.0,
        "test_labels": labels[:6],
        "class_names": np.array(["top", "bottom"]),
    }
    base.update(arrays)
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return path


def test_npz_layouts_and_float_images_read_as_uint8_nchw(tmp_path):
    data = load_npz(write_npz(tmp_path / "d.npz"))
    x, y = data["train"]
    assert x.shape == (16, 3, 20, 20) and x.dtype == np.uint8 and y.dtype == np.int64
    assert data["test"][0].dtype == np.uint8 and data["class_names"] == ("top", "bottom")
    chw = load_npz(write_npz(tmp_path / "c.npz", images=x))["train"][0]
    assert (chw == x).all()


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"labels": None}, "no 'labels' array"),
        ({"labels": np.arange(16)}, "'labels' label 2 \\(item 2\\) out of range 0..1"),
        ({"labels": np.zeros(15, int)}, "holds 15 labels for 16 images"),
        ({"labels": np.arange(16) - 1, "class_names": None}, "label -1 \\(item 0\\) must be ≥ 0"),
        ({"class_names": np.array([], "U1")}, "'class_names' is empty"),
        (
            {"labels": np.arange(16) % 2 + 1, "test_labels": np.ones(6, int), "class_names": None},
            "labels run up to 2 but class 0 has no training images",
        ),
        (
            {"labels": np.r_[np.arange(15) % 2, 10**9], "class_names": None},
            "labels run up to 1000000000 but class 2 has no training images",
        ),
        ({"images": np.zeros((16, 0, 20, 3), np.uint8)}, "'images' images are 0×20 pixels"),
        (
            {"labels": np.zeros(16, int), "test_labels": np.zeros(6, int), "class_names": None},
            "one class \\(0\\); a classifier",
        ),
        ({"labels": np.zeros(16)}, "must be 1-D integers"),
        ({"images": np.zeros((16, 5, 5, 7, 7), np.uint8)}, "has shape"),
        ({"test_images": np.full((6, 20, 20, 3), 2.0)}, "must be finite and lie in"),
        ({"test_labels": None}, "must come together"),
        ({"test_images": np.zeros((6, 8, 8, 3), np.uint8)}, "test images are"),
    ],
)
def test_npz_structure_errors_are_one_line(tmp_path, capsys, arrays, message):
    path = write_npz(tmp_path / "d.npz", **arrays)
    code, err = run_cli(capsys, "train", "--dataset", f"npz:{path}", "--out", str(tmp_path / "r"))
    assert code == 2 and err.startswith("capsnet: error: ") and "\n" not in err
    assert message.replace("\\", "") in err or __import__("re").search(message, err), err


def test_a_corrupt_npz_is_named(tmp_path):
    path = tmp_path / "bad.npz"
    path.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match="bad.npz: not a readable .npz file"):
        load_npz(path)


def test_a_npy_file_given_as_npz_is_named(tmp_path):
    path = tmp_path / "images.npz"
    with path.open("wb") as f:
        np.save(f, np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(DataError, match="images.npz: a single .npy array, not an .npz of named"):
        load_npz(path)


def test_a_tiny_npz_dataset_trains_and_the_loss_drops(tmp_path):
    path = write_npz(tmp_path / "d.npz")
    train(tiny_cfg(f"npz:{path}"), tmp_path / "run")
    rows = (tmp_path / "run" / "history.csv").read_text().splitlines()[1:]
    losses = [float(r.split(",")[2]) for r in rows]
    assert losses[-1] < 0.7 * losses[0], losses
    assert dataset_spec(f"npz:{path}").class_names == ("top", "bottom")


def test_channels_converts_npz_images(tmp_path):
    path = write_npz(tmp_path / "d.npz")
    data = load_train(f"npz:{path}", val_size=4, options={"channels": 1})
    x, _ = load_test(f"npz:{path}", options={"channels": 1})
    assert data.image_shape == (1, 20, 20) and x.shape == (6, 1, 20, 20)


def test_export_of_a_folder_run_carries_its_class_names_and_policy(folder_run, tmp_path):
    import onnx

    run, _, _ = folder_run
    assert main(["export", str(run), "--onnx", str(tmp_path / "m.onnx")]) == 0
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert json.loads(props["class_names"]) == ["cat", "dog"]
    assert json.loads(props["image_policy"])["resize"] == "pad"


def test_explore_normalises_posted_images_as_the_run_was_trained(folder_run):
    run, _, _ = folder_run
    client = TestClient(load_explorer(run), base_url="http://127.0.0.1:8000")
    image = torch.zeros(3, 20, 20)
    image[:, :10] = 1.0  # bright on top, full contrast
    faint = image * 0.25 + 0.25  # the same image at a quarter of the contrast
    full = client.post("/api/predict", json={"pixels": image.flatten().tolist()}).json()
    low = client.post("/api/predict", json={"pixels": faint.flatten().tolist()}).json()
    assert low["scores"] == full["scores"]


def test_a_16_bit_picture_in_a_folder_reads_like_its_8_bit_copy(tmp_path):
    a = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(a).save(tmp_path / "8.png")
    Image.fromarray(a.astype(np.uint16) * 257).save(tmp_path / "16.png")
    assert (read_picture(tmp_path / "16.png", None) == read_picture(tmp_path / "8.png", None)).all()


# --- relative paths and the default validation size ------------------------------------


@pytest.mark.parametrize("kind", ["folder", "npz", "data-dir"])
def test_a_run_on_relative_paths_is_evaluated_from_another_directory(
    tmp_path, monkeypatch, mnist_dir, caplog, capsys, kind
):
    made, elsewhere = tmp_path / "made", tmp_path / "elsewhere"
    elsewhere.mkdir()
    if kind == "folder":
        write_folder(made / "shapes", 6)
        cfg, data = tiny_cfg("folder:shapes", epochs=1), made / "shapes"
    elif kind == "npz":
        made.mkdir()
        cfg, data = tiny_cfg("npz:shapes.npz", epochs=1), write_npz(made / "shapes.npz")
    else:
        data = Path(shutil.copytree(mnist_dir, made / "digits"))
        cfg = tiny_cfg("mnist", epochs=1, data_dir="digits", train_limit=16, test_limit=10)
    monkeypatch.chdir(made)
    with caplog.at_level(logging.INFO, logger="capsnet"):
        train(cfg, "run")
    assert "the run saves its paths as absolute: --dataset " in caplog.text
    saved = json.loads((made / "run" / "config.json").read_text())["train"]
    path = Path(saved["data_dir"] if kind == "data-dir" else saved["dataset"].partition(":")[2])
    assert path.is_absolute() and path.samefile(data)
    monkeypatch.chdir(elsewhere)
    assert main(["evaluate", str(made / "run"), "--test-limit", "10"]) == 0, capsys.readouterr()


def test_the_default_validation_size_fits_a_folder_of_60_images(tmp_path, caplog):
    root = write_folder(tmp_path / "data", 30)  # 2 classes × 30: 60 training images
    with caplog.at_level(logging.INFO, logger="capsnet"):
        cfg = dataclasses.replace(tiny_cfg(f"folder:{root}", epochs=1), val_size=None)
        metrics = train(cfg, tmp_path / "run")
    assert f"validation: 12 of the 60 training images of {root} held out" in caplog.text
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["val_size"] == 12
    assert metrics["train_examples"] == 48


def test_the_default_validation_size_fits_900_images_and_a_given_one_is_kept(tmp_path):
    labels = np.arange(900) % 2
    images = np.random.default_rng(0).integers(0, 256, (900, 8, 8), dtype=np.uint8)
    test = {"test_images": images[:4], "test_labels": labels[:4]}
    path = write_npz(tmp_path / "d.npz", images=images, labels=labels, **test)
    data = load_train(f"npz:{path}", max_shift=0)
    assert (data.held_out, len(data.val_y), data.size) == (90, 90, 810)
    data = load_train(f"npz:{path}", val_size=7, max_shift=0)
    assert (data.held_out, len(data.val_y), data.size) == (7, 7, 893)


def test_resume_takes_a_relative_dataset_as_the_runs_absolute_one(tmp_path, monkeypatch):
    write_folder(tmp_path / "shapes", 6)
    monkeypatch.chdir(tmp_path)
    train(tiny_cfg("folder:shapes", epochs=1), "run")
    resume = ["train", "--out", "run", "--resume", "--epochs", "2", "-q"]
    assert main([*resume, "--dataset", "folder:shapes"]) == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"] == 2


def test_capsnet_train_reads_an_npz_archive_once(tmp_path, monkeypatch):
    # the training data, the class names it saves, the test of the selected epoch and the
    # figures of the run all come from one Task: one read of the archive
    from capsnet.data import custom

    reads = []
    monkeypatch.setattr(custom, "load_npz", lambda path: reads.append(path) or load_npz(path))
    path = write_npz(tmp_path / "d.npz")
    tiny = [f"--model-option={k}={v}" for k, v in TINY.items() if k != "decoder_hidden"]
    argv = ["train", "--dataset", f"npz:{path}", "--out", str(tmp_path / "run"), *tiny]
    assert main([*argv, "--epochs", "1", "--batch-size", "8", "--val-size", "4"]) == 0
    assert len(reads) == 1, reads
    assert (tmp_path / "run" / "reconstructions.png").is_file()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["class_names"] == [
        "top",
        "bottom",
    ]


def test_an_npz_task_reads_its_archive_once_and_a_new_task_reads_it_again(tmp_path, monkeypatch):
    from capsnet.data import custom
    from capsnet.data.tasks import get_task

    reads = []
    monkeypatch.setattr(custom, "load_npz", lambda path: reads.append(path) or load_npz(path))
    path = write_npz(tmp_path / "d.npz")
    task = get_task(f"npz:{path}", {"channels": 1})
    assert not reads  # resolving a name checks its options and reads no data
    assert task.class_names == ("top", "bottom") and task.num_classes == 2
    data = task.load_train(val_size=4, max_shift=0)
    x, y = task.load_test(limit=3)
    assert task.record()["class_names"] == ["top", "bottom"]
    assert (data.image_shape, x.shape, len(y)) == ((1, 20, 20), (3, 1, 20, 20), 3)
    assert len(reads) == 1
    get_task(f"npz:{path}").load_test()  # nothing cached outside a Task
    assert len(reads) == 2


def test_get_task_refuses_unknown_names_and_options_and_test_only_training():
    from capsnet.data.tasks import get_task

    with pytest.raises(ConfigError, match="unknown dataset 'mnsit' .*did you mean"):
        get_task("mnsit")
    with pytest.raises(ConfigError, match="unknown option.*shfit"):
        get_task("multimnist", {"shfit": 2})
    task = get_task("affnist-generated")
    assert not task.trainable and task.class_names[3] == "3" and task.source == "mnist"
    with pytest.raises(ConfigError, match="a test set only"):
        task.load_train()
