"""The oldest PyTorch pyproject allows is the one CI tests: ``.ci/run`` runs the suite on the
oldest Python with it (``TORCHES``), and the Makefile installs what ``TORCH`` names."""

import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _version(text: str) -> tuple[int, int]:
    major, minor = re.match(r"(\d+)\.(\d+)", text).groups()
    return int(major), int(minor)


def floor() -> tuple[int, int]:
    """(major, minor) of pyproject's ``torch>=X.Y``."""
    return _version(re.search(r'"torch>=([\d.]+)"', (ROOT / "pyproject.toml").read_text())[1])


def test_ci_tests_the_floor_pyproject_states():
    torches = re.search(r"^TORCHES=\((\S+)", (ROOT / ".ci" / "run").read_text(), re.M)[1]
    assert _version(torches) == floor()
    assert "torch==$(TORCH)" in (ROOT / "Makefile").read_text()


def test_the_torch_running_here_is_not_below_the_floor():
    assert _version(torch.__version__) >= floor()
