"""Figures: they render from tiny trained runs, and Fig. 4's tweaks are what they say."""

import dataclasses
import logging

import pytest
import torch

import capsnet.models.figures as model_figures
import capsnet.tools.viz as viz
from capsnet import create_model
from capsnet.cli import main
from capsnet.tools.viz import (
    _spread,
    perturbed_reconstructions,
    save_coupling,
    save_figures,
    save_perturbations,
    save_reconstructions,
)
from capsnet.training import train

NO_DECODER = {"conv1_channels": 8, "primary_types": 2, "reconstruction": False}


def _train(cfg, path, **changes):
    train(dataclasses.replace(cfg, **changes), path)
    return path


def test_perturbation_tweaks_one_dimension_of_the_winner_by_each_delta(tiny_cfg):
    model = create_model("capsnet-small", **tiny_cfg.model_overrides).eval()
    x = torch.rand(2, 1, 28, 28)
    recon = perturbed_reconstructions(model, x)
    assert recon.shape == (2, 16, 11, 1, 28, 28)
    out = model(x)  # delta 0 (column 5) is the plain reconstruction from the winner
    for d in (0, 15):
        torch.testing.assert_close(recon[:, d, 5], out.reconstructions, atol=1e-5, rtol=0)
    assert not torch.allclose(recon[:, 0, 0], recon[:, 0, 10])


def test_all_figures_of_a_capsnet_run(tiny_cfg, tmp_path, capsys):
    run = _train(tiny_cfg, tmp_path / "run")
    assert main(["figures", str(run), "--out", str(tmp_path / "figs")]) == 0
    printed = capsys.readouterr().out.split()
    names = ["training", "coupling", "reconstructions", "perturbation"]
    assert printed == [str(tmp_path / "figs" / f"{n}.png") for n in names]
    for path in printed:
        assert (tmp_path / "figs" / path).stat().st_size > 5000


@pytest.mark.parametrize(
    ("changes", "expected", "message"),
    [
        ({"model_overrides": NO_DECODER}, 2, "no decoder"),
        ({"model": "baseline-cnn", "model_overrides": {"conv_channels": (2, 2, 2)}}, 1, "only"),
        ({"dataset": "multimnist"}, 4, None),
    ],
)
def test_runs_without_decoder_baselines_and_multimnist(
    tiny_cfg, tmp_path, caplog, changes, expected, message
):
    run = _train(tiny_cfg, tmp_path, **changes)
    with caplog.at_level(logging.INFO, logger="capsnet"):
        paths = save_figures(run)
    assert len(paths) == expected and all(p.stat().st_size > 5000 for p in paths)
    assert message is None or message in caplog.text
    if changes.get("dataset") == "multimnist":
        assert (tmp_path / "multimnist.png").is_file()


def test_two_channel_images_are_drawn_side_by_side(tiny_cfg, tmp_path):
    # smallNORB's stereo pairs: matplotlib draws 1, 3 or 4 channels, not 2
    model = create_model("capsnet-small", **tiny_cfg.model_overrides, in_channels=2).eval()
    x = torch.rand(3, 2, 28, 28)
    paths = [
        save_reconstructions(model, x, torch.tensor([0, 1, 2]), tmp_path / "r.png"),
        save_perturbations(model, x, tmp_path / "p.png"),
        save_coupling(model, x[0], tmp_path / "c.png"),
    ]
    assert all(p.stat().st_size > 1000 for p in paths)


@pytest.fixture
def drawn(monkeypatch) -> list:
    """The matplotlib figures the test's viz calls draw (still open, not saved)."""
    figures = []
    for module in (viz, model_figures):  # run figures and the model's own
        monkeypatch.setattr(module, "save_png", lambda fig, path: figures.append(fig) or path)
    yield figures
    for fig in figures:
        model_figures.pyplot().close(fig)


def test_examples_are_spread_over_the_classes_of_a_sorted_test_set():
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])  # a folder's test set: sorted by class
    assert _spread(y, 5).tolist() == [0, 3, 5, 1, 4]  # the first of each, then the second
    assert _spread(y[[5, 0, 3, 1]], 3).tolist() == [1, 2, 0]  # any order


def test_perturbation_panels_say_which_class_and_strength(tiny_cfg, drawn):
    model = create_model("capsnet-small", **tiny_cfg.model_overrides).eval()
    x = torch.rand(2, 1, 28, 28)
    preds = model(x).scores.argmax(1).tolist()
    labels = torch.tensor([preds[0], (preds[1] + 1) % 10])  # the second one wrong
    save_perturbations(model, x, "p.png", labels, [f"c{k}" for k in range(10)])
    axes = drawn[0].axes
    assert [ax.get_title() for ax in axes] == [
        f"true c{preds[0]}, capsule c{preds[0]}",
        f"true c{(preds[1] + 1) % 10}, capsule c{preds[1]}",
    ]
    assert [ax.title.get_color() for ax in axes] == ["k", "r"]
    ticks = [t.get_text() for t in axes[0].get_xticklabels()]
    assert ticks[4:7] == ["-0.05", "+0.00", "+0.05"]
    assert axes[0].get_xlabel() == "added to the dimension"


def test_training_curves_of_two_epochs_have_whole_epoch_ticks(tiny_cfg, tmp_path, drawn):
    run = _train(tiny_cfg, tmp_path, epochs=2)
    viz.save_training_curves(run, tmp_path / "t.png")
    for ax in drawn[0].axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(t == int(t) for t in ticks), ticks
