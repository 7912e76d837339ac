"""--model-option NAME=VALUE on the commands that load a model (``overrides`` in Python):
fields of the saved model config that keep the weights' names and shapes change as the
model loads; the rest are refused before any work."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from fastapi.testclient import TestClient
from tests.conftest import TINY_MODELS

import capsnet.tools.explore
from capsnet import create_model, list_models, load_run
from capsnet.cli import main
from capsnet.data import load_split
from capsnet.errors import ConfigError
from capsnet.models.checkpoint import load_checkpoint, save_checkpoint
from capsnet.nn.layers import normalise_input

PEAK = ["--model-option", "input_norm=peak"]
LOGGED = "model option input_norm='peak' (saved: 'none')"


@pytest.fixture(scope="module")
def images(mnist_dir) -> torch.Tensor:
    """Eight real test digits at a third of their contrast, as the models take them."""
    return load_split("mnist", "test", mnist_dir)[0][:8].float() / 255 / 3


def _same_weights(run: Path, **overrides) -> torch.nn.Module:
    """A model built with the run's config and ``overrides``, holding the run's weights."""
    saved, config = load_run(run)
    model = create_model("capsnet-small", **{**config.to_dict(), **overrides})
    model.load_state_dict(saved.state_dict())
    return model.eval()


@torch.no_grad()
def test_input_norm_changes_the_forward_exactly_as_normalise_input_says(tiny_run, images):
    model, config = load_run(tiny_run, overrides={"input_norm": "peak"})
    saved, _ = load_run(tiny_run)
    assert config.input_norm == "peak" and saved.config.input_norm == "none"
    scores = model(images).scores
    torch.testing.assert_close(scores, saved(normalise_input(images, "peak")).scores)
    torch.testing.assert_close(scores, _same_weights(tiny_run, input_norm="peak")(images).scores)
    assert not torch.allclose(scores, saved(images).scores)


@torch.no_grad()
def test_routing_iterations_changes_the_routing_only(tiny_run, images):
    model, config = load_run(tiny_run, overrides={"routing_iterations": 1})
    assert config.routing_iterations == 1
    one = _same_weights(tiny_run, routing_iterations=1)(images)
    torch.testing.assert_close(model(images).scores, one.scores)
    torch.testing.assert_close(model(images).coupling, one.coupling)
    assert not torch.allclose(model(images).coupling, load_run(tiny_run)[0](images).coupling)


def _one_line_error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("capsnet: error: ") and len(err.splitlines()) == 1, err
    return err


def test_a_field_that_changes_the_weights_is_refused_before_any_work(tiny_run, tmp_path, capsys):
    missing = tmp_path / "no-data-here"
    argv = ["evaluate", str(tiny_run), "--out", str(tmp_path / "e"), "--data-dir", str(missing)]
    err = _one_line_error(capsys, [*argv, *PEAK, "--model-option", "class_dim=8"])
    assert "model option class_dim=8: changes the weights (" in err, err
    assert "only fields that keep every weight's name and shape" in err
    assert str(missing) not in err and not (tmp_path / "e").exists()


def test_an_unknown_field_is_refused_with_a_did_you_mean(tiny_run, tmp_path, capsys):
    argv = ["predict", str(tiny_run), str(tmp_path / "x.npy"), "--model-option", "inpt_norm=peak"]
    err = _one_line_error(capsys, argv)
    assert "has no field 'inpt_norm' (did you mean input_norm?)" in err


def test_a_bad_value_is_refused_like_trains(tiny_run, capsys):
    argv = ["explore", str(tiny_run), "--port", "0", "--model-option", "input_norm=3"]
    err = _one_line_error(capsys, argv)
    assert "input_norm must be a string, found 3" in err


def _serve_nothing(monkeypatch) -> dict:
    """Make ``capsnet explore`` keep its app instead of serving it."""
    kept = {}
    monkeypatch.setattr(capsnet.tools.explore, "serve", lambda app, sock: kept.update(app=app))
    return kept


def _checks(tmp_path: Path, mnist_dir: Path, monkeypatch):
    """Per command: its arguments (less the run) and a check of what it wrote."""
    np.save(tmp_path / "digit.npy", np.zeros((28, 28), np.uint8))
    data = ["--data-dir", str(mnist_dir)]
    kept = _serve_nothing(monkeypatch)
    out = tmp_path / "out"

    def info() -> dict:
        return TestClient(kept["app"], base_url="http://127.0.0.1").get("/api/info").json()

    def metadata() -> dict:
        return {p.key: p.value for p in onnx.load(str(out / "m.onnx")).metadata_props}

    return {
        "evaluate": (
            ["--out", str(out), "--test-limit", "20", *data],
            lambda: json.loads((out / "eval.json").read_text())["overrides"],
        ),
        "predict": ([str(tmp_path / "digit.npy")], lambda: {"input_norm": "peak"}),
        "robustness": (
            ["--out", str(out), "--limit", "20", "--perturbations", "blur", *data],
            lambda: json.loads((out / "robustness.json").read_text())["overrides"],
        ),
        "figures": (
            ["--out", str(out), *data],
            lambda: {"input_norm": "peak"} if (out / "coupling.png").is_file() else {},
        ),
        "export": (
            ["--onnx", str(out / "m.onnx"), "--check-images", "0"],
            lambda: (
                {"input_norm": json.loads(metadata()["config"])["input_norm"]}
                | json.loads(metadata()["overrides"])
            ),
        ),
        "explore": (
            ["--port", "0"],
            lambda: {"input_norm": info()["model_config"]["input_norm"]} | info()["overrides"],
        ),
    }


COMMANDS = ["evaluate", "predict", "robustness", "figures", "export", "explore"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_that_loads_a_model_takes_the_option_and_records_it(
    command, tiny_run, tmp_path, mnist_dir, monkeypatch, caplog
):
    (tmp_path / "out").mkdir()
    argv, written = _checks(tmp_path, mnist_dir, monkeypatch)[command]
    with caplog.at_level("INFO", logger="capsnet"):
        assert main([command, str(tiny_run), *argv, *PEAK]) == 0
    assert caplog.messages.count(LOGGED) == 1
    assert written() == {"input_norm": "peak"}


def test_results_of_an_overridden_model_stay_out_of_its_run_directory(tiny_run, capsys):
    before = sorted(p.name for p in tiny_run.iterdir())
    err = _one_line_error(capsys, ["evaluate", str(tiny_run), *PEAK])
    assert "the run's own results are of the model as saved" in err and "--out" in err
    assert sorted(p.name for p in tiny_run.iterdir()) == before


def test_figures_of_an_overridden_model_stay_out_of_its_run_directory(tiny_run, capsys):
    before = sorted(p.name for p in tiny_run.iterdir())
    err = _one_line_error(capsys, ["figures", str(tiny_run), *PEAK])
    assert "the run's own figures show the model as saved" in err and "--out" in err
    assert sorted(p.name for p in tiny_run.iterdir()) == before


def test_the_config_returned_says_the_override_and_the_run_keeps_its_own(tiny_run):
    _, config = load_run(tiny_run, overrides={"routing_iterations": 5})
    saved = json.loads((tiny_run / "config.json").read_text())["model"]["config"]
    assert config.routing_iterations == 5 and saved["routing_iterations"] == 3


def test_removing_the_decoder_changes_the_weights(tiny_run):
    with pytest.raises(ConfigError, match=r"model option reconstruction=false: .*decoder"):
        load_run(tiny_run, overrides={"reconstruction": False, "input_norm": "peak"})


@pytest.mark.parametrize("name", list_models())
def test_every_family_takes_input_norm_and_refuses_another_class_count(name, tmp_path):
    path, model = tmp_path / "best.safetensors", create_model(name, **TINY_MODELS[name])
    save_checkpoint(path, model, name)
    assert load_checkpoint(path, overrides={"input_norm": "peak"}).config.input_norm == "peak"
    more = model.config.num_classes + 1
    with pytest.raises(ConfigError, match=f"model option num_classes={more}: changes the weights"):
        load_checkpoint(path, overrides={"num_classes": more})
