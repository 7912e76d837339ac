"""Every registered model through every tool: a tiny run of each (CLI), then evaluate,
predict, figures, export, explore, robustness, bench and average on it, by the CLI and the Python
API; and runs of other tasks (expanded-mnist, multimnist) through export, explore,
figures and robustness."""

import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from tests.conftest import TINY_MODELS

from capsnet import list_models, load_run
from capsnet.cli import main
from capsnet.models import CapsuleClassifier, PoseDecoder, provides
from capsnet.tools.bench import BenchConfig, benchmark
from capsnet.tools.explore import load_explorer
from capsnet.tools.export import export_run
from capsnet.tools.predict import predict
from capsnet.tools.viz import save_figures
from capsnet.training import Run, RunDir

URL = "http://127.0.0.1"
SMALL = ["--epochs", "1", "--batch-size", "10", "--train-limit", "20", "--val-size", "10"]


def _options(overrides: dict) -> list[str]:
    return [a for k, v in overrides.items() for a in ("--model-option", f"{k}={json.dumps(v)}")]


def _train(out, model: str, mnist_dir, dataset: str = "mnist") -> None:
    argv = ["-q", "train", "--model", model, "--dataset", dataset, "--out", str(out)]
    argv += [*SMALL, "--test-limit", "10", "--data-dir", str(mnist_dir)]
    assert main([*argv, *_options(TINY_MODELS[model])]) == 0


def test_every_registered_model_has_tiny_overrides():
    assert sorted(TINY_MODELS) == list_models()


@pytest.fixture(scope="module", params=list_models())
def run(request, mnist_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param) / "run"
    _train(out, request.param, mnist_dir)
    return out


def test_the_mean_of_a_run_with_itself_is_the_run_for_every_model(run, tmp_path):
    out = tmp_path / "mean"
    assert main(["-q", "average", str(run), str(run), "--out", str(out)]) == 0
    (ours, _), (theirs, _) = load_run(run), load_run(out)
    for (key, a), b in zip(ours.state_dict().items(), theirs.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    assert main(["-q", "evaluate", str(out), "--test-limit", "10"]) == 0


def test_every_tool_works_on_a_run_of_every_model(run, tmp_path, capsys):
    model, _ = load_run(run)
    assert main(["-q", "evaluate", str(run), "--test-limit", "10"]) == 0  # the run's data dir
    assert json.loads((run / "eval.json").read_text())["test_examples"] == 10
    images = np.zeros((2, 28, 28), np.uint8)
    np.save(tmp_path / "x.npy", images)
    capsys.readouterr()
    assert main(["-q", "predict", str(run), str(tmp_path / "x.npy"), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 and len(rows[0]["scores"]) == 10
    assert main(["-q", "figures", str(run), "--out", str(tmp_path / "fig")]) == 0
    expected = {"training.png"} | (
        {"coupling.png"} if provides(model, CapsuleClassifier) else set()
    )
    if provides(model, PoseDecoder):
        expected |= {"reconstructions.png", "perturbation.png"}
    assert {p.name for p in (tmp_path / "fig").iterdir()} == expected
    onnx = tmp_path / "m.onnx"
    assert main(["-q", "export", str(run), "--onnx", str(onnx), "--check-images", "4"]) == 0
    assert capsys.readouterr().out.count("wrote ") == (2 if provides(model, PoseDecoder) else 1)
    client = TestClient(load_explorer(run), base_url=URL)
    info = client.get("/api/info").json()
    assert info["capsules"] == provides(model, CapsuleClassifier) and info["test_images"] > 0
    p = client.post("/api/predict", json={"pixels": [0.0] * 784}).json()
    assert len(p["scores"]) == 10 and (p["coupling"] is None) != info["capsules"]
    assert client.get("/api/random").status_code == 200
    rob = ["-q", "robustness", str(run), "--against", str(run / "last.safetensors")]
    rob += ["--limit", "8", "--perturbations", "rotation", "blur", "--out", str(tmp_path / "r")]
    assert main(rob) == 0
    report = json.loads((tmp_path / "r" / "robustness.json").read_text())
    assert len(report["models"]) == 2 and report["test_examples"] == 8
    name = RunDir(run).train.model
    bench = ["-q", "bench", "--model", name, "--batch-size", "2", "--steps", "1", "--warmup", "0"]
    assert main([*bench, "--json", *_options(TINY_MODELS[name])]) == 0


def test_the_python_api_drives_the_same_run(run, tmp_path):
    model, config = load_run(run)
    scores = predict(model, Run(run).test_set(limit=4)[0].float() / 255)
    assert scores.shape == (4, config.num_classes)
    assert save_figures(run, tmp_path)[0].name == "training.png"
    assert len(export_run(run, tmp_path / "m.onnx", check_images=4)) >= 1
    name = RunDir(run).train.model
    cfg = BenchConfig(name, dict(TINY_MODELS[name]), batch_size=2, steps=1, warmup=0)
    assert benchmark(cfg)["train_images_per_second"] > 0


@pytest.mark.parametrize("dataset", ["expanded-mnist", "multimnist"])
def test_runs_of_other_tasks_export_explore_and_sweep_with_their_own_test_images(
    dataset, mnist_dir, tmp_path
):
    run = tmp_path / "run"
    _train(run, "capsnet-small", mnist_dir, dataset)
    size = 40 if dataset == "expanded-mnist" else 36
    assert load_run(run)[1].input_size == (size, size)
    assert main(["-q", "export", str(run), "--onnx", str(tmp_path / "m.onnx")]) == 0
    info = TestClient(load_explorer(run), base_url=URL).get("/api/info").json()
    assert info["dataset"] == dataset and info["test_images"] > 0
    assert main(["-q", "figures", str(run)]) == 0
    argv = ["-q", "robustness", str(run), "--limit", "4", "--perturbations", "blur"]
    assert main([*argv, "--out", str(tmp_path / "rob")]) == 0
    report = json.loads((tmp_path / "rob" / "robustness.json").read_text())
    assert report["dataset"] == dataset and len(report["models"][str(run)]["blur"]["accuracy"]) == 6
