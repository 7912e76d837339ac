"""The generalisation benchmark: AUC and aggregation by hand, the command end to end on tiny
contenders, reuse of finished runs, bad input before any work, the affNIST column."""

import json

import pytest
from tests.conftest import TINY_MODELS

from capsnet.cli import main
from capsnet.tools import experiments
from capsnet.tools.generalisation import (
    auc,
    spread,
    summarise_curves,
)

SMALL = ["--epochs", "1", "--batch-size", "50", "--train-limit", "50", "--val-size", "20"]
SWEEP = ["--perturbations", "rotation", "blur", "--strengths", "rotation=0,45,90"]
SWEEP += ["--strengths", "blur=0,2", "--sweep-limit", "10"]


def _options(label: str, model: str) -> list[str]:
    pairs = TINY_MODELS[model].items()
    return [a for k, v in pairs for a in ("--model-option", f"{label}.{k}={json.dumps(v)}")]


def _argv(out, mnist_dir, *more: str) -> list[str]:
    argv = ["-q", "experiment", "generalisation", "--out", str(out)]
    argv += ["--data-dir", str(mnist_dir), *SMALL, "--test-limit", "25"]
    return argv + list(more)


TWO = ["--contenders", "caps=capsnet-small", "cnn=baseline-cnn-small"]
TWO += _options("caps", "capsnet-small") + _options("cnn", "baseline-cnn-small")


def test_auc_is_the_mean_accuracy_over_the_strength_range():
    # trapezoids 10 · (1 + 0.8) / 2 = 9 and 20 · (0.8 + 0.4) / 2 = 12; 21 / 30
    assert auc([0, 10, 30], [1.0, 0.8, 0.4]) == pytest.approx(0.7)
    # 1 · (0.5 + 1) / 2 = 0.75 and 0.5 · (1 + 0.9) / 2 = 0.475; 1.225 / 1.5
    assert auc([-1, 0, 0.5], [0.5, 1.0, 0.9]) == pytest.approx(1.225 / 1.5)
    assert auc([0, 2, 3], [0.25, 0.25, 0.25]) == pytest.approx(0.25)


def test_curves_of_two_seeds_are_summarised_by_mean_and_sample_std():
    a = {"strength": [0.0, 1.0], "accuracy": [1.0, 0.6], "auc": 0.8}
    b = {"strength": [0.0, 1.0], "accuracy": [0.8, 0.4], "auc": 0.6}
    s = summarise_curves([a, b])
    std = 0.1 * 2**0.5  # sqrt((0.1² + 0.1²) / (2 − 1))
    assert s["strength"] == [0.0, 1.0]
    assert s["auc"]["mean"] == pytest.approx(0.7) and s["auc"]["std"] == pytest.approx(std)
    assert [x["mean"] for x in s["accuracy"]] == pytest.approx([0.9, 0.5])
    assert [x["std"] for x in s["accuracy"]] == pytest.approx([std, std])
    assert spread([0.25]) == {"mean": 0.25, "std": None, "values": [0.25]}


def test_two_contenders_two_seeds_end_to_end_then_reused(mnist_dir, tmp_path, monkeypatch):
    assert main(_argv(tmp_path, mnist_dir, *TWO, *SWEEP)) == 0
    report = json.loads((tmp_path / "generalisation.json").read_text())
    assert list(report["contenders"]) == ["caps", "cnn"] and report["cross_dataset"] is None
    assert report["sweep"]["test_examples"] == 10 and list(report["sweep"]["units"]) == [
        "rotation",
        "blur",
    ]
    for label, c in report["contenders"].items():
        assert [r["seed"] for r in c["runs"]] == [0, 1] and c["epochs"] == 1
        for r in c["runs"]:
            metrics = json.loads((tmp_path / r["run"] / "metrics.json").read_text())
            assert r["run"] == f"generalisation/{label}/seed{r['seed']}"
            assert r["clean_accuracy"] == metrics["test_accuracy"]
            assert r["train_seconds"] == metrics["train_seconds"]
            rotation = r["perturbations"]["rotation"]
            assert rotation["strength"] == [0.0, 45.0, 90.0]
            assert rotation["auc"] == pytest.approx(auc(rotation["strength"], rotation["accuracy"]))
        clean = [r["clean_accuracy"] for r in c["runs"]]
        assert c["summary"]["clean_accuracy"]["values"] == clean
        assert c["summary"]["clean_accuracy"]["mean"] == pytest.approx(sum(clean) / 2)
        assert len(c["summary"]["perturbations"]["blur"]["accuracy"]) == 2
    lines = (tmp_path / "generalisation.md").read_text().splitlines()
    head = "| Contender | Model | Train (s) | Clean | rotation AUC | blur AUC |"
    assert head in lines and sum(line.startswith(("| caps |", "| cnn |")) for line in lines) == 6
    assert (tmp_path / "generalisation.png").stat().st_size > 0
    # a second call trains nothing: every run is finished
    monkeypatch.setattr(experiments, "train", lambda *a, **k: pytest.fail("trained again"))
    assert main(_argv(tmp_path, mnist_dir, *TWO, *SWEEP)) == 0
    assert (
        json.loads((tmp_path / "generalisation.json").read_text())["contenders"]
        == report["contenders"]
    )


@pytest.mark.parametrize(
    ("more", "message"),
    [
        (["--contenders", "capsnet-smal"], "capsnet-smal"),
        (["--contenders", "a=capsnet-small", "a=baseline-cnn"], "distinct"),
        (["--contenders", "capsnet-small", "--model-option", "cnn.hidden=[8]"], "cnn"),
        (["--contenders", "c=capsnet-small", "--model-option", "c.widht=3"], "widht"),
        (["--contenders", "capsnet-small", "--seeds", "1", "1"], "distinct"),
        (["--strengths", "rotation=30,0"], "ascending"),
        (["--perturbations", "blur", "--strengths", "rotation=0,30"], "not swept"),
    ],
)
def test_bad_input_is_one_line_before_any_work(more, message, mnist_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_argv(out, mnist_dir, *more)) == 2
    err = capsys.readouterr().err
    assert err.startswith("capsnet: error: ") and err.count("\n") == 1 and message in err
    assert not out.exists()


def test_multimnist_runs_are_swept_counting_a_pair_right_when_both_digits_are(mnist_dir, tmp_path):
    one = ["--contenders", "caps=capsnet-small", *_options("caps", "capsnet-small")]
    more = ["--dataset", "multimnist", "--seeds", "3", "--perturbations", "blur", *one]
    assert main(_argv(tmp_path, mnist_dir, *more)) == 0
    report = json.loads((tmp_path / "generalisation.json").read_text())
    (run,) = report["contenders"]["caps"]["runs"]
    assert report["sweep"]["test_examples"] == 25 and list(run["perturbations"]) == ["blur"]
    assert len(run["perturbations"]["blur"]["accuracy"]) == 6


def test_expanded_mnist_adds_the_affnist_generated_column(mnist_dir, tmp_path):
    one = ["--contenders", "caps=capsnet-small", *_options("caps", "capsnet-small")]
    more = ["--dataset", "expanded-mnist", "--seeds", "3", "--perturbations", *one]
    assert main(_argv(tmp_path, mnist_dir, *more)) == 0
    report = json.loads((tmp_path / "generalisation.json").read_text())
    (run,) = report["contenders"]["caps"]["runs"]
    evaluation = json.loads((tmp_path / run["run"] / "eval-affnist-generated.json").read_text())
    assert report["cross_dataset"] == "affnist-generated" and report["sweep"] is None
    assert run["affnist-generated"] == evaluation["test_accuracy"]
    assert evaluation["test_examples"] == 25
    head = "| Contender | Model | Train (s) | Clean | affnist-generated |"
    assert head in (tmp_path / "generalisation.md").read_text().splitlines()
