"""Pretrained models shipped inside the package (nothing is downloaded at run time).

Each model is a directory ``src/capsnet/pretrained/<name>/`` laid out like a run directory
(``config.json``, ``best.safetensors``, ``metrics.json``, ``history.csv``, ``command.txt``)
plus ``pretrained.json``: what it is, where it came from and the sha256 of its weights,
which ``verified_path`` (and so ``capsnet.load_pretrained``) verifies before reading them.
``scripts/ship_model.py`` makes one from a finished run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capsnet.errors import CheckpointError, ConfigError
from capsnet.files import read_json

ROOT = Path(__file__).resolve().parents[1] / "pretrained"  # src/capsnet/pretrained
REPOSITORY = ROOT.parents[2]  # src/capsnet/pretrained → the repository, in a checkout of it
MANIFEST, WEIGHTS = "pretrained.json", "best.safetensors"


@dataclass(frozen=True)
class Pretrained:
    """One shipped model, as its ``pretrained.json`` describes it."""

    name: str
    model: str
    dataset: str
    test_accuracy: float  # of the shipped weights, full test set
    float32_test_accuracy: float  # of the run's weights before rounding
    float16_test_accuracy: float  # of the weights rounded to float16
    test_examples: int
    dtype: str  # of the shipped weights: float16 if within ±0.02 points, else float32
    sha256: str
    bytes: int
    origin: str  # the run's directory in the repository's results/
    description: str
    # accuracy of the shipped weights on a fixed subset the tests re-check:
    # {"data_dir": path relative to the repository or null, "limit": N, "accuracy": a}
    subset_check: dict[str, Any]

    @property
    def path(self) -> Path:
        return ROOT / self.name

    @property
    def run(self) -> str:
        """Where the run it came from is: its directory where this copy of capsnet is a
        checkout of the repository holding it; else (an installed copy) ``origin`` marked
        as a path within the capsnet repository."""
        local = REPOSITORY / self.origin
        return str(local) if local.is_dir() else f"{self.origin} in the capsnet repository"


def _read(directory: Path) -> Pretrained:

    manifest = read_json(directory / MANIFEST)
    try:
        return Pretrained(**manifest)
    except TypeError as e:
        raise CheckpointError(f"{directory / MANIFEST}: not a pretrained manifest ({e})") from None


def list_pretrained() -> list[Pretrained]:
    """Every shipped model, by name."""
    if not ROOT.is_dir():
        return []
    return [_read(d) for d in sorted(ROOT.iterdir()) if (d / MANIFEST).is_file()]


def is_pretrained(name: str) -> bool:
    """Whether ``name`` is a shipped model (a bare name, not a path)."""
    return "/" not in name and (ROOT / name / MANIFEST).is_file()


def get_pretrained(name: str) -> Pretrained:
    """The shipped model called ``name``; ConfigError listing the names if there is none."""
    for p in list_pretrained():
        if p.name == name:
            return p
    names = ", ".join(p.name for p in list_pretrained()) or "none"
    raise ConfigError(f"no pretrained model '{name}'; shipped: {names}")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified_path(name: str) -> Path:
    """The directory of a shipped model after checking its weights' sha256."""
    p = get_pretrained(name)
    weights = p.path / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{weights}: pretrained weights missing")
    actual = sha256(weights)
    if actual != p.sha256:
        raise CheckpointError(f"{weights}: sha256 {actual} does not match {MANIFEST} ({p.sha256})")
    return p.path
