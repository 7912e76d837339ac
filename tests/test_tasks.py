"""The trainer's datasets: MultiMNIST / expanded MNIST / affNIST tasks, two-label targets."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from capsnet import create_model
from capsnet.cli import main
from capsnet.data import OverlayTargets
from capsnet.data.tasks import check_dataset, default_val_size, load_test, load_train
from capsnet.errors import ConfigError
from capsnet.nn.losses import margin_loss
from capsnet.training import TrainConfig, num_correct, train

TINY = {"conv1_channels": 8, "primary_types": 2, "decoder_hidden": (16,)}


def test_num_correct_single_labels_and_pairs():
    lengths = torch.tensor([[0.9, 0.8, 0.1], [0.2, 0.7, 0.6], [0.1, 0.2, 0.3]])
    assert int(num_correct(lengths, torch.tensor([0, 1, 0]))) == 2
    pairs = OverlayTargets(torch.tensor([[1, 0], [1, 2], [2, 0]]), torch.zeros(3, 2, 1, 1, 1))
    assert int(num_correct(lengths, pairs)) == 2  # the third's two longest are 2 and 1


def test_two_digit_loss_reconstructs_each_digit_alone_and_sums():
    model = create_model("capsnet-small", **TINY, input_size=(36, 36)).eval()
    x = torch.rand(3, 1, 36, 36)
    t = OverlayTargets(torch.tensor([[1, 4], [0, 9], [7, 2]]), torch.rand(3, 2, 1, 36, 36))
    out = model(x, t)
    loss, parts = model.loss(out, x, t)
    multi_hot = torch.zeros(3, 10)
    multi_hot[[0, 0, 1, 1, 2, 2], [1, 4, 0, 9, 7, 2]] = 1
    sse = 0
    for d in range(2):  # each digit decoded from its own capsule only
        mask = torch.nn.functional.one_hot(t.labels[:, d], 10).float()
        sse = sse + (model.decode(out.poses, mask) - t.images[:, d]).pow(2).flatten(1).sum(1)
    torch.testing.assert_close(parts["margin"], margin_loss(out.scores, multi_hot))
    torch.testing.assert_close(parts["reconstruction"], sse.mean())
    torch.testing.assert_close(loss, parts["margin"] + 0.01 * sse.mean())  # the default


def test_dataset_options_and_test_only_sets_are_checked():
    with pytest.raises(ConfigError, match="unknown option"):
        check_dataset("multimnist", {"shfit": 2})
    with pytest.raises(ConfigError, match="bad option"):
        check_dataset("multimnist", {"shift": "two"})
    with pytest.raises(ConfigError, match="test set only"):
        TrainConfig(dataset="affnist-generated")
    with pytest.raises(ConfigError, match="unknown dataset"):
        TrainConfig(dataset="nope")


def test_expanded_mnist_places_digits_on_40x40_fixed_for_val_and_test(mnist_dir):
    a = load_train("expanded-mnist", mnist_dir, val_size=20, train_limit=30)
    b = load_train("expanded-mnist", mnist_dir, val_size=20, train_limit=30)
    assert a.image_shape == (1, 40, 40) and torch.equal(a.val_x, b.val_x)
    x, y = next(a.batches(30, torch.Generator().manual_seed(0)))
    assert x.shape == (30, 1, 40, 40) and y.shape == (30,)
    tx, _ = load_test("expanded-mnist", mnist_dir, limit=5)
    assert torch.equal(tx, load_test("expanded-mnist", mnist_dir, limit=5)[0])
    assert tx.flatten(1).sum(1).min() > 0  # no digit pushed off the canvas


@pytest.fixture
def multi_cfg(tiny_cfg) -> TrainConfig:
    return dataclasses.replace(
        tiny_cfg, dataset="multimnist", dataset_options={"shift": 2}, test_limit=40
    )


def test_multimnist_training_is_reproducible_and_tested_on_pairs(multi_cfg, tmp_path):
    m = train(multi_cfg, tmp_path / "a")
    train(multi_cfg, tmp_path / "b")
    assert m["dataset"] == "multimnist" and m["test_examples"] == 40
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["train"]["dataset_options"] == {"shift": 2}
    assert config["model"]["config"]["input_size"] == [36, 36]
    a, b = (load_file(str(tmp_path / r / "last.safetensors")) for r in "ab")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_evaluate_an_expanded_mnist_run_on_generated_affnist(tiny_cfg, mnist_dir, tmp_path, capsys):
    cfg = dataclasses.replace(
        tiny_cfg,
        dataset="expanded-mnist",
        model_overrides={**TINY, "reconstruction": False},
        train_limit=50,
        val_size=20,
        test_limit=20,
    )
    train(cfg, tmp_path)
    argv = ["evaluate", str(tmp_path), "--data-dir", str(mnist_dir), "--test-limit", "30"]
    assert main([*argv, "--dataset", "affnist-generated"]) == 0
    result = json.loads((tmp_path / "eval-affnist-generated.json").read_text())
    assert result["dataset"] == "affnist-generated" and result["test_examples"] == 30
    assert main([*argv, "--dataset", "mnist"]) == 2  # 28×28 images for a 40×40 model
    assert "model expects" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("n", "held_out"),
    [(60000, 5000), (50000, 5000), (24300, 2430), (900, 90), (300, 50), (60, 12), (4, 0)],
)
def test_the_default_validation_size_is_a_tenth_from_50_to_5000(n, held_out):
    assert default_val_size(n) == held_out


def test_mnist_holds_out_the_images_it_always_did_by_default(mnist_dir):
    assert TrainConfig().val_size is None  # default_val_size(60000): 5000, as it was fixed
    data = load_train("mnist", mnist_dir, train_limit=10)  # the 3,000 of the fixture
    assert data.held_out == 300
    same = load_train("mnist", mnist_dir, val_size=300, train_limit=10)
    assert torch.equal(data.val_x, same.val_x) and torch.equal(data.val_y, same.val_y)
