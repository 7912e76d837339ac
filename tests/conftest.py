from pathlib import Path

import pytest
import torch

MNIST_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


@pytest.fixture
def mnist_dir() -> Path:
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"real MNIST not found at {MNIST_DIR}")
    return MNIST_DIR


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
