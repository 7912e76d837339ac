"""torchrun with 2 gloo processes on CPU trains like one process at the same global batch."""

import csv
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file


def _train(args: list[str], launcher: list[str], env: dict[str, str]) -> None:
    cmd = [sys.executable, *launcher, "-m", "capsnet", "-q", "train", *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def _history(run) -> list[dict[str, str]]:
    with open(run / "history.csv") as f:
        return list(csv.DictReader(f))


def test_two_gloo_processes_match_one_process(mnist_dir, tmp_path):
    args = ["--dataset", "mnist", "--data-dir", str(mnist_dir), "--model", "capsnet-small"]
    args += ["--epochs", "1", "--batch-size", "40", "--train-limit", "160"]
    args += ["--val-size", "41"]  # uneven shares of 2 ranks
    args += ["--test-limit", "40", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    _train([*args, "--out", str(tmp_path / "one")], [], env)
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    _train([*args, "--out", str(tmp_path / "two")], torchrun, env)
    one = load_file(str(tmp_path / "one" / "last.safetensors"))
    two = load_file(str(tmp_path / "two" / "last.safetensors"))
    # Same examples, shifts and global batch; only the order of floating-point sums
    # differs (gradients all-reduced from two halves), so parameters agree to ~1e-6.
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=1e-4)
    # each process validated half of the split; the all-reduced figures are the whole's
    (h1,), (h2,) = (_history(tmp_path / r) for r in ("one", "two"))
    assert h2["val_accuracy"] == h1["val_accuracy"]
    assert abs(float(h2["val_loss"]) - float(h1["val_loss"])) < 1e-5
