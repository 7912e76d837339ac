"""The paper's baseline CNN: size, outputs, loss, training and checkpoints."""

import dataclasses

import torch
import torch.nn.functional as F

from capsnet import create_model, load_run
from capsnet.data import OverlayTargets
from capsnet.models.baseline import BaselineConfig
from capsnet.training import train

TINY = {"conv_channels": (4, 4, 2), "hidden": (16, 8)}


def test_paper_baseline_has_35_4m_parameters():
    convs = (1 * 256 * 25 + 256) + (256 * 256 * 25 + 256) + (256 * 128 * 25 + 128)
    fcs = (128 * 28 * 28 * 328 + 328) + (328 * 192 + 192) + (192 * 10 + 10)
    model = create_model("baseline-cnn")
    assert sum(p.numel() for p in model.parameters()) == convs + fcs == 35_445_522


def test_outputs_are_probabilities_and_the_loss_is_cross_entropy():
    model = create_model("baseline-cnn", **TINY).eval()
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 3, 9, 3])
    out = model(x, y)
    torch.testing.assert_close(out.probabilities.sum(1), torch.ones(4))
    loss, parts = model.loss(out, x, y)
    torch.testing.assert_close(loss, F.cross_entropy(out.logits, y))
    assert set(parts) == {"cross_entropy"}


def test_two_labels_give_half_of_the_target_to_each():
    model = create_model("baseline-cnn", **TINY, input_size=(36, 36)).eval()
    x = torch.rand(2, 1, 36, 36)
    t = OverlayTargets(torch.tensor([[1, 4], [0, 9]]), torch.zeros(2, 2, 1, 36, 36))
    out = model(x)
    loss, _ = model.loss(out, x, t)
    logp = out.logits.log_softmax(1)
    expected = -(logp[0, [1, 4]].sum() + logp[1, [0, 9]].sum()) / 4  # mean of ½(−log p_a − log p_b)
    torch.testing.assert_close(loss, expected)


def test_trains_through_the_same_pipeline_and_round_trips(tiny_cfg, tmp_path):
    cfg = dataclasses.replace(
        tiny_cfg,
        model="baseline-cnn",
        model_overrides=TINY,
        train_limit=100,
        val_size=50,
        test_limit=50,
    )
    metrics = train(cfg, tmp_path)
    assert metrics["model"] == "baseline-cnn" and metrics["test_examples"] == 50
    model, config = load_run(tmp_path)
    assert isinstance(config, BaselineConfig) and config.conv_channels == (4, 4, 2)
    assert config.to_dict()["hidden"] == (16, 8)
    assert not model.training and model(torch.rand(2, 1, 28, 28)).scores.shape == (2, 10)
