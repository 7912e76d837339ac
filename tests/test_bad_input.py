"""Bad input (issue 13): one line ``capsnet: error: …`` naming the file and what is wrong,
exit code 2, and every earlier file left as it was."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from capsnet import __version__
from capsnet.cli import main

BAD_CONFIGS = {
    "empty": ({}, "no training settings"),
    "train-not-an-object": ({"train": 5}, "'train' must be an object, found a number"),
    "wrong-type": ("epochs=ten", "epochs must be an integer, found 'ten'"),
}


def files(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()}


def one_line_error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("capsnet: error: ") and len(err.splitlines()) == 1, err
    return err


@pytest.fixture
def run(tiny_run, tmp_path) -> Path:
    """A copy of the session's tiny run, to spoil."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


def spoil_config(run: Path, how: object) -> None:
    config = json.loads((run / "config.json").read_text())
    if isinstance(how, str):  # field=value
        key, _, value = how.partition("=")
        config["train"][key] = value
    else:
        config = how
    (run / "config.json").write_text(json.dumps(config))


def commands(run: Path, tmp_path: Path, mnist_dir: Path) -> dict[str, list[str]]:
    np.save(tmp_path / "digit.npy", np.zeros((28, 28), np.uint8))
    data = ["--data-dir", str(mnist_dir)]
    return {
        "evaluate": ["evaluate", str(run), *data],
        "figures": ["figures", str(run), "--out", str(tmp_path / "figs"), *data],
        "predict": ["predict", str(run), str(tmp_path / "digit.npy")],
        "export": ["export", str(run), "--onnx", str(tmp_path / "m.onnx"), *data],
        "resume": ["train", "--out", str(run), "--resume", "--epochs", "2", *data],
        "robustness": ["robustness", str(run), "--out", str(tmp_path / "figs"), *data],
    }


@pytest.mark.parametrize("command", ["evaluate", "figures", "predict", "export", "resume"])
@pytest.mark.parametrize("bad", list(BAD_CONFIGS))
def test_config_json_of_the_wrong_shape(run, tmp_path, mnist_dir, capsys, command, bad):
    how, message = BAD_CONFIGS[bad]
    spoil_config(run, how)
    before = files(run)
    err = one_line_error(capsys, commands(run, tmp_path, mnist_dir)[command])
    assert f"{run / 'config.json'}: " in err and message in err
    assert files(run) == before


def spoil_version(run: Path, version: str | None) -> None:
    """Say that capsnet ``version`` made the run (None: a run that does not say)."""
    config = json.loads((run / "config.json").read_text())
    if version is None:
        del config["environment"]["capsnet_version"]
    else:
        config["environment"]["capsnet_version"] = version
    (run / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("command", ["evaluate", "figures", "predict", "export", "resume"])
def test_a_setting_unknown_to_this_version_is_refused_naming_the_runs_version(
    run, tmp_path, mnist_dir, capsys, command
):
    spoil_config(run, "from_the_future=1")
    spoil_version(run, "9.0")
    before = files(run)
    err = one_line_error(capsys, commands(run, tmp_path, mnist_dir)[command])
    assert err.endswith(
        f"{run / 'config.json'}: training setting(s) from_the_future unknown to capsnet "
        f"{__version__}; the run was made by capsnet 9.0"
    )
    assert files(run) == before


def test_a_run_that_does_not_record_its_version_drops_settings_removed_since(
    run, mnist_dir, caplog
):
    spoil_version(run, None)  # made before runs recorded it: older than this capsnet
    spoil_config(run, "removed_since=1")
    argv = ["evaluate", str(run), "--data-dir", str(mnist_dir), "--test-limit", "20"]
    assert main(argv) == 0
    assert "ignoring setting(s) removed since: removed_since" in caplog.text


def test_every_run_records_the_version_that_made_it(tiny_run):
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["environment"]["capsnet_version"] == __version__


@pytest.mark.parametrize("state", [{}, [], {"epoch": 1, "history": "x"}])
def test_train_state_json_of_the_wrong_shape(run, capsys, state):
    (run / "train_state.json").write_text(json.dumps(state))
    before = files(run)
    err = one_line_error(capsys, ["train", "--out", str(run), "--resume", "--epochs", "2"])
    assert f"{run / 'train_state.json'}: not a training state" in err
    assert files(run) == before


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--lr", "nan"], "lr must be finite and > 0"),
        (["--lr", "inf"], "lr must be finite and > 0"),
        (["--seed", "100000000000000000000000"], "seed must be from 0 to 2**64 - 1"),
        (["--weight-decay", "nan"], "warmup_epochs and weight_decay must be finite and ≥ 0"),
        (["--rotation", "nan"], "rotation, elastic, blur and erase must be finite and ≥ 0"),
        (["--elastic", "inf"], "rotation, elastic, blur and erase must be finite and ≥ 0"),
        (["--rotation", "181"], "rotation is in ± degrees, at most 180; got 181.0"),
        (["--warmup-epochs", "5", "--epochs", "1"], "warmup_epochs 5.0 is longer than the run"),
    ],
)
def test_non_finite_options_and_huge_seed_are_refused(tmp_path, capsys, option, message):
    err = one_line_error(capsys, ["train", "--out", str(tmp_path / "r"), *option])
    assert message in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({"lr": 1, "train_limit": None, "dataset_options": {}}, None),  # an int is a number
        ({"compile": 1}, "compile must be true/false, found 1"),
        ({"epochs": True}, "epochs must be an integer, found True"),
        ({"train_limit": "all"}, "train_limit must be an integer or null, found 'all'"),
        ({"dataset_options": []}, "dataset_options must be an object, found []"),
    ],
)
def test_saved_settings_are_checked_against_the_field_types(values, error):
    from capsnet.errors import ConfigError
    from capsnet.training import TrainConfig
    from capsnet.typecheck import check_field_types

    if error is None:
        check_field_types(TrainConfig, values)
        return
    with pytest.raises(ConfigError) as e:
        check_field_types(TrainConfig, values)
    assert str(e.value) == error


def test_a_shift_of_half_the_image_is_refused_before_training(tmp_path, mnist_dir, capsys):
    argv = ["train", "--out", str(tmp_path / "r"), "--data-dir", str(mnist_dir), "--val-size", "0"]
    err = one_line_error(capsys, [*argv, "--max-shift", "14"])
    assert "max_shift 14 moves the 28×28 images by half their side or more; use at most 13" in err
    assert not (tmp_path / "r").exists()


def test_an_erased_square_larger_than_the_image_is_refused_before_training(
    tmp_path, mnist_dir, capsys
):
    argv = ["train", "--out", str(tmp_path / "r"), "--data-dir", str(mnist_dir), *TINY_ARGS]
    err = one_line_error(capsys, [*argv, "--erase", "29"])
    assert err.endswith("erase size 29 must be in 0..27 for 28×28 images")
    assert not (tmp_path / "r").exists()  # no config.json blocks the corrected rerun


@pytest.fixture(scope="module")
def other_run(tiny_cfg, tmp_path_factory) -> Path:
    """A run of a smaller model than the tiny run's (8 conv1 channels, not 16)."""
    from capsnet.training import train

    out = tmp_path_factory.mktemp("other-run")
    train(tiny_cfg, out)
    return out


@pytest.mark.parametrize("name", ["best.safetensors", "last.safetensors"])
def test_another_models_checkpoint_is_refused(run, other_run, mnist_dir, capsys, name):
    (run / "best.safetensors").unlink()  # evaluate then reads last.safetensors
    shutil.copy(other_run / name, run / name)
    err = one_line_error(capsys, ["evaluate", str(run), "--data-dir", str(mnist_dir)])
    assert f"{run / name}: holds another model than config.json says (conv1_channels 8" in err


@pytest.mark.parametrize("name", ["best.safetensors", "last.safetensors"])
def test_another_models_weights_are_refused_on_resume(run, other_run, capsys, name):
    shutil.copy(other_run / name, run / name)
    before = files(run)
    err = one_line_error(capsys, ["train", "--out", str(run), "--resume", "--epochs", "2"])
    assert f"{run / name}: weights of another model (conv1.weight is (8, 1, 9, 9)" in err
    assert files(run) == before


def test_another_runs_training_state_is_refused_before_training(run, other_run, capsys):
    shutil.copy(other_run / "train_state.safetensors", run / "train_state.safetensors")
    before = files(run)
    err = one_line_error(capsys, ["train", "--out", str(run), "--resume", "--epochs", "2"])
    assert f"{run / 'train_state.safetensors'}: another model's training state" in err
    assert files(run) == before


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--lr", "0.01"], "--lr 0.01 differs from the run's 0.001"),
        (["--batch-size", "100"], "--batch-size 100 differs from the run's 50"),
        (["--compile"], "--compile differs from the run's false"),
        (["--routing-iterations", "1"], "--routing-iterations 1 differs from the run's 3"),
        (["--model-option", "conv1_channels=8"], "conv1_channels=8 differs from the run's 16"),
    ],
)
def test_resume_refuses_an_option_that_differs_from_the_run(run, capsys, option, message):
    before = files(run)
    err = one_line_error(capsys, ["train", "--out", str(run), "--resume", "--epochs", "2", *option])
    assert message in err and "only --epochs and --device may change" in err
    assert files(run) == before


def test_resume_takes_options_not_given_from_the_run(run, mnist_dir):
    # the run trained with batch size 50; the option's default (100) is not "given"
    argv = ["train", "--out", str(run), "--resume", "--epochs", "2", "--lr", "0.001"]
    assert main([*argv, "--device", "cpu", "--data-dir", str(mnist_dir)]) == 0
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 2


def test_resume_to_fewer_epochs_than_done_is_refused(run, tmp_path, capsys):
    state = json.loads((run / "train_state.json").read_text())
    state["epoch"], state["history"] = 2, state["history"] * 2  # as if 2 epochs were done
    (run / "train_state.json").write_text(json.dumps(state))
    err = one_line_error(capsys, ["train", "--out", str(run), "--resume", "--epochs", "1"])
    assert "--epochs 1: the run in" in err and "has done 2 epochs already" in err


def test_resume_and_overwrite_together_are_refused(run, capsys):
    err = one_line_error(capsys, ["train", "--out", str(run), "--resume", "--overwrite"])
    assert "not both" in err


@pytest.mark.parametrize("existing", ["m.onnx", "m.decoder.onnx"])
def test_export_refuses_an_existing_file_unless_overwrite(tiny_run, tmp_path, capsys, existing):
    (tmp_path / existing).write_bytes(b"mine")
    err = one_line_error(capsys, ["export", str(tiny_run), "--onnx", str(tmp_path / "m.onnx")])
    assert f"{tmp_path / existing}: exists; use --overwrite or another name" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing]
    assert (tmp_path / existing).read_bytes() == b"mine"


def test_export_overwrite_replaces_the_files(tiny_run, tmp_path, mnist_dir):
    (tmp_path / "m.onnx").write_bytes(b"old")
    argv = ["export", str(tiny_run), "--onnx", str(tmp_path / "m.onnx"), "--overwrite"]
    assert main([*argv, "--data-dir", str(mnist_dir), "--check-images", "10"]) == 0
    assert (tmp_path / "m.onnx").stat().st_size > 1000 and (tmp_path / "m.decoder.onnx").exists()


@pytest.mark.parametrize(
    ("where", "message"), [("missing/m.onnx", "does not exist"), ("file/m.onnx", "is not a dir")]
)
def test_export_into_a_directory_that_is_not_there(tiny_run, tmp_path, capsys, where, message):
    (tmp_path / "file").write_text("")
    err = one_line_error(capsys, ["export", str(tiny_run), "--onnx", str(tmp_path / where)])
    assert f"{tmp_path / where}: {tmp_path / where.split('/')[0]} {message}" in err


def test_train_into_a_place_that_cannot_be_written(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    err = one_line_error(capsys, ["train", "--out", str(tmp_path / "file" / "run")])
    assert f"{tmp_path / 'file' / 'run'}: cannot write there (Not a directory)" in err


TINY_ARGS = ["--model", "capsnet-small", "--epochs", "1", "--batch-size", "50"]
TINY_ARGS += ["--train-limit", "60", "--val-size", "30", "--test-limit", "30"]
TINY_ARGS += [f"--model-option={o}" for o in ("conv1_channels=8", "primary_types=2")]


def test_overwrite_leaves_nothing_of_the_old_run(run, tmp_path, mnist_dir):
    old = ["eval.json", "eval-affnist.json", "classes.json", "classes.png", "reconstructions.png"]
    for name in [*old, ".history.csv.x1y2.tmp"]:
        (run / name).write_text("old")
    (run / "tensorboard").mkdir()
    (run / "tensorboard" / "events.out.tfevents.1.host").write_text("old")
    argv = [*TINY_ARGS, "--no-reconstruction", "--data-dir", str(mnist_dir)]
    assert main(["train", "--out", str(run), "--overwrite", *argv]) == 0
    assert main(["train", "--out", str(tmp_path / "fresh"), *argv]) == 0
    assert sorted(p.name for p in run.iterdir()) == sorted(
        p.name for p in (tmp_path / "fresh").iterdir()
    )
    assert "reconstructions.png" not in files(run)  # no decoder: the old one is gone


def test_overwrite_refuses_a_directory_with_files_capsnet_did_not_write(run, capsys):
    (run / "notes.txt").write_text("mine")
    before = files(run)
    err = one_line_error(capsys, ["train", "--out", str(run), "--overwrite", *TINY_ARGS])
    assert "--overwrite removes a run's files only, and it also holds others (notes.txt)" in err
    assert files(run) == before


def diverge_after(monkeypatch, steps: int) -> None:
    """Training steps after the first ``steps`` have a loss of nan."""
    from capsnet.training import loop

    step, calls = loop.train_step, []

    def nan_later(*args, **kwargs):
        loss, correct = step(*args, **kwargs)
        calls.append(1)
        return (loss * float("nan") if len(calls) > steps else loss), correct

    monkeypatch.setattr(loop, "train_step", nan_later)


def test_a_run_diverging_in_its_first_epoch_leaves_nothing(
    tmp_path, mnist_dir, capsys, monkeypatch
):
    diverge_after(monkeypatch, 0)
    out, data = tmp_path / "run", ["--data-dir", str(mnist_dir)]
    err = one_line_error(capsys, ["train", "--out", str(out), *TINY_ARGS, *data])
    assert "training diverged at epoch 1 (loss nan); nothing was kept in" in err
    assert err.endswith("; rerun and a lower --lr")
    assert not out.exists()  # nor the directory it made
    monkeypatch.undo()
    assert main(["train", "--out", str(out), *TINY_ARGS, *data]) == 0  # no --overwrite needed


def test_a_run_diverging_later_keeps_its_epochs(tmp_path, mnist_dir, capsys, monkeypatch):
    diverge_after(monkeypatch, 2)  # 60 images in batches of 50: epoch 1 is two steps
    out, data = tmp_path / "run", ["--data-dir", str(mnist_dir)]
    argv = ["train", "--out", str(out), *TINY_ARGS, "--epochs", "3", *data]
    err = one_line_error(capsys, argv)
    assert f"training diverged at epoch 2 (loss nan); {out} keeps the 1 epoch(s) before" in err
    assert err.endswith("rerun with --overwrite and a lower --lr")
    assert "metrics.json" not in files(out)
    assert len((out / "history.csv").read_text().splitlines()) == 2
    assert main(["evaluate", str(out), *data, "--test-limit", "20"]) == 0


def test_data_checks_the_files_it_finds(tmp_path, mnist_dir, capsys):
    data = Path(shutil.copytree(mnist_dir, tmp_path / "mnist"))
    assert main(["data", "mnist", "--data-dir", str(data), "--no-download"]) == 0
    assert capsys.readouterr().out.strip() == str(data)
    labels = data / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:-20])  # a cut-off download
    err = one_line_error(capsys, ["data", "mnist", "--data-dir", str(data), "--no-download"])
    assert f"{labels}: corrupt gzip stream" in err


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("conv1_channels=0", "conv1_channels must be an integer ≥ 1, found 0"),
        ("primary_types=-3", "primary_types must be an integer ≥ 1, found -3"),
        ("conv1_channels=abc", "conv1_channels must be an integer, found 'abc'"),
        ("decoder_hidden=[16, 0]", "decoder_hidden must be integers ≥ 1, found (16, 0)"),
    ],
)
def test_a_model_option_of_the_wrong_type_or_size_is_one_line(
    tmp_path, mnist_dir, capsys, option, message
):
    argv = ["train", "--out", str(tmp_path / "r"), "--data-dir", str(mnist_dir), *TINY_ARGS]
    err = one_line_error(capsys, [*argv, "--model-option", option])
    assert message in err
    assert not (tmp_path / "r").exists()


def test_a_model_too_large_to_allocate_is_one_line(tmp_path, mnist_dir, capsys):
    argv = ["train", "--out", str(tmp_path / "r"), "--data-dir", str(mnist_dir), *TINY_ARGS]
    err = one_line_error(capsys, [*argv, "--model-option", "decoder_hidden=[1000000000000]"])
    assert "out of memory (" in err and "a smaller --batch-size or model" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("dataset", "option", "message"),
    [
        ("multimnist", "seed=abc", "bad option for 'multimnist': seed must be an integer, found"),
        ("expanded-mnist", "pad=1.5", "bad option for 'expanded-mnist': pad must be an integer"),
    ],
)
def test_a_dataset_option_of_the_wrong_type_is_one_line(tmp_path, capsys, dataset, option, message):
    argv = ["train", "--out", str(tmp_path / "r"), "--dataset", dataset, "--dataset-option"]
    err = one_line_error(capsys, [*argv, option])
    assert message in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("device", ["mps", "meta"])
def test_a_device_capsnet_does_not_run_on_is_refused(tmp_path, capsys, device):
    err = one_line_error(capsys, ["train", "--out", str(tmp_path / "r"), "--device", device])
    assert f"unsupported device '{device}'; use auto, cpu, cuda or cuda:N" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        ([1, 2], "not a run's metrics (an object expected, found a list)"),
        ({"best_epoch": "1"}, "'best_epoch' must be a number, found '1'"),
    ],
)
@pytest.mark.parametrize("command", ["figures", "robustness"])
def test_metrics_json_of_the_wrong_shape(
    run, tmp_path, mnist_dir, capsys, metrics, message, command
):
    (run / "metrics.json").write_text(json.dumps(metrics))
    err = one_line_error(capsys, commands(run, tmp_path, mnist_dir)[command])
    assert f"{run / 'metrics.json'}: {message}" in err
    assert not (tmp_path / "figs").exists()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("not_a_field=1", "CapsNetConfig has no field 'not_a_field'; its fields: "),
        ("conv1_channels=abc", "conv1_channels must be an integer, found 'abc'"),
        ("num_classes=3", "num_classes: set by the data, not a model option"),
    ],
)
def test_a_bad_model_option_is_reported_before_the_data_is_read(tmp_path, capsys, option, message):
    missing = tmp_path / "no-data-here"
    argv = ["train", "--out", str(tmp_path / "r"), "--data-dir", str(missing)]
    err = one_line_error(capsys, [*argv, "--model-option", option])
    assert message in err and str(missing) not in err


@pytest.mark.parametrize(
    ("option", "hint"),
    [
        (["--model", "capsnet-smal"], "unknown model 'capsnet-smal' (did you mean capsnet-small?)"),
        (
            ["--dataset", "fashion_mnist"],
            "unknown dataset 'fashion_mnist' (did you mean fashion-mnist?)",
        ),
        (["--dataset", "shapes"], "unknown dataset 'shapes' (did you mean folder:shapes?)"),
        (
            ["--dataset", "shapes.npz"],
            "unknown dataset 'shapes.npz' (did you mean npz:shapes.npz?)",
        ),
    ],
)
def test_a_mistyped_name_is_answered_with_the_one_meant(
    tmp_path, monkeypatch, capsys, option, hint
):
    (tmp_path / "shapes").mkdir()  # a folder dataset given without its folder: prefix
    monkeypatch.chdir(tmp_path)
    err = one_line_error(capsys, ["train", "--out", "run", *option])
    assert hint in err and not (tmp_path / "run").exists()
