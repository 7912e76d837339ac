"""EM CapsNet, Efficient-CapsNet and CapsNet with each routing: shapes, losses, training."""

import json

import pytest
import torch
from safetensors.torch import save_file

from capsnet import ROUTINGS, create_model, list_models
from capsnet.data import load_split
from capsnet.errors import ConfigError
from capsnet.models.checkpoint import load_checkpoint
from capsnet.nn.losses import spread_loss
from capsnet.tools.bench import BenchConfig, benchmark
from capsnet.training import train_step

TINY_EM = {"conv1_channels": 8, "primary_types": 4, "caps1_types": 4, "caps2_types": 4}
TINY_CAPSNET = {"conv1_channels": 16, "primary_types": 4, "decoder_hidden": (32,)}
TINY_EFFICIENT = {"stem_channels": (8, 16, 16, 32), "decoder_hidden": (32,)}
TINY = {  # every registered model, made small enough to train in a test
    "aff-capsnet": TINY_CAPSNET,
    "aff-capsnet-small": {**TINY_CAPSNET, "routing_iterations": 3},
    "baseline-cnn": {"conv_channels": (8, 8, 8), "hidden": (16, 16)},
    "baseline-cnn-small": {"conv_channels": (8, 8, 8), "hidden": (16, 16)},
    "capsnet-cifar10": {**TINY_CAPSNET, "in_channels": 1, "input_size": (28, 28)},
    "capsnet-mnist": TINY_CAPSNET,
    "capsnet-small": TINY_CAPSNET,
    "efficient-capsnet": TINY_EFFICIENT,
    "efficient-capsnet-p4": {"stem_channels": (4, 8, 8, 16), "decoder_hidden": (32,)},
    "em-capsnet": {**TINY_EM, "input_size": (28, 28), "num_classes": 10},
    "em-capsnet-small": TINY_EM,
}


def test_efficient_capsnet_has_the_published_parameter_count():
    model = create_model("efficient-capsnet")
    decoder = sum(p.numel() for p in model.decoder.parameters())
    assert sum(p.numel() for p in model.parameters()) - decoder == 161_824


def test_em_capsnet_parameter_count():
    # 832 + 17,952 + 2 × 147,520 + 2,570 for A = B = C = D = 32 (the paper says "310K").
    assert sum(p.numel() for p in create_model("em-capsnet").parameters()) == 316_394


@pytest.mark.parametrize("size", [(28, 28), (32, 32), (40, 36)])
def test_em_capsnet_shapes(size):
    model = create_model("em-capsnet-small", input_size=size, **TINY_EM)
    out = model(torch.rand(3, 1, *size))
    types, h, w = model.config.coupling_grid
    assert out.scores.shape == (3, 10) and out.poses.shape == (3, 10, 16)
    assert out.reconstructions is None
    assert out.coupling.shape == (3, types * h * w, 10)
    torch.testing.assert_close(out.coupling.sum(2), torch.ones(3, types * h * w))


@pytest.mark.parametrize("size, grid", [((28, 28), (1, 1)), ((36, 36), (5, 5))])
def test_efficient_capsnet_shapes(size, grid):
    model = create_model("efficient-capsnet", input_size=size, **TINY_EFFICIENT)
    out = model(torch.rand(2, 1, *size))
    assert model.config.primary_grid == grid
    assert out.coupling.shape == (2, 4 * grid[0] * grid[1], 10)
    assert out.reconstructions.shape == (2, 1, *size)


def test_spread_loss_worked_example():
    # a = (0.9, 0.5, 0.2), t = 0, m = 0.5: max(0, 0.5 - 0.4)² + max(0, 0.5 - 0.7)² = 0.01.
    loss = spread_loss(torch.tensor([[0.9, 0.5, 0.2]]), torch.tensor([0]), 0.5)
    torch.testing.assert_close(loss, torch.tensor(0.01))


def test_margin_schedule_advances_in_training_only_and_is_saved(tmp_path):
    from capsnet.models.checkpoint import save_checkpoint

    model = create_model("em-capsnet-small", margin_steps=4, **TINY_EM)
    x = torch.rand(2, 1, 28, 28)
    assert model.margin().item() == pytest.approx(0.2)
    model.train()
    model(x), model(x)
    assert model.margin().item() == pytest.approx(0.55)
    model.eval()
    model(x)
    assert model.margin().item() == pytest.approx(0.55)
    save_checkpoint(tmp_path / "m.safetensors", model, "em-capsnet-small")
    assert load_checkpoint(tmp_path / "m.safetensors").margin().item() == pytest.approx(0.55)
    model.train()
    for _ in range(5):
        model(x)
    assert model.margin().item() == pytest.approx(0.9)


def test_em_capsnet_gradients_reach_every_parameter():
    model = create_model("em-capsnet-small", **TINY_EM)
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    loss, _ = model.loss(model(x), x, y)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_checkpoint_without_the_routing_field_loads(tmp_path):
    # Runs saved before the routing choice have no "routing" in their config: dynamic.
    model = create_model("capsnet-small", **TINY_CAPSNET)
    config = model.config.to_dict()
    del config["routing"]
    path = tmp_path / "old.safetensors"
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(path),
        metadata={"model": "capsnet-small", "config": json.dumps(config)},
    )
    assert load_checkpoint(path).config.routing == "dynamic"


def test_routing_is_a_config_error_for_models_without_one():
    with pytest.raises(ConfigError, match="bad model override"):
        create_model("baseline-cnn-small", routing="em")
    with pytest.raises(ConfigError, match="unknown routing"):
        create_model("capsnet-small", routing="magic")


def _train_steps(model, x, y, steps=6, lr=3e-3):
    optim = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    return [float(train_step(model, model, optim, x, y)[0]) for _ in range(steps)]


@pytest.fixture(scope="module")
def mnist_batch(mnist_dir):
    x, y = load_split("mnist", "test", mnist_dir)
    return x[:16].float() / 255, y[:16]


def test_every_registered_model_has_a_tiny_config():
    assert sorted(TINY) == list_models()


@pytest.mark.parametrize("name", sorted(TINY))
def test_every_registered_model_trains_on_real_mnist(name, mnist_batch):
    torch.manual_seed(0)
    x, y = mnist_batch
    losses = _train_steps(create_model(name, **TINY[name]), x, y)
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("routing", sorted(ROUTINGS))
def test_capsnet_trains_with_every_routing(routing, mnist_batch):
    torch.manual_seed(0)
    x, y = mnist_batch
    losses = _train_steps(create_model("capsnet-small", routing=routing, **TINY_CAPSNET), x, y)
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("name", ["em-capsnet-small", "efficient-capsnet"])
def test_bench_runs_the_new_models(name):
    model = create_model(name, **TINY[name])
    r = benchmark(BenchConfig(model=name, batch_size=2, warmup=0, steps=1, device="cpu"), model)
    assert r["parameters"] == sum(p.numel() for p in model.parameters())
    assert r["train_images_per_second"] > 0


@pytest.mark.parametrize(
    "model, extra, routing",
    [("em-capsnet-small", [], "em"), ("efficient-capsnet", ["--routing", "dynamic"], "dynamic")],
)
def test_cli_trains_and_draws_the_coupling(model, extra, routing, mnist_dir, tmp_path):
    from capsnet.cli import main

    out = tmp_path / "run"
    argv = ["train", "--model", model, "--data-dir", str(mnist_dir), "--out", str(out), *extra]
    argv += ["--train-limit", "60", "--val-size", "30", "--test-limit", "30", "--epochs", "1"]
    assert main([*argv, "--batch-size", "30"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["config"]["routing"] == routing
    assert (out / "coupling.png").stat().st_size > 1000


def test_cli_routing_for_a_model_without_routing_is_one_line(mnist_dir, tmp_path, capsys):
    from capsnet.cli import main

    argv = ["train", "--model", "baseline-cnn-small", "--routing", "em", "--out", str(tmp_path)]
    assert main([*argv, "--data-dir", str(mnist_dir), "--val-size", "50"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad model override" in err, err
