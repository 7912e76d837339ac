"""The model contract: every registered model meets it, and every tool refuses a model that
lacks what it needs in one line naming the model and the missing part, before any work."""

from typing import Any, NamedTuple

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tests.conftest import TINY_MODELS
from torch import Tensor, nn

from capsnet import create_model, list_models
from capsnet.cli import main
from capsnet.errors import ConfigError
from capsnet.files import write_json
from capsnet.models import (
    CapsuleClassifier,
    CapsuleOutput,
    Classifier,
    ModelConfig,
    PoseDecoder,
    Scored,
    provides,
    require,
)
from capsnet.models.checkpoint import save_checkpoint
from capsnet.models.registry import _REGISTRY
from capsnet.tools.explore import create_app
from capsnet.tools.export import classifier_outputs
from capsnet.tools.viz import save_coupling
from capsnet.training import Run

CAPSULE_FAMILIES = ("aff-capsnet", "capsnet", "efficient", "em-capsnet")


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_is_a_classifier_and_its_output_says_what_it_is(name):
    model = create_model(name, **TINY_MODELS[name]).eval()
    assert provides(model, Classifier)
    is_capsule = name.startswith(CAPSULE_FAMILIES)
    assert provides(model, CapsuleClassifier) == is_capsule
    assert provides(model, PoseDecoder) == name.startswith(("aff-capsnet", "capsnet", "efficient"))
    c = model.config
    with torch.no_grad():
        out = model(torch.rand(2, c.in_channels, *c.input_size))
    assert isinstance(out, Scored) and out.scores.shape == (2, c.num_classes)
    assert isinstance(out, CapsuleOutput) == is_capsule
    if is_capsule:
        types, h, w = model.coupling_grid
        assert out.poses.shape == (2, c.num_classes, model.pose_dim)
        assert out.coupling.shape == (2, types * h * w, c.num_classes)


class _Logits(NamedTuple):
    scores: Tensor  # (B, K) — no poses, no routing weights


class _Linear(nn.Module):
    """A new family that meets only the Classifier part of the contract."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.fc = nn.Linear(config.in_channels * config.input_size[0] * config.input_size[1], 10)

    def forward(self, x: Tensor, y: Any = None) -> _Logits:
        return _Logits(self.fc(x.flatten(1)).softmax(1))

    def loss(self, out: _Logits, x: Tensor, y: Tensor):
        loss = nn.functional.nll_loss(out.scores.log(), y)
        return loss, {"nll": loss.detach()}


class _NoLoss(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config, self.w = config, nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, y: Any = None) -> _Logits:
        return _Logits(torch.zeros(len(x), 10) + self.w)


@pytest.fixture
def linear_family(monkeypatch):
    monkeypatch.setitem(_REGISTRY, "linear-test", (_Linear, ModelConfig()))
    monkeypatch.setitem(_REGISTRY, "noloss-test", (_NoLoss, ModelConfig()))


def test_a_tool_refuses_a_missing_part_in_one_line_naming_model_and_part(linear_family):
    model = create_model("linear-test")
    with pytest.raises(ConfigError) as e:
        require(model, "coupling figure", CapsuleClassifier)
    message = str(e.value)
    assert "\n" not in message and "linear-test" in message and "coupling coefficients" in message
    with pytest.raises(ConfigError, match="coupling.*capsule poses.*linear-test has none"):
        save_coupling(model, torch.rand(1, 28, 28), "never-written.png")


def test_a_new_family_plugs_in_with_no_edits_to_the_tools(linear_family, tmp_path, mnist_dir):
    run = tmp_path / "run"
    argv = ["-q", "train", "--model", "linear-test", "--data-dir", str(mnist_dir), "--out"]
    small = ["--epochs", "1", "--train-limit", "20", "--val-size", "10", "--test-limit", "10"]
    assert main([*argv, str(run), *small]) == 0
    assert (run / "training.png").is_file() and not (run / "coupling.png").exists()
    assert classifier_outputs(create_model("linear-test")) == ("scores",)
    assert main(["-q", "export", str(run), "--onnx", str(tmp_path / "m.onnx")]) == 0
    client = TestClient(create_app(create_model("linear-test").eval()), base_url="http://127.0.0.1")
    assert client.get("/api/info").json()["capsules"] is False
    p = client.post("/api/predict", json={"pixels": [0.0] * 784}).json()
    assert len(p["scores"]) == 10 and p["pose"] is None and p["coupling"] is None


def test_every_tool_refuses_a_model_without_a_loss_before_any_work(linear_family, tmp_path, capsys):
    save_checkpoint(tmp_path / "best.safetensors", create_model("noloss-test"), "noloss-test")
    for argv in (
        ["predict", str(tmp_path), str(tmp_path / "x.npy")],
        ["export", str(tmp_path), "--onnx", str(tmp_path / "m.onnx")],
        ["figures", str(tmp_path)],
        ["explore", str(tmp_path), "--port", "0"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "noloss-test has none" in err and "a loss" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.safetensors"]


def test_old_runs_load_migrated(tmp_path, mnist_dir):
    # A checkpoint from before the rename (self-attention's bias was "log_prior") and a
    # config.json from before precision/compile existed, with a setting since removed.
    from tests.conftest import TINY_MODELS

    model = create_model("efficient-capsnet", **TINY_MODELS["efficient-capsnet"])
    path = tmp_path / "best.safetensors"
    save_checkpoint(path, model, "efficient-capsnet")
    tensors = {k.replace("coupling_bias", "log_prior"): v for k, v in load_file(path).items()}
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    save_file(tensors, str(path), metadata=metadata)
    train = {"dataset": "mnist", "data_dir": str(mnist_dir), "model": "efficient-capsnet"}
    write_json(tmp_path / "config.json", {"train": {**train, "old_setting": 1}})
    run = Run(tmp_path)
    assert run.train.precision == "fp32" and run.data_dir == str(mnist_dir)
    loaded = run.load_model()
    bias = loaded.classes.router.params["coupling_bias"]
    torch.testing.assert_close(bias, model.classes.router.params["coupling_bias"])
    assert run.test_set(limit=3)[0].shape == (3, 1, 28, 28)
