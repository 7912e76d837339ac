"""Table 1 runner: aggregation, files, reuse of finished runs."""

import csv
import dataclasses
import re

import pytest

from capsnet.errors import ConfigError
from capsnet.tools.experiments import Table1Config, mean_std, run_table1
from capsnet.training import TrainConfig


def test_mean_and_sample_std():
    mean, std = mean_std([0.1, 0.3])
    assert mean == pytest.approx(0.2) and std == pytest.approx(0.1 * 2**0.5)
    assert mean_std([0.25]) == (0.25, None)


@pytest.fixture
def cfg(mnist_dir) -> Table1Config:
    train = TrainConfig(
        data_dir=str(mnist_dir), epochs=1, batch_size=50, train_limit=50, val_size=20, test_limit=25
    )
    tiny = {"conv1_channels": 8, "primary_types": 2, "decoder_hidden": (16,)}
    return Table1Config(
        train=train, seeds=(0, 1), rows=("routing1-recon",), size="small", capsnet_overrides=tiny
    )


def test_table1_on_two_tiny_runs(cfg, tmp_path):
    md = run_table1(cfg, tmp_path)
    text = md.read_text()
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert links == [f"table1/routing1-recon/seed{s}/metrics.json" for s in (0, 1)]
    assert all((tmp_path / link).is_file() for link in links)
    assert "| CapsNet | 1 | yes |" in text and "±" in text and "0.29 ± 0.011" in text
    with (tmp_path / "table1.csv").open() as f:
        (row,) = csv.DictReader(f)
    errors = [float(e) for e in row["test_errors_pct"].split()]
    assert row["runs"] == "2" and float(row["test_error_mean_pct"]) == pytest.approx(
        sum(errors) / 2, abs=1e-4
    )
    # a second call reuses the finished runs; other settings in the same place are refused
    before = (tmp_path / links[0]).stat().st_mtime_ns
    run_table1(cfg, tmp_path)
    assert (tmp_path / links[0]).stat().st_mtime_ns == before
    other = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=2))
    with pytest.raises(ConfigError, match="other settings"):
        run_table1(other, tmp_path)


def test_unknown_rows_are_config_errors():
    with pytest.raises(ConfigError, match="unknown row"):
        Table1Config(rows=("routing2",))
