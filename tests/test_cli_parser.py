"""The command line's parsers: no PyTorch for help and argument errors, the names they
offer, -q anywhere, --version, defaults in help, and which options were given."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import capsnet
from capsnet import names
from capsnet.cli import main
from capsnet.cli.options import build_parser

SRC = str(Path(capsnet.__file__).resolve().parents[1])  # the capsnet these tests import

# Runs the command line in a fresh interpreter; prints whether it imported torch.
RUNNER = """
import runpy, sys
sys.argv = ["capsnet", *sys.argv[1:]]
try:
    runpy.run_module("capsnet", run_name="__main__")
except SystemExit:
    pass
print("torch imported:", "torch" in sys.modules)
"""


def _run(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC}
    cmd = [sys.executable, "-c", RUNNER, *argv]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["--version"], ["train", "--lr", "abc", "--out", "x"], ["nope"]],
    ids=["help", "version", "argument-error", "unknown-command"],
)
def test_help_version_and_argument_errors_do_not_import_torch(argv):
    r = _run(*argv)
    assert r.stdout.strip().endswith("torch imported: False"), r.stdout + r.stderr


def test_version():
    r = _run("--version")
    assert r.stdout.startswith(f"capsnet {capsnet.__version__}\n")


def test_help_describes_the_tool_not_the_module():
    r = _run("--help")
    assert "Capsule networks" in r.stdout and "cli_progress" not in r.stdout


def test_quiet_works_after_the_command():
    args = build_parser().parse_args(["train", "--out", "x", "-q"])
    assert args.quiet and args.command == "train"
    assert build_parser().parse_args(["-q", "train", "--out", "x"]).quiet
    assert not build_parser().parse_args(["train", "--out", "x"]).quiet


def test_threads_goes_before_or_after_the_command_and_is_positive(capsys):
    assert build_parser().parse_args(["--threads", "3", "pretrained"]).threads == 3
    assert build_parser().parse_args(["pretrained", "--threads", "3"]).threads == 3
    assert build_parser().parse_args(["pretrained"]).threads is None  # PyTorch's own count
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["--threads", "0", "pretrained"])
    assert e.value.code == 2 and "--threads: must be ≥ 1, got 0" in capsys.readouterr().err


def test_only_options_given_count_as_given():
    args = build_parser().parse_args(["train", "--out", "x", "--lr", "0.001", "--device", "cpu"])
    assert args.given == {"out", "lr", "device"}
    assert args.data_dir is None and args.model_option == []  # defaults filled in
    assert not hasattr(args, "epochs")  # a config field: the dataclass supplies it


def test_help_shows_the_config_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Adam learning rate (default: 0.001)" in text
    assert "training epochs (default: 10)" in text


def test_seed_out_of_range_is_an_argument_error(capsys):
    with pytest.raises(SystemExit):
        main(["robustness", "run", "--out", "o", "--seed", "100000000000000000000000"])
    assert "must be from 0 to 2**64 - 1" in capsys.readouterr().err


def test_an_integer_option_names_the_text_that_is_not_one(capsys):
    with pytest.raises(SystemExit):
        main(["robustness", "run", "--out", "o", "--seed", "nan"])
    assert "argument --seed: not an integer: 'nan'" in capsys.readouterr().err


def _registry(path: str) -> tuple:
    module, _, name = path.partition(":")
    value = getattr(importlib.import_module(module), name)
    return tuple(value() if callable(value) else value)


@pytest.mark.parametrize(
    ("light", "registry"),
    [
        ("MODELS", "capsnet.models:list_models"),
        ("DATASETS", "capsnet.data.sources:DATASETS"),
        ("TASKS", "capsnet.data.tasks:TASKS"),
        ("OFFICIAL", "capsnet.data.custom:OFFICIAL"),
        ("ROUTINGS", "capsnet.nn.routing:ROUTINGS"),
        ("PRECISIONS", "capsnet.runtime:PRECISION_CHOICES"),
        ("PERTURBATION_NAMES", "capsnet.tools.perturbations:PERTURBATIONS"),
        ("TABLE1_ROWS", "capsnet.tools.experiments:ROW_NAMES"),
        ("TABLE1_SIZES", "capsnet.tools.experiments:SIZES"),
    ],
)
def test_the_light_names_match_the_registries(light, registry):
    assert _registry(registry) == getattr(names, light)


def test_lazy_package_names():
    from capsnet import em_routing, load_run

    assert callable(em_routing) and callable(load_run)
    assert capsnet.em_routing is em_routing  # not the module of the same name
    assert set(capsnet.__all__) <= set(dir(capsnet))
