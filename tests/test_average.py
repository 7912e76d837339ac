"""`capsnet average`: the weighted mean of several runs' weights, written as a run."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from tests.conftest import TINY_MODELS
from tests.test_bad_input import files, one_line_error

from capsnet.cli import main
from capsnet.models.checkpoint import load_checkpoint, save_checkpoint
from capsnet.tools.average import average_weights
from capsnet.training import Run, train


def test_the_mean_is_weighted_and_counters_come_from_the_first():
    a = {"w": torch.tensor([1.0, 3.0]), "steps": torch.tensor(5)}
    b = {"w": torch.tensor([3.0, 7.0]), "steps": torch.tensor(9)}
    mean = average_weights([a, b], [1, 3])  # 1/4 of a, 3/4 of b
    assert torch.equal(mean["w"], torch.tensor([2.5, 6.0])) and mean["steps"] == 5


def test_weights_are_equal_by_default():
    mean = average_weights([{"w": torch.tensor([0.0, 2.0])}, {"w": torch.tensor([4.0, 6.0])}])
    assert torch.equal(mean["w"], torch.tensor([2.0, 4.0]))


@pytest.mark.parametrize("weights", [[1.0], [1.0, -1.0], [0.0, 0.0]])
def test_weights_must_be_one_non_negative_number_per_model_with_a_positive_sum(weights):
    states = [{"w": torch.zeros(2)}, {"w": torch.ones(2)}]
    with pytest.raises(ValueError, match="non-negative numbers with a positive sum"):
        average_weights(states, weights)


def test_models_with_other_weights_are_refused():
    with pytest.raises(ValueError, match=r"w is \(3,\) in model 2, \(2,\) in model 1"):
        average_weights([{"w": torch.zeros(2)}, {"w": torch.zeros(3)}])


def shifted_copy(run: Path, to: Path, shift: float = 0.0, **overrides) -> Path:
    """A copy of ``run`` whose floating-point weights are all ``shift`` higher, and whose
    model config has ``overrides``."""
    shutil.copytree(run, to)
    model = load_checkpoint(run / "best.safetensors", overrides=overrides)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t += shift
    save_checkpoint(to / "best.safetensors", model, model.name)
    config = json.loads((to / "config.json").read_text())
    config["model"]["config"] = model.config.to_dict()
    (to / "config.json").write_text(json.dumps(config))
    return to


def test_the_mean_of_two_runs_is_a_run_every_tool_reads(tiny_run, tmp_path, mnist_dir):
    other = shifted_copy(tiny_run, tmp_path / "other", shift=1.0)
    out = tmp_path / "mean"
    argv = ["average", str(tiny_run), str(other), "--weights", "3", "1", "--out", str(out)]
    assert main(argv) == 0
    first = load_checkpoint(tiny_run / "best.safetensors").state_dict()
    mean = Run(out).load_model().state_dict()
    for key, t in first.items():  # 3/4 of the run, 1/4 of the run + 1
        assert torch.allclose(mean[key], t + 0.25 if t.is_floating_point() else t), key
    averaged = json.loads((out / "config.json").read_text())["averaged"]
    assert averaged["runs"] == [str(tiny_run), str(other)] and averaged["weights"] == [0.75, 0.25]
    assert main(["-q", "evaluate", str(out), "--data-dir", str(mnist_dir)]) == 0
    assert main(["-q", "figures", str(out), "--out", str(tmp_path / "figs")]) == 0


def test_runs_whose_model_configs_differ_need_a_model_option(tiny_run, tmp_path, capsys):
    other = shifted_copy(tiny_run, tmp_path / "other", input_norm="autolevels")
    out = tmp_path / "mean"
    err = one_line_error(capsys, ["average", str(tiny_run), str(other), "--out", str(out)])
    assert f"{other}: model config differs" in err and "input_norm 'autolevels'" in err
    assert not out.exists()
    option = ["--model-option", "input_norm=autolevels"]
    assert main(["average", str(tiny_run), str(other), "--out", str(out), *option]) == 0


def test_runs_of_two_models_are_refused(tiny_run, tiny_cfg, tmp_path, capsys):
    cnn = tmp_path / "cnn"
    tiny = {"model": "baseline-cnn-small", "model_overrides": TINY_MODELS["baseline-cnn-small"]}
    train(dataclasses.replace(tiny_cfg, **tiny), cnn)
    err = one_line_error(capsys, ["average", str(tiny_run), str(cnn), "--out", str(tmp_path / "m")])
    assert f"{cnn}: holds a baseline-cnn-small" in err and "only runs of one model" in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--weights", "1"], "--weights: 1 given for 2 runs"),
        (["--weights", "0", "0"], "--weights: at least one must be above 0"),
    ],
)
def test_bad_weights_are_refused_before_any_run_loads(tmp_path, capsys, extra, message):
    argv = ["average", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "m")]
    assert message in one_line_error(capsys, [*argv, *extra])


def test_a_run_is_never_overwritten_by_a_mean(tiny_run, tmp_path, capsys):
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    before = files(run)
    argv = ["average", str(tiny_run), str(tiny_run), "--out", str(run)]
    assert "exists; use --overwrite" in one_line_error(capsys, argv)
    err = one_line_error(capsys, [*argv, "--overwrite"])
    assert "holds a trained run (metrics.json, history.csv" in err
    assert files(run) == before


def test_a_mean_is_never_written_over_one_it_averages(tiny_run, tmp_path, capsys):
    mean = tmp_path / "mean"
    assert main(["average", str(tiny_run), str(tiny_run), "--out", str(mean)]) == 0
    before = files(mean)
    argv = ["average", str(mean), str(tiny_run), "--out", str(mean), "--overwrite"]
    assert "is the directory of" in one_line_error(capsys, argv)
    assert files(mean) == before


def test_one_run_is_not_enough(tiny_run, tmp_path, capsys):
    argv = ["average", str(tiny_run), "--out", str(tmp_path / "m")]
    assert "two runs or more" in one_line_error(capsys, argv)
