"""The run directories shipped with capsnet (pretrained models) and with the repository
(results/) load with this version: their saved training settings are all known to it."""

from pathlib import Path

import pytest

from capsnet.training import RunDir, TrainConfig
from capsnet.training.pretrained import ROOT

RESULTS = Path(__file__).resolve().parents[1] / "results"
SHIPPED = sorted(p.parent for p in [*ROOT.glob("*/config.json"), *RESULTS.glob("*/config.json")])


def test_runs_are_shipped():
    assert len([p for p in SHIPPED if p.parent == ROOT]) >= 5


@pytest.mark.parametrize("run", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_shipped_runs_training_config_loads(run):
    assert isinstance(RunDir(run).train, TrainConfig)
