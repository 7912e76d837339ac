"""Per-class accuracy and the confusion matrix (capsnet.training.metrics, capsnet evaluate)."""

import dataclasses
import json

import torch

from capsnet.cli import main
from capsnet.targets import OverlayTargets
from capsnet.training import train
from capsnet.training.metrics import ClassCounts, write_class_report


def test_confusion_rows_are_true_classes_and_columns_predictions():
    counts = ClassCounts(3)
    lengths = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.8, 0.1, 0.1], [0, 0, 1.0]])
    counts.update(lengths[:2], torch.tensor([0, 1]))  # two batches add up
    counts.update(lengths[2:], torch.tensor([1, 2]))
    report = counts.report(["a", "b", "c"])
    assert report["confusion"] == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert [c["accuracy"] for c in report["per_class"]] == [1.0, 0.5, 1.0]
    assert report["per_class"][1] == {
        "class": 1,
        "name": "b",
        "examples": 2,
        "correct": 1,
        "accuracy": 0.5,
    }


def test_a_class_without_examples_has_no_accuracy():
    counts = ClassCounts(2)
    counts.update(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    assert counts.report(["x", "y"])["per_class"][1]["accuracy"] is None


def test_accuracies_are_written_as_the_quotient_not_float32_noise(tmp_path):
    counts = ClassCounts(2)
    counts.update(torch.eye(2)[[0, 0, 0, 0, 1]], torch.zeros(5, dtype=torch.long))  # 4 of 5
    write_class_report(counts.report(["x", "y"]), tmp_path / "classes")
    text = (tmp_path / "classes.json").read_text()
    assert '"accuracy": 0.8' in text and "0.800000" not in text  # float32: 0.800000011920929


def test_several_labels_count_when_among_the_longest_capsules():
    counts = ClassCounts(4)
    lengths = torch.tensor([[0.9, 0.8, 0.1, 0.0], [0.9, 0.1, 0.8, 0.0]])
    y = OverlayTargets(torch.tensor([[0, 1], [1, 2]]), torch.zeros(2, 2, 1, 2, 2))
    counts.update(lengths, y)
    report = counts.report(list("abcd"))
    assert report["confusion"] is None
    assert [(c["examples"], c["correct"]) for c in report["per_class"]] == [
        (1, 1),
        (2, 1),
        (1, 1),
        (0, 0),
    ]


def test_evaluate_writes_per_class_json_and_confusion_png(tiny_run, mnist_dir, capsys):
    argv = ["evaluate", str(tiny_run), "--data-dir", str(mnist_dir), "--test-limit", "50"]
    assert main(argv) == 0
    report = json.loads((tiny_run / "classes.json").read_text())
    confusion = torch.tensor(report["confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == 50
    assert report["class_names"][3] == "3"
    assert sum(c["examples"] for c in report["per_class"]) == 50
    assert (tiny_run / "classes.png").read_bytes()[:4] == b"\x89PNG"


def test_tensorboard_logs_step_and_epoch_scalars_and_figures(tiny_cfg, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = dataclasses.replace(tiny_cfg, epochs=2, tensorboard=True)
    train(cfg, tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = events.Tags()
    assert {"step/loss", "step/lr", "step/images_per_second"} <= set(tags["scalars"])
    assert {"epoch/train_loss", "epoch/val_accuracy", "epoch/lr"} <= set(tags["scalars"])
    assert len(events.Scalars("step/loss")) == 4  # 2 epochs × ⌈60 / 50⌉ steps
    assert [e.step for e in events.Scalars("epoch/train_loss")] == [1, 2]
    assert {"figures/coupling", "figures/reconstructions"} <= set(tags["images"])
