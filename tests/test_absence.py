"""Blank training examples: the label ABSENT ("no class"), how each loss reads it, and the
training option ``blank`` that makes them."""

import csv
import dataclasses

import pytest
import torch
import torch.nn.functional as F

import capsnet.training.loop
from capsnet import create_model, margin_loss
from capsnet.errors import ConfigError
from capsnet.targets import (
    ABSENT,
    OverlayTargets,
    blank_out,
    multi_hot,
    num_correct,
    shows_object,
)
from capsnet.training import TrainConfig, train


def test_multi_hot_gives_an_absent_label_no_class():
    labels = torch.tensor([2, ABSENT, 0])
    assert multi_hot(labels, 3).tolist() == [[0, 0, 1], [0, 0, 0], [1, 0, 0]]


def test_multi_hot_of_several_labels_skips_absent_slots():
    labels = torch.tensor([[1, 2], [ABSENT, ABSENT], [0, ABSENT]])
    assert multi_hot(labels, 3).tolist() == [[0, 1, 1], [0, 0, 0], [1, 0, 0]]


def test_margin_loss_of_a_blank_is_lambda_times_every_class_above_m_minus():
    lengths = torch.tensor([[0.3, 0.05, 0.6]])
    # 0.5 · ((0.3 − 0.1)² + 0 + (0.6 − 0.1)²) = 0.5 · (0.04 + 0.25) = 0.145
    assert margin_loss(lengths, torch.tensor([ABSENT])).item() == pytest.approx(0.145)


def test_blank_out_blanks_images_and_labels_of_the_drawn_examples_only():
    x = torch.full((400, 1, 4, 4), 7, dtype=torch.uint8)
    y = torch.arange(400) % 10
    bx, by = blank_out(x, y, 0.25, torch.Generator().manual_seed(0))
    blank = by == ABSENT
    assert 60 < int(blank.sum()) < 140  # about a quarter of 400
    assert (bx[blank] == 0).all() and (bx[~blank] == 7).all()
    assert torch.equal(by[~blank], y[~blank]) and bx.dtype == torch.uint8
    assert (x == 7).all() and (y >= 0).all()  # the inputs are not changed


def test_blank_out_is_seeded_and_share_zero_changes_nothing():
    x, y = torch.rand(50, 1, 4, 4), torch.arange(50) % 10
    a = blank_out(x, y, 0.5, torch.Generator().manual_seed(3))
    b = blank_out(x, y, 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert blank_out(x, y, 0.0) == (x, y)


def test_blank_out_of_overlays_empties_every_digit_of_a_blank():
    images = torch.ones(200, 2, 1, 4, 4)
    y = OverlayTargets(torch.tensor([[1, 2]]).repeat(200, 1), images)
    bx, by = blank_out(torch.ones(200, 1, 4, 4), y, 0.5, torch.Generator().manual_seed(0))
    blank = (by.labels == ABSENT).all(1)
    assert 0 < int(blank.sum()) < 200 and (by.labels[~blank] == torch.tensor([1, 2])).all()
    assert (by.images[blank] == 0).all() and (by.images[~blank] == 1).all()
    assert (bx[blank] == 0).all() and (bx[~blank] == 1).all()


def test_a_blank_never_counts_as_correct():
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    assert int(num_correct(scores, torch.tensor([0, ABSENT]))) == 1


def test_shows_object_is_false_for_blanks_only():
    assert shows_object(torch.tensor([3, ABSENT])).tolist() == [True, False]
    labels = torch.tensor([[1, 2], [ABSENT, ABSENT], [ABSENT, 4]])
    overlays = OverlayTargets(labels, torch.zeros(3, 2, 1, 4, 4))
    assert shows_object(overlays).tolist() == [True, False, True]


def test_training_accuracy_under_blank_is_over_the_images_that_show_a_digit(
    tiny_cfg, tmp_path, monkeypatch
):
    def right_on_every_digit(model, forward, optim, x, y, **_):  # a step, but no learning
        return torch.tensor(1.0), shows_object(y).sum()

    monkeypatch.setattr(capsnet.training.loop, "train_step", right_on_every_digit)
    cfg = dataclasses.replace(tiny_cfg, blank=0.5, val_size=0)
    train(cfg, tmp_path)
    with open(tmp_path / "history.csv") as f:
        assert float(next(csv.DictReader(f))["train_accuracy"]) == 1.0


def test_capsnet_decodes_a_blank_from_no_capsule_and_its_loss_wants_every_capsule_short():
    torch.manual_seed(0)
    model = create_model("capsnet-small", conv1_channels=8, primary_types=2)
    x = torch.zeros(2, 1, 28, 28)
    y = torch.tensor([ABSENT, ABSENT])
    out = model(x, y)
    empty = model.decoder(torch.zeros(1, model.config.num_classes * model.config.class_dim))
    assert torch.allclose(out.reconstructions, empty.expand(2, -1, -1, -1))
    loss, parts = model.loss(out, x, y)
    assert parts["margin"].item() == pytest.approx(margin_loss(out.scores, y).item())
    neg = 0.5 * F.relu(out.scores - 0.1).pow(2).sum(1).mean()
    assert parts["margin"].item() == pytest.approx(neg.item())


def test_capsnet_decodes_an_absent_overlay_slot_from_no_capsule():
    torch.manual_seed(0)
    model = create_model("capsnet-small", conv1_channels=8, primary_types=2)
    poses = torch.randn(1, 10, 16)
    images = model.decode_classes(poses, torch.tensor([[3, ABSENT]]))  # (1, 2, 1, 28, 28)
    mask = F.one_hot(torch.tensor([3]), 10).float()
    assert torch.allclose(images[0, 0], model.decode(poses, mask)[0])
    assert torch.allclose(images[0, 1], model.decode(poses, torch.zeros(1, 10))[0])


def test_the_cnn_learns_a_blank_as_a_uniform_belief():
    model = create_model("baseline-cnn-small").train()
    logits = torch.tensor([[2.0, 0.0, -1.0, 0.5, 0, 0, 0, 0, 0, 0]])
    out = type(model(torch.zeros(1, 1, 28, 28)))(logits.softmax(1), logits)
    loss, _ = model.loss(out, None, torch.tensor([ABSENT]))
    assert loss.item() == pytest.approx(-logits.log_softmax(1).mean().item())  # uniform target
    loss, _ = model.loss(out, None, torch.tensor([0]))
    assert loss.item() == pytest.approx(F.cross_entropy(logits, torch.tensor([0])).item())


@pytest.mark.parametrize("blank", [-0.1, 1.0, float("nan")])
def test_blank_outside_zero_to_one_is_a_config_error(blank):
    with pytest.raises(ConfigError, match="blank"):
        TrainConfig(blank=blank)


def test_a_model_whose_loss_needs_a_class_cannot_train_on_blanks():
    with pytest.raises(ConfigError, match="em-capsnet-small cannot train on blank"):
        TrainConfig(model="em-capsnet-small", blank=0.1)


def test_train_with_blanks_records_them(tiny_cli_train):
    assert tiny_cli_train("--blank", "0.2")["blank"] == 0.2
