"""Fine-tuning (``--init RUN``): a new run starting from another run's model and weights."""

import dataclasses
import json
import logging
import re
import shutil

import pytest
import torch

from capsnet.cli import main
from capsnet.errors import ConfigError
from capsnet.models.checkpoint import load_checkpoint
from capsnet.training import Run, train
from capsnet.training.finetune import model_for_data, starting_model


@pytest.fixture
def init_cfg(tiny_run):
    """Run A (the session's tiny run)'s own settings, fine-tuning A for one epoch."""
    return dataclasses.replace(Run(tiny_run).train, init=str(tiny_run), model_overrides={})


def test_the_init_model_is_the_runs_best_model(init_cfg, tiny_run, tmp_path):
    start = starting_model(init_cfg, Run(tmp_path / "b", names=False), resuming=False)
    best = load_checkpoint(tiny_run / "best.safetensors")
    assert start.config == best.config and start.config.conv1_channels == 16  # not default
    weights = best.state_dict()
    assert all(torch.equal(v, weights[k]) for k, v in start.state_dict().items())


def test_a_fine_tuning_run_starts_with_the_init_weights(init_cfg, tiny_run, tmp_path, caplog):
    # An lr of 1e-30 leaves every float32 weight as it was (to 1e-20): the run's weights,
    # validation and test accuracies (the same splits) are then run A's own.
    with caplog.at_level(logging.INFO, logger="capsnet"):
        metrics = train(dataclasses.replace(init_cfg, lr=1e-30), out := tmp_path / "b")
    a_metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["best_val_accuracy"] == a_metrics["best_val_accuracy"]
    assert metrics["test_accuracy"] == a_metrics["test_accuracy"]
    assert f"initialised from {tiny_run}" in caplog.text
    b, a = (load_checkpoint(r / "best.safetensors").state_dict() for r in (out, tiny_run))
    assert all(torch.allclose(v, a[k], rtol=0, atol=1e-20) for k, v in b.items())


def test_the_run_records_init_as_an_absolute_path(init_cfg, tiny_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny_run.parent)
    train(dataclasses.replace(init_cfg, init=tiny_run.name), tmp_path / "b")
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config["train"]["init"] == str(tiny_run)
    assert config["model"] == json.loads((tiny_run / "config.json").read_text())["model"]


@pytest.mark.parametrize(
    ("shape", "classes", "wrong"),
    [((1, 36, 36), 10, "input_size [28, 28] in the model, [36, 36] in the data"),
     ((1, 28, 28), 5, "num_classes 10 in the model, 5 in the data")],
)  # fmt: skip
def test_data_the_init_model_does_not_take_is_refused(init_cfg, tiny_run, shape, classes, wrong):
    start = load_checkpoint(tiny_run / "best.safetensors")
    said = re.escape(f"init {tiny_run}: its model does not take mnist (") + ".*" + re.escape(wrong)
    with pytest.raises(ConfigError, match=said):
        model_for_data(init_cfg, start, shape, classes)


def test_another_model_than_the_inits_is_refused(init_cfg, tmp_path):
    cfg = dataclasses.replace(init_cfg, model="capsnet-mnist")
    with pytest.raises(ConfigError, match="holds a capsnet-small, not the model capsnet-mnist"):
        starting_model(cfg, Run(tmp_path / "b", names=False), resuming=False)


def test_model_options_that_keep_the_weights_apply_as_the_init_loads(init_cfg, tmp_path):
    cfg = dataclasses.replace(init_cfg, model_overrides={"input_norm": "peak"})
    assert starting_model(cfg, Run(tmp_path, names=False), False).config.input_norm == "peak"
    cfg = dataclasses.replace(init_cfg, model_overrides={"conv1_channels": 8})
    with pytest.raises(ConfigError, match="conv1_channels=8: changes the weights"):
        starting_model(cfg, Run(tmp_path, names=False), False)


def test_resuming_a_fine_tuning_run_does_not_read_the_init_again(init_cfg, tiny_run, tmp_path):
    init = tmp_path / "a"
    shutil.copytree(tiny_run, init)
    train(dataclasses.replace(init_cfg, init=str(init)), tmp_path / "b")
    shutil.rmtree(init)  # a resume that read it would fail
    metrics = train(dataclasses.replace(init_cfg, epochs=2), tmp_path / "b", resume=True)
    assert metrics["epochs"] == 2 and Run(tmp_path / "b").train.init == str(init)


DATA = ["--dataset", "mnist", "--epochs", "1", "--train-limit", "60", "--val-size", "30"]
DATA += ["--test-limit", "30"]


def test_cli_init_takes_the_init_model_records_it_and_resumes(tiny_run, mnist_dir, tmp_path):
    argv = ["train", "--init", str(tiny_run), "--out", str(tmp_path / "b")]
    argv += [*DATA, "--data-dir", str(mnist_dir), "--blur", "1"]
    assert main(argv) == 0
    train_cfg = json.loads((tmp_path / "b" / "config.json").read_text())["train"]
    assert (train_cfg["init"], train_cfg["model"], train_cfg["blur"]) == (
        str(tiny_run),
        "capsnet-small",
        1.0,
    )
    assert main([*argv, "--resume", "--epochs", "2"]) == 0  # the same --init, given again


@pytest.mark.parametrize(
    ("more", "said"),
    [(["--model", "capsnet-mnist"], "holds a capsnet-small, not the model capsnet-mnist"),
     (["--model-option", "conv1_channels=8"], "conv1_channels=8: changes the weights")],
)  # fmt: skip
def test_cli_refuses_another_model_or_options_changing_its_weights(
    tiny_run, mnist_dir, tmp_path, capsys, more, said
):
    argv = ["train", "--init", str(tiny_run), "--out", str(tmp_path / "b"), *DATA, *more]
    capsys.readouterr()
    assert main([*argv, "--data-dir", str(mnist_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("capsnet: error: ") and said in err and "\n" not in err, err


def test_cli_refuses_a_missing_init_before_any_work(tmp_path, capsys):
    capsys.readouterr()
    assert main(["train", "--init", str(tmp_path / "none"), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"capsnet: error: {tmp_path / 'none'}: no such run directory, checkpoint or "
        "pretrained model (`capsnet pretrained` lists those shipped)"
    )
    assert not (tmp_path / "b").exists()
