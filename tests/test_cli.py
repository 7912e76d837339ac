import json
import re
from types import ModuleType

import pytest
import torch

from capsnet.cli import main
from capsnet.nn import native

SMALL = ["--model", "capsnet-small", "--batch-size", "50", "--train-limit", "200"]
SMALL += ["--val-size", "100", "--test-limit", "100", "--max-shift", "1"]


@pytest.fixture
def run(mnist_dir, tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--dataset", "mnist", "--data-dir", str(mnist_dir), "--out", str(out)]
    assert main([*argv, *SMALL, "--epochs", "1"]) == 0
    return out, argv


def test_train_evaluate_resume_end_to_end(run, mnist_dir, capsys):
    out, argv = run
    assert (out / "reconstructions.png").stat().st_size > 1000
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["train_limit"] == 200 and "command" in config["environment"]

    assert main(["evaluate", str(out), "--data-dir", str(mnist_dir), "--test-limit", "50"]) == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["test_examples"] == 50 and 0 <= result["test_accuracy"] <= 1
    assert result["checkpoint"] == "best.safetensors"

    capsys.readouterr()
    assert main([*argv, *SMALL, "--epochs", "2", "--resume"]) == 0
    assert "test accuracy" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 2
    assert len((out / "history.csv").read_text().splitlines()) == 3
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["epochs"] == 2 and config["resumes"][0]["after_epoch"] == 1


def test_resume_without_epochs_keeps_the_runs_own(run):
    out, argv = run
    (out / "metrics.json").unlink()  # as if stopped after its last epoch, before the test
    assert main(["train", "--out", str(out), "--resume"]) == 0
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 1
    assert len((out / "history.csv").read_text().splitlines()) == 2


def test_resuming_a_complete_run_is_an_error_that_rewrites_nothing(run, capsys):
    out, argv = run
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(
        "the run is complete (1 of 1 epochs, tested); resume it with --epochs 2 or more to train on"
    )
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_existing_run_is_an_error_not_an_overwrite(run, capsys):
    out, argv = run
    capsys.readouterr()
    assert main([*argv, *SMALL]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("capsnet: error:") and "already holds a run" in err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["evaluate", "/nonexistent/run"], "no such run directory, checkpoint or pretrained"),
        (["train", "--out", "{tmp}/r", "--model", "nope"], "unknown model 'nope'"),
        (["train", "--out", "{tmp}/r", "--data-dir", "{tmp}/bad"], "train-images-idx3-ubyte"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(argv, message, tmp_path, capsys):
    (tmp_path / "bad").mkdir()
    for name in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1"):
        (tmp_path / "bad" / f"{name}-ubyte").write_bytes(b"\x00\x00\x08\x03junk")
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_progress_without_a_terminal_is_log_lines(caplog):
    from capsnet.cli.progress import LogProgress as _LogProgress

    bar = _LogProgress(total=300, desc="epoch 1/2", interval=0.0)
    bar.set_postfix(loss="0.1234")
    with caplog.at_level("INFO", logger="capsnet"):
        bar.update(100)
        bar.update(200)  # the end of the work: the caller logs the summary, not the bar
    (line,) = caplog.messages
    assert line.startswith("epoch 1/2: 100/300 (33%)") and line.endswith(", loss 0.1234")


@pytest.mark.parametrize(
    "argv", [["--threads", "2", "pretrained"], ["pretrained", "--threads", "2"]]
)
def test_threads_sets_pytorchs_intra_op_threads(argv, capsys):
    try:
        assert main(argv) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)  # the test suite's


def _kernel(path: str) -> ModuleType:
    module = ModuleType("kernel")
    module.__file__ = path
    return module


def test_build_kernels_says_where_each_kernel_is_and_how_long_it_took(monkeypatch, capsys):
    monkeypatch.delenv("CAPSNET_NATIVE", raising=False)
    kernels = {"EM routing": lambda: _kernel("/k/em/em.so"), "dynamic": lambda: _kernel("/k/d.so")}
    monkeypatch.setattr(native, "KERNELS", kernels)
    assert main(["build-kernels"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"native EM routing kernel: ready in \d+\.\d s, /k/em", out[0]), out
    assert re.fullmatch(r"native dynamic kernel: ready in \d+\.\d s, /k", out[1]), out


def test_build_kernels_fails_where_a_kernel_cannot_be_built(monkeypatch, capsys):
    monkeypatch.delenv("CAPSNET_NATIVE", raising=False)
    monkeypatch.setattr(native, "KERNELS", {"EM routing": lambda: None})
    assert main(["build-kernels"]) == 1
    [line] = capsys.readouterr().out.splitlines()
    assert re.fullmatch(
        r"native EM routing kernel: not built \(\d+\.\d s\); PyTorch's path will run", line
    )


def test_build_kernels_builds_nothing_with_capsnet_native_0(monkeypatch, capsys):
    monkeypatch.setenv("CAPSNET_NATIVE", "0")
    monkeypatch.setattr(native, "KERNELS", {"EM routing": None})  # called, it would raise
    assert main(["build-kernels"]) == 0
    assert (
        capsys.readouterr().out == "native kernels are off (CAPSNET_NATIVE=0): nothing to build\n"
    )
