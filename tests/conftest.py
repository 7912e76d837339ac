from pathlib import Path

import pytest
import torch

MNIST_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"real MNIST not found at {MNIST_DIR}")
    return MNIST_DIR


@pytest.fixture(scope="session")
def tiny_run(mnist_dir, tmp_path_factory) -> Path:
    """A run directory with a tiny CapsNet trained for one epoch on 200 real MNIST images."""
    from capsnet.train import TrainConfig, train

    run_dir = tmp_path_factory.mktemp("tiny-run")
    cfg = TrainConfig(
        dataset="mnist",
        data_dir=str(mnist_dir),
        model="capsnet-small",
        model_overrides={"conv1_channels": 16, "primary_types": 4, "decoder_hidden": (32,)},
        epochs=1,
        train_limit=200,
        val_size=100,
        test_limit=100,
        batch_size=50,
    )
    train(cfg, run_dir)
    return run_dir


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
