"""Learning-rate schedules, warm-up, weight decay and augmentation beyond the paper's
shifts (TrainConfig options, off by default)."""

import csv
import dataclasses
import json
import math

import pytest
import torch

from capsnet.data.transforms import Augmentation
from capsnet.errors import ConfigError
from capsnet.training import TrainConfig, train


def test_the_default_schedule_is_the_per_epoch_exponential_decay():
    cfg = TrainConfig(lr=0.001, lr_decay=0.5)
    assert [cfg.learning_rate(e, s, 10) for e, s in [(1, 0), (1, 9), (3, 4)]] == pytest.approx(
        [0.001, 0.001, 0.00025]
    )


def test_cosine_is_half_way_down_at_half_the_epochs():
    cfg = TrainConfig(lr=0.001, lr_schedule="cosine", epochs=4)
    assert cfg.learning_rate(1, 0, 10) == pytest.approx(0.001)  # cos 0 = 1
    assert cfg.learning_rate(3, 0, 10) == pytest.approx(0.0005)  # t = 2 of 4: cos(π/2) = 0
    assert cfg.learning_rate(4, 9, 10) == pytest.approx(0.0005 * (1 + math.cos(0.975 * math.pi)))


def test_warm_up_rises_linearly_per_step_and_never_starts_at_zero():
    cfg = TrainConfig(lr=0.001, lr_decay=1.0, warmup_epochs=2)
    assert cfg.learning_rate(1, 0, 10) == pytest.approx(0.001 * 0.1 / 2)  # t = 0: (0 + 1/10) / 2
    assert cfg.learning_rate(2, 4, 10) == pytest.approx(0.001 * 1.5 / 2)  # t = 1.4
    assert cfg.learning_rate(2, 9, 10) == pytest.approx(0.001)  # t = 1.9: (1.9 + 0.1) / 2
    assert cfg.learning_rate(3, 0, 10) == pytest.approx(0.001)


def test_augmentation_is_off_unless_asked():
    assert TrainConfig().augmentation() is None
    assert TrainConfig(rotation=10).augmentation() == Augmentation(0, 10.0, 0.0, 0.0)


@pytest.mark.parametrize(
    "bad",
    [{"lr_schedule": "step"}, {"warmup_epochs": -1}, {"weight_decay": -0.1}, {"scale": 1.5}],
)
def test_bad_schedule_or_augmentation_settings_are_config_errors(bad):
    with pytest.raises(ConfigError):
        TrainConfig(**bad)


def test_a_run_with_every_option_trains_and_records_its_learning_rates(tiny_cfg, tmp_path):
    cfg = dataclasses.replace(
        tiny_cfg, epochs=2, lr_schedule="cosine", warmup_epochs=0.5, weight_decay=0.01,
        rotation=10, scale=0.1, elastic=8, squeeze=0.2, erase=4,
    )  # fmt: skip
    metrics = train(cfg, tmp_path / "run")
    assert 0 <= metrics["test_accuracy"] <= 1
    with open(tmp_path / "run" / "history.csv") as f:
        lrs = [float(row["lr"]) for row in csv.DictReader(f)]
    steps = -(-cfg.train_limit // cfg.batch_size)
    assert lrs == pytest.approx([cfg.learning_rate(e, 0, steps) for e in (1, 2)])


def test_precision_auto_is_bf16_only_where_the_cpu_computes_it_natively(monkeypatch):
    import capsnet.runtime as runtime

    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert runtime.resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    assert runtime.resolve_precision("auto", cpu) == "fp32"
    assert runtime.resolve_precision("fp16", cpu) == "fp16"  # others unchanged


def test_a_run_records_what_precision_auto_chose(tiny_cfg, tmp_path, monkeypatch):
    import capsnet.runtime as runtime

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    metrics = train(dataclasses.replace(tiny_cfg, precision="auto", device="cpu"), tmp_path / "r")
    assert metrics["precision"] == "fp32"
    assert json.loads((tmp_path / "r" / "config.json").read_text())["train"]["precision"] == "fp32"
