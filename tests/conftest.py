import contextlib
import dataclasses
import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch

from capsnet.cli import main
from capsnet.training import TrainConfig, train

# One intra-op thread: on a shared machine (other jobs on the cores) OpenMP threads that wait
# for each other make small tensor ops up to 100× slower; one thread never waits.
torch.set_num_threads(1)

# 3,000 + 1,000 real MNIST digits shipped with the tests (see tests/data/mnist-subset/README.md).
# CAPSNET_TEST_MNIST=DIR runs the same tests on another copy of MNIST (e.g. the full dataset).
MNIST_DIR = Path(__file__).resolve().parent / "data" / "mnist-subset"


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    directory = Path(os.environ.get("CAPSNET_TEST_MNIST", MNIST_DIR))
    if not (directory / "t10k-images-idx3-ubyte.gz").is_file():
        raise FileNotFoundError(f"MNIST test data not found in {directory}")
    return directory


TINY_CAPSNET = {"conv1_channels": 8, "primary_types": 2, "decoder_hidden": (16,)}
_TINY_EM = {"conv1_channels": 4, "primary_types": 2, "caps1_types": 2, "caps2_types": 2}
_TINY_BASELINE = {"conv_channels": (4, 4, 2), "hidden": (16, 8)}
# Tiny overrides of every registered model (tests/test_matrix.py checks none is missing).
TINY_MODELS = {
    "aff-capsnet": {**TINY_CAPSNET, "routing_iterations": 2},
    "aff-capsnet-small": TINY_CAPSNET,
    "capsnet-cifar10": TINY_CAPSNET,  # channels and size come from the data
    "capsnet-mnist": TINY_CAPSNET,
    "capsnet-small": TINY_CAPSNET,
    "efficient-capsnet": {"stem_channels": (4, 8, 8, 16), "decoder_hidden": (16,)},
    "efficient-capsnet-p4": {"stem_channels": (2, 4, 4, 8), "decoder_hidden": (16,)},
    "em-capsnet": {**_TINY_EM, "routing_iterations": 2},
    "em-capsnet-small": {**_TINY_EM, "routing_iterations": 2},
    "baseline-cnn": _TINY_BASELINE,
    "baseline-cnn-small": _TINY_BASELINE,
}


@pytest.fixture(scope="session")
def tiny_cfg(mnist_dir) -> TrainConfig:
    """One epoch of a tiny CapsNet on 60 real MNIST images (tests replace what they need)."""
    return TrainConfig(
        dataset="mnist",
        data_dir=str(mnist_dir),
        model="capsnet-small",
        model_overrides=TINY_CAPSNET,
        epochs=1,
        batch_size=50,
        train_limit=60,
        val_size=30,
        test_limit=30,
    )


@pytest.fixture
def tiny_cli_train(mnist_dir, tmp_path):
    """``capsnet train`` of a tiny CapsNet for one epoch on 60 real MNIST images with
    ``options`` added; asserts it succeeds and returns the ``train`` settings it saved."""

    def run(*options: str) -> dict:
        out = tmp_path / "run"
        tiny = ["--model", "capsnet-small", "--model-option", "conv1_channels=8"]
        tiny += ["--model-option", "primary_types=2", "--batch-size", "50", "--epochs", "1"]
        tiny += ["--train-limit", "60", "--val-size", "30", "--test-limit", "30"]
        data = ["--dataset", "mnist", "--data-dir", str(mnist_dir), "--out", str(out)]
        assert main(["train", *data, *tiny, *options]) == 0
        return json.loads((out / "config.json").read_text())["train"]

    return run


@pytest.fixture(scope="session")
def tiny_run(tiny_cfg, tmp_path_factory) -> Path:
    """A run directory with a tiny CapsNet trained for one epoch on 200 real MNIST images."""
    run_dir = tmp_path_factory.mktemp("tiny-run")
    overrides = {"conv1_channels": 16, "primary_types": 4, "decoder_hidden": (32,)}
    cfg = dataclasses.replace(
        tiny_cfg, model_overrides=overrides, train_limit=200, val_size=100, test_limit=100
    )
    train(cfg, run_dir)
    return run_dir


@pytest.fixture
def native_kernels(monkeypatch) -> None:
    """Native kernels on (whatever CAPSNET_NATIVE says outside); the test is skipped where
    no C++ compiler is found (there the callers take their PyTorch paths)."""
    monkeypatch.delenv("CAPSNET_NATIVE", raising=False)
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("no C++ compiler")


@pytest.fixture
def two_threads():
    """Two intra-op threads for one test (the native kernels split examples among them)."""
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@contextlib.contextmanager
def serving(server, sock):
    """Run a uvicorn ``server`` on the listening ``sock`` in a thread while the block runs."""
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


# Tests marked ``cuda`` (tests/test_cuda.py) run where PyTorch sees a CUDA GPU, or where
# CAPSNET_TEST_DEVICE names the device that takes the GPU's place (``cpu``: a check of the
# tests' own logic); elsewhere they are deselected, so they neither run nor count as skipped.
def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "cuda: capsnet on a CUDA GPU against the CPU")


def pytest_collection_modifyitems(config, items) -> None:
    if torch.cuda.is_available() or "CAPSNET_TEST_DEVICE" in os.environ:
        return
    gpu = [item for item in items if item.get_closest_marker("cuda")]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [item for item in items if not item.get_closest_marker("cuda")]
