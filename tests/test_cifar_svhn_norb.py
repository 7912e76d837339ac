"""CIFAR-10, SVHN and smallNORB readers and tasks on small files written here in the official
formats, and the capsnet-cifar10 network."""

import dataclasses
import gzip
import io
import tarfile

import numpy as np
import pytest
import torch
from scipy.io import savemat
from tests.conftest import TINY_CAPSNET
from tests.test_smallnorb import INT32, UBYTE, norb_bytes

from capsnet import create_model
from capsnet.cli import main
from capsnet.data.cifar10 import load_cifar10, parse_batch
from capsnet.data.custom import load_smallnorb48
from capsnet.data.smallnorb import PREFIX
from capsnet.data.svhn import load_svhn, read_svhn_mat
from capsnet.data.tasks import dataset_spec, load_test
from capsnet.errors import DataError
from capsnet.models.checkpoint import load_checkpoint, save_checkpoint
from capsnet.training import TrainConfig, train

# the paper text's reconstruction weight: these tests read a drop of the loss as learning,
# which the margin loss shows within a few steps and the reconstruction error does not
TINY = {**TINY_CAPSNET, "reconstruction_weight": 0.0005}


def patterns(n: int, channels: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, size, size) uint8: class 0 bright on top, class 1 bright at the bottom."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    x = rng.integers(0, 40, (n, channels, size, size), dtype=np.uint8)
    for i, k in enumerate(labels):
        rows = slice(0, size // 2) if k == 0 else slice(size // 2, size)
        x[i, :, rows] += 200
    return x, labels


def losses_drop(run) -> bool:
    rows = (run / "history.csv").read_text().splitlines()[1:]
    losses = [float(r.split(",")[2]) for r in rows]
    return losses[-1] < 0.7 * losses[0]


def tiny_train(dataset, data_dir, out, model="capsnet-small"):
    cfg = TrainConfig(dataset=dataset, data_dir=str(data_dir), model=model, model_overrides=TINY)
    cfg = dataclasses.replace(cfg, epochs=4, batch_size=8, val_size=4, lr=0.01, max_shift=0)
    return train(cfg, out)


# --- CIFAR-10 ---------------------------------------------------------------------------


def cifar_bytes(x: np.ndarray, y: np.ndarray) -> bytes:
    return b"".join(bytes([int(k)]) + image.tobytes() for image, k in zip(x, y, strict=True))


def write_cifar(directory, n=12, archive=False):
    files = {f"data_batch_{i}.bin": patterns(n, 3, 32, i) for i in range(1, 6)}
    files["test_batch.bin"] = patterns(n, 3, 32, 9)
    directory.mkdir(parents=True, exist_ok=True)
    if not archive:
        for name, (x, y) in files.items():
            (directory / name).write_bytes(cifar_bytes(x, y))
        return files
    with tarfile.open(directory / "cifar-10-binary.tar.gz", "w:gz") as tar:
        for name, (x, y) in files.items():
            data = cifar_bytes(x, y)
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return files


def test_cifar_records_are_label_then_red_green_blue_planes():
    record = bytes([7]) + bytes(range(256)) * 12  # 3,072 pixel bytes
    x, y = parse_batch(record, "r")
    assert y.tolist() == [7] and x.shape == (1, 3, 32, 32)
    assert x[0, 0, 0, 1] == 1 and x[0, 1, 0, 0] == 1024 % 256 and x[0, 2, 31, 31] == 255


@pytest.mark.parametrize("archive", [False, True])
def test_cifar_reads_bin_files_or_the_archive_in_place(tmp_path, archive):
    files = write_cifar(tmp_path / "cifar10", archive=archive)
    x, y = load_cifar10("train", tmp_path, download=False)
    assert x.shape == (60, 3, 32, 32) and y.shape == (60,)
    assert (x[:12].numpy() == files["data_batch_1.bin"][0]).all()
    assert load_cifar10("test", tmp_path, download=False)[0].shape == (12, 3, 32, 32)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[:-10], "36866 bytes is not a whole number of 3073-byte CIFAR-10 records"),
        (lambda b: b"\x0c" + b[1:], "label 12 out of range 0..9 \\(record 0\\)"),
    ],
)
def test_cifar_truncated_files_and_bad_labels_are_named(tmp_path, damage, message):
    write_cifar(tmp_path)
    path = tmp_path / "data_batch_3.bin"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError, match=f"data_batch_3.bin: {message}"):
        load_cifar10("train", tmp_path, download=False)


def test_cifar_missing_without_download_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("CAPSNET_DATA", raising=False)
    with pytest.raises(DataError, match="CIFAR-10 .* not found"):
        load_cifar10("train", tmp_path / "none", download=False)


def test_cifar10_task_trains_capsnet_cifar10_on_24x24_crops(tmp_path):
    write_cifar(tmp_path / "cifar10")
    metrics = tiny_train("cifar10", tmp_path, tmp_path / "run", model="capsnet-cifar10")
    assert losses_drop(tmp_path / "run")
    x, _ = load_test("cifar10", str(tmp_path))
    assert x.shape == (12, 3, 24, 24) and metrics["test_examples"] == 12
    assert dataset_spec("cifar10").class_names[0] == "airplane"
    model = load_checkpoint(tmp_path / "run" / "best.safetensors")
    assert model.config.none_of_the_above and model.config.in_channels == 3


# --- SVHN ------------------------------------------------------------------------------


def write_svhn(directory, n=12, **changes):
    directory.mkdir(parents=True, exist_ok=True)
    for split, seed in (("train", 0), ("test", 1)):
        x, y = patterns(n, 3, 32, seed)
        mat = {"X": x.transpose(2, 3, 1, 0), "y": np.where(y == 0, 10, y).reshape(-1, 1)}
        mat.update(changes)
        savemat(directory / f"{split}_32x32.mat", mat)


def test_svhn_reads_format_2_with_label_10_as_digit_0(tmp_path):
    write_svhn(tmp_path)
    x, y = load_svhn("train", tmp_path, download=False)
    expected, labels = patterns(12, 3, 32, 0)
    assert (x.numpy() == expected).all() and y.tolist() == labels.tolist()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"y": np.full((12, 1), 11)}, "labels must lie in 1..10"),
        ({"y": np.ones((5, 1))}, "5 labels for 12 images"),
        ({"X": np.zeros((32, 32, 12), np.uint8)}, "X must be uint8 \\(H, W, 3, N\\)"),
    ],
)
def test_svhn_structure_errors_are_named(tmp_path, changes, message):
    write_svhn(tmp_path, **changes)
    with pytest.raises(DataError, match=f"train_32x32.mat: {message}"):
        load_svhn("train", tmp_path, download=False)


def test_svhn_corrupt_file_is_named(tmp_path):
    (tmp_path / "train_32x32.mat").write_bytes(b"MATLAB 5.0 but then nothing")
    with pytest.raises(DataError, match="train_32x32.mat: not a readable MATLAB file"):
        read_svhn_mat(tmp_path / "train_32x32.mat")


def test_svhn_task_trains_and_the_loss_drops(tmp_path):
    write_svhn(tmp_path / "svhn")
    tiny_train("svhn", tmp_path, tmp_path / "run")
    assert losses_drop(tmp_path / "run")


# --- smallNORB -------------------------------------------------------------------------


def write_norb(directory, n=12):
    directory.mkdir(parents=True, exist_ok=True)
    for split, seed in (("train", 0), ("test", 1)):
        x, y = patterns(n, 2, 96, seed)
        (directory / f"{PREFIX[split]}-dat.mat").write_bytes(norb_bytes(UBYTE, x))
        cat = gzip.compress(norb_bytes(INT32, y.astype(np.int32)))
        (directory / f"{PREFIX[split]}-cat.mat.gz").write_bytes(cat)
    return directory


def test_smallnorb_is_downsampled_by_2x2_means(tmp_path):
    write_norb(tmp_path / "smallnorb")
    x, _ = load_smallnorb48("train", tmp_path)
    full, _ = patterns(12, 2, 96, 0)
    block = full[3, 1, 10:12, 20:22].astype(float).mean()
    assert x.shape == (12, 2, 48, 48) and x[3, 1, 5, 10] == round(block)


def test_smallnorb_task_trains_on_32x32_crops_and_tests_on_the_centre(tmp_path):
    write_norb(tmp_path / "smallnorb")
    tiny_train("smallnorb", tmp_path, tmp_path / "run")
    assert losses_drop(tmp_path / "run")
    x, y = load_test("smallnorb", str(tmp_path), options={"normalize": "none"})
    centre = load_smallnorb48("test", tmp_path)[0][:, :, 8:40, 8:40]
    assert x.shape == (12, 2, 32, 32) and torch.equal(x, centre)


def test_smallnorb_missing_is_a_one_line_error(tmp_path, capsys):
    argv = ["train", "--dataset", "smallnorb", "--data-dir", str(tmp_path / "none")]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("capsnet: error: smallNORB train files not found") and err.count("\n") == 1
    )


# --- capsnet-cifar10 -------------------------------------------------------------------


def test_capsnet_cifar10_is_the_papers_network_with_none_of_the_above():
    model = create_model("capsnet-cifar10")
    cfg = model.config
    assert (cfg.in_channels, cfg.input_size, cfg.primary_types) == (3, (24, 24), 64)
    out = model(torch.rand(2, 3, 24, 24))
    assert out.scores.shape == (2, 10) and out.coupling.shape == (2, 64 * 4 * 4, 10)
    assert (out.coupling.sum(-1) < 1).all()  # the rest went to none-of-the-above
    plain = create_model("capsnet-cifar10", none_of_the_above=False)
    assert torch.allclose(plain(torch.rand(1, 3, 24, 24)).coupling.sum(-1), torch.tensor(1.0))


def test_capsnet_cifar10_every_parameter_gets_a_gradient_and_it_round_trips(tmp_path):
    model = create_model("capsnet-cifar10", **TINY)
    x, y = torch.rand(3, 3, 24, 24), torch.tensor([0, 4, 9])
    loss, _ = model.loss(model(x, y), x, y)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    save_checkpoint(tmp_path / "m.safetensors", model, "capsnet-cifar10")
    again = load_checkpoint(tmp_path / "m.safetensors")
    assert torch.equal(again.eval()(x).scores, model.eval()(x).scores)
