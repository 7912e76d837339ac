"""Pretrained models: listing, sha256 verification, loading; every shipped model reproduces
its recorded accuracy on a fixed subset."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import capsnet.training.pretrained as pretrained
from capsnet.cli import main
from capsnet.data.tasks import load_test
from capsnet.errors import CheckpointError, ConfigError
from capsnet.models import create_model
from capsnet.models.checkpoint import save_checkpoint
from capsnet.targets import num_correct
from capsnet.tools.predict import predict
from capsnet.training.run import load_pretrained

SHIPPED = pretrained.list_pretrained()
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def shelf(tmp_path, monkeypatch):
    """A pretrained directory holding one tiny model, 'tiny'."""
    monkeypatch.setattr(pretrained, "ROOT", tmp_path)
    model = create_model("capsnet-small", conv1_channels=4, primary_types=2, decoder_hidden=(8,))
    (tmp_path / "tiny").mkdir()
    weights = tmp_path / "tiny" / pretrained.WEIGHTS
    save_checkpoint(weights, model.half(), "capsnet-small")
    manifest = {
        "name": "tiny",
        "model": "capsnet-small",
        "dataset": "mnist",
        "test_accuracy": 0.1,
        "float32_test_accuracy": 0.1,
        "float16_test_accuracy": 0.1,
        "test_examples": 10,
        "dtype": "float16",
        "sha256": pretrained.sha256(weights),
        "bytes": weights.stat().st_size,
        "origin": "nowhere",
        "description": "a test model",
        "subset_check": {"data_dir": None, "limit": 10, "accuracy": 0.1},
    }
    (tmp_path / "tiny" / pretrained.MANIFEST).write_text(json.dumps(manifest))
    return tmp_path / "tiny"


def test_list_and_load_a_float16_model_as_float32(shelf):
    assert [p.name for p in pretrained.list_pretrained()] == ["tiny"]
    model, config = load_pretrained("tiny")
    assert next(model.parameters()).dtype == torch.float32 and not model.training
    assert config.conv1_channels == 4


def test_a_changed_weights_file_is_refused(shelf):
    weights = shelf / pretrained.WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    with pytest.raises(CheckpointError, match="sha256 .* does not match"):
        load_pretrained("tiny")


def test_an_unknown_name_lists_the_shipped_ones(shelf):
    with pytest.raises(ConfigError, match="no pretrained model 'nope'; shipped: tiny"):
        pretrained.get_pretrained("nope")


@pytest.mark.parametrize("p", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_model_reproduces_its_recorded_subset_accuracy(p):
    model, _ = load_pretrained(p.name)
    check = p.subset_check
    data_dir = check["data_dir"] and REPO / check["data_dir"]
    x, y = load_test(p.dataset, data_dir, limit=check["limit"])
    accuracy = int(num_correct(predict(model, x.float() / 255), y)) / len(x)  # MultiMNIST: both
    assert accuracy == pytest.approx(check["accuracy"], abs=1e-9)


def test_manifests_describe_what_is_shipped():
    for p in SHIPPED:
        assert p.bytes == (p.path / pretrained.WEIGHTS).stat().st_size
        assert dataclasses.asdict(p)["dtype"] in ("float16", "float32")


def test_the_cli_lists_what_is_shipped(shelf, capsys):
    assert main(["pretrained"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("tiny\tcapsnet-small on mnist\t10.00% test")


@pytest.mark.parametrize("checkout", [False, True])
def test_the_listing_names_the_run_where_it_is_or_as_the_repositorys(
    shelf, tmp_path, monkeypatch, capsys, checkout
):
    monkeypatch.setattr(pretrained, "REPOSITORY", tmp_path / "repository")
    if checkout:  # a checkout of the repository: the run's directory is there
        (tmp_path / "repository" / "nowhere").mkdir(parents=True)
    assert main(["pretrained"]) == 0
    run = tmp_path / "repository" / "nowhere" if checkout else "nowhere in the capsnet repository"
    assert capsys.readouterr().out.strip().endswith(f"\t{shelf}\ttrained in {run}")


def test_tools_take_a_pretrained_name_and_write_nothing_into_the_package(
    shelf, mnist_dir, tmp_path, monkeypatch, capsys
):
    train = {"dataset": "mnist", "data_dir": None, "model": "capsnet-small"}
    (shelf / "config.json").write_text(json.dumps({"train": train}))
    (shelf / "history.csv").write_text("epoch,train_loss,train_accuracy\n1,0.5,0.8\n")
    before = sorted(shelf.iterdir())
    work = tmp_path / "work"  # where the user is: not the package's directory
    work.mkdir()
    monkeypatch.chdir(work)
    args = ["--data-dir", str(mnist_dir), "--test-limit", "20", "--device", "cpu"]
    assert main(["-q", "evaluate", "tiny", *args]) == 0
    assert "on 20 images" in capsys.readouterr().out
    assert main(["-q", "evaluate", "tiny", *args, "--out", "ev"]) == 0
    assert {p.name for p in (work / "ev").iterdir()} >= {"eval.json", "classes.json"}
    assert main(["-q", "figures", "tiny", "--data-dir", str(mnist_dir)]) == 0
    assert (work / "tiny-figures" / "coupling.png").is_file()
    assert sorted(shelf.iterdir()) == before


def test_a_name_that_is_neither_a_run_nor_shipped_is_one_line(shelf, capsys):
    assert main(["evaluate", "nope"]) == 2
    assert "no such run directory, checkpoint or pretrained model" in capsys.readouterr().err


def test_explore_without_a_run_opens_the_shipped_paper_network():
    from fastapi.testclient import TestClient

    from capsnet.cli.options import EXPLORE_DEFAULT
    from capsnet.tools.explore import load_explorer

    assert EXPLORE_DEFAULT == "capsnet-mnist" and pretrained.is_pretrained(EXPLORE_DEFAULT)
    client = TestClient(load_explorer(EXPLORE_DEFAULT), base_url="http://127.0.0.1")
    info = client.get("/api/info").json()
    assert info["class_dim"] == 16 and info["primary_types"] == 32
    assert info["primary_grid"] == [6, 6]  # 1152 capsules: 32 types on a 6×6 grid
