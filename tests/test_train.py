import dataclasses
import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from capsnet import load_run
from capsnet.errors import CheckpointError, ConfigError
from capsnet.files import exclusive_lock
from capsnet.training import Run, RunDir, TrainConfig, train
from capsnet.training.rundir import LOCK

TINY = {"conv1_channels": 16, "primary_types": 4, "decoder_hidden": (32,)}


@pytest.fixture
def cfg(tiny_cfg) -> TrainConfig:
    return dataclasses.replace(
        tiny_cfg,
        model_overrides=TINY,
        epochs=2,
        lr=3e-3,
        train_limit=300,
        val_size=100,
        test_limit=100,
    )


def test_tiny_training_on_real_mnist_lowers_the_loss(cfg, tmp_path):
    metrics = train(dataclasses.replace(cfg, epochs=3, train_limit=600), tmp_path / "run")
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    losses = [float(row.split(",")[2]) for row in history[1:]]
    assert len(losses) == 3 and losses[0] > losses[1] > losses[2]
    assert losses[2] < 0.8 * losses[0]
    assert 0 <= metrics["test_accuracy"] <= 1 and metrics["test_examples"] == 100
    assert metrics["test_error"] == pytest.approx(1 - metrics["test_accuracy"])


def test_run_directory_holds_what_a_run_needs(cfg, tmp_path):
    train(cfg, tmp_path)
    for name in ("config.json", "metrics.json", "history.csv", "best.safetensors"):
        assert (tmp_path / name).is_file(), name
    model, config = load_run(tmp_path)
    assert not model.training and config.conv1_channels == 16
    assert model(torch.rand(2, 1, 28, 28)).scores.shape == (2, 10)


def test_seeded_runs_are_reproducible(cfg, tmp_path):
    train(cfg, tmp_path / "a")
    train(cfg, tmp_path / "b")
    a, b = (load_file(str(tmp_path / r / "last.safetensors")) for r in "ab")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_resume_continues_exactly_where_it_stopped(cfg, tmp_path):
    train(cfg, tmp_path / "full")
    train(dataclasses.replace(cfg, epochs=1), tmp_path / "split")
    train(cfg, tmp_path / "split", resume=True)
    a, b = (load_file(str(tmp_path / r / "last.safetensors")) for r in ("full", "split"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_an_existing_run_is_never_overwritten_unasked(cfg, tmp_path):
    train(dataclasses.replace(cfg, epochs=1), tmp_path)
    before = (tmp_path / "metrics.json").read_bytes()
    with pytest.raises(CheckpointError, match="already holds a run"):
        train(cfg, tmp_path)
    assert (tmp_path / "metrics.json").read_bytes() == before


def test_a_second_training_into_a_run_being_trained_stops_before_any_work(cfg, tmp_path):
    train(dataclasses.replace(cfg, epochs=1), tmp_path)
    before = (tmp_path / "last.safetensors").read_bytes()
    held = exclusive_lock(tmp_path, LOCK, "a test holds it")  # as a training process would
    with held, pytest.raises(CheckpointError, match="another process is training into this run"):
        train(cfg, tmp_path, resume=True)
    assert (tmp_path / "last.safetensors").read_bytes() == before
    train(cfg, tmp_path, resume=True)  # the lock ended with its holder
    train(cfg, tmp_path, overwrite=True)  # the lock's empty file is not another file


def test_the_lock_leaves_nothing_where_nothing_was_written(tmp_path):
    with exclusive_lock(tmp_path / "new", LOCK, "unused"):
        assert (tmp_path / "new" / LOCK).is_file()
    assert not (tmp_path / "new").exists()


def test_resume_needs_a_run(cfg, tmp_path):
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(cfg, tmp_path, resume=True)


def test_corrupt_checkpoint_is_a_one_line_error(tmp_path):
    (tmp_path / "best.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="not a readable safetensors file") as e:
        load_run(tmp_path)
    assert "\n" not in str(e.value)


def test_checkpoint_that_does_not_match_its_config_is_rejected(cfg, tmp_path):
    train(dataclasses.replace(cfg, epochs=1), tmp_path)
    path = tmp_path / "best.safetensors"
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    tensors["conv1.weight"] = tensors["conv1.weight"][:8]
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match="do not match"):
        load_run(path)


def test_not_a_run_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not a run directory"):
        load_run(tmp_path)


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError, match="lr"):
        TrainConfig(lr_decay=1.5)


def test_files_are_written_with_the_umasks_permissions(tmp_path):
    import os

    from capsnet.files import write_json

    old = os.umask(0o027)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640


class _CtrlC:
    """A progress display whose first update raises KeyboardInterrupt, as Ctrl-C would."""

    def __init__(self, **_):
        pass

    def update(self, n=1):
        raise KeyboardInterrupt

    def set_postfix(self, *args, **kwargs):
        pass

    def close(self):
        pass


def test_a_run_stopped_in_its_first_epoch_resumes_from_its_start(cfg, tmp_path):
    cfg = dataclasses.replace(cfg, epochs=1)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "stopped", progress=_CtrlC)
    assert (tmp_path / "stopped" / "config.json").is_file()
    assert not (tmp_path / "stopped" / "train_state.json").exists()
    with pytest.raises(CheckpointError, match="already holds a run"):
        train(cfg, tmp_path / "stopped")  # the message names --resume, which now works
    train(cfg, tmp_path / "stopped", resume=True)
    train(cfg, tmp_path / "fresh")
    a, b = (load_file(str(tmp_path / r / "last.safetensors")) for r in ("stopped", "fresh"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_a_training_run_says_where_it_found_and_loaded_its_data_once(cfg, tmp_path, caplog):
    from capsnet.data import sources

    caplog.set_level(logging.DEBUG, logger="capsnet")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sources, "_SAID", set())  # nothing said yet in this process
        train(dataclasses.replace(cfg, epochs=1), tmp_path)
        Run(tmp_path).test_set(limit=10)  # the figures of `capsnet train` read it again
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    for said in ("dataset 'mnist' found in", "loaded mnist train", "loaded mnist test"):
        assert sum(m.startswith(said) for m in info) == 1, said


def test_a_run_made_with_the_defaults_is_recognised_as_its_config(
    cfg, mnist_dir, tmp_path, monkeypatch
):
    monkeypatch.chdir(mnist_dir.parent)
    new = dataclasses.replace(
        cfg, epochs=1, val_size=None, precision="auto", data_dir=mnist_dir.name
    )
    train(new, tmp_path)
    saved = RunDir(tmp_path).train  # what the run chose: 300 of the fixture's 3,000 (or 5,000)
    assert saved.val_size in (300, 5000) and saved.precision in ("fp32", "bf16")
    assert Path(saved.data_dir).is_absolute()
    assert json.loads(json.dumps(new.as_saved_by(saved).to_dict())) == saved.to_dict()
