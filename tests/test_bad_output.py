"""Where the tools write (issue 13's rule that nothing already written is lost): an output
that would replace or scatter something is refused with one line, exit code 2, before any
work, and the files already there are left as they were."""

import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tests.test_bad_input import files, one_line_error, spoil_config

from capsnet.cli import main
from capsnet.training import RunDir


@pytest.fixture
def run(tiny_run, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


def test_train_into_an_existing_file_writes_nothing_beside_it(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    err = one_line_error(capsys, ["train", "--out", str(tmp_path / "notes.txt")])
    assert err.endswith(f"{tmp_path / 'notes.txt'}: exists and is not a directory")
    assert files(tmp_path) == {"notes.txt": b"mine"}


def test_an_empty_path_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train", "--out", ""])
    assert stop.value.code == 2 and "argument --out: an empty path" in capsys.readouterr().err


def test_training_takes_out_as_a_path_never_as_a_pretrained_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no directory of that name here
    assert RunDir("capsnet-mnist").pretrained == "capsnet-mnist"
    assert RunDir("capsnet-mnist", names=False).pretrained is None


def test_export_never_writes_over_the_runs_own_checkpoint(run, capsys):
    before = files(run)
    argv = ["export", str(run), "--onnx", str(run / "best.safetensors"), "--overwrite"]
    err = one_line_error(capsys, argv)
    assert err.endswith(f"{run / 'best.safetensors'}: is the run's own best.safetensors; "
                        "export to another file")  # fmt: skip
    assert files(run) == before


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("name,score\nalice,10\n", "not a benchmark CSV (its columns: name, score)"),
        (b"\x89PNG\r\n", "not a readable CSV file"),
        (None, "is a directory, not a CSV file"),
    ],
)
def test_bench_refuses_a_csv_it_did_not_write_before_measuring(tmp_path, capsys, content, message):
    csv = tmp_path / "people.csv"
    if content is None:
        csv.mkdir()
    elif isinstance(content, str):
        csv.write_text(content)
    else:
        csv.write_bytes(content)
    before = files(tmp_path)
    err = one_line_error(capsys, ["bench", "--model", "capsnet-small", "--csv", str(csv)])
    assert f"{csv}: {message}" in err
    assert files(tmp_path) == before


@pytest.mark.parametrize("command", ["evaluate", "figures"])
def test_an_out_that_is_a_file_is_refused_before_any_work(run, tmp_path, capsys, command):
    (tmp_path / "notes.txt").write_text("mine")
    err = one_line_error(capsys, [command, str(run), "--out", str(tmp_path / "notes.txt")])
    assert f"{tmp_path / 'notes.txt'}: cannot write there" in err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_figures_replace_files_elsewhere_only_with_overwrite(run, tmp_path, mnist_dir, capsys):
    figs = tmp_path / "figs"
    figs.mkdir()
    (figs / "training.png").write_bytes(b"mine")
    argv = ["figures", str(run), "--out", str(figs), "--data-dir", str(mnist_dir)]
    err = one_line_error(capsys, argv)
    assert f"{figs / 'training.png'}: exists; use --overwrite or another name" in err
    assert files(figs) == {"training.png": b"mine"}
    assert main([*argv, "--overwrite"]) == 0
    assert (figs / "training.png").read_bytes() != b"mine" and (figs / "coupling.png").exists()


def test_figures_of_a_directory_without_config_write_nothing(run, tmp_path, capsys):
    (run / "config.json").unlink()
    err = one_line_error(capsys, ["figures", str(run), "--out", str(tmp_path / "figs")])
    assert err.endswith("not a run directory (no training config.json)")
    assert not (tmp_path / "figs").exists()


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_checkpoint_with_non_finite_weights_is_refused(run, capsys, value):
    path = run / "best.safetensors"
    with safe_open(str(path), framework="pt") as f:  # keep the model's name and config
        metadata = f.metadata()
    tensors = load_file(str(path))
    name = next(k for k, t in tensors.items() if t.is_floating_point())
    tensors[name] = torch.full_like(tensors[name], value)
    save_file(tensors, str(path), metadata=metadata)
    err = one_line_error(capsys, ["evaluate", str(run)])
    assert err.endswith(f"{path}: {name} holds NaN or infinite values")


def test_robustness_refuses_a_model_of_another_task(run, tiny_run, tmp_path, capsys):
    other = Path(shutil.copytree(tiny_run, tmp_path / "other"))
    spoil_config(other, "dataset=fashion-mnist")
    argv = ["robustness", str(run), "--against", str(other), "--out", str(tmp_path / "rob")]
    err = one_line_error(capsys, argv)
    assert err.endswith(f"{other} was trained on fashion-mnist, not mnist as {run}")
    assert not (tmp_path / "rob").exists()
