"""Per-class accuracy and the confusion matrix of an evaluation, as JSON and PNG.

One label per image: row ``t``, column ``p`` of the confusion matrix counts the images of
class ``t`` predicted as ``p`` (the largest class score: the longest capsule); a class's
accuracy is its diagonal entry over its row sum. L labels per image (MultiMNIST): a label
counts as correct when its class is among the L largest scores; there is no confusion
matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from capsnet.files import atomic_write, write_json
from capsnet.models.figures import pyplot
from capsnet.targets import OverlayTargets


class ClassCounts:
    """Running per-class counts over batches of class scores (B, K) and their targets."""

    def __init__(self, num_classes: int) -> None:
        self.k = num_classes
        self.confusion: Tensor | None = torch.zeros(num_classes, num_classes, dtype=torch.long)
        self.correct = torch.zeros(num_classes, dtype=torch.long)
        self.total = torch.zeros(num_classes, dtype=torch.long)

    def update(self, scores: Tensor, y: Tensor | OverlayTargets) -> None:
        scores = scores.detach().cpu()  # (B, K)
        if isinstance(y, OverlayTargets):
            labels = y.labels.cpu()  # (B, L)
            top = scores.topk(labels.shape[1], dim=1).indices  # (B, L)
            hit = (labels.unsqueeze(2) == top.unsqueeze(1)).any(2)  # (B, L)
            self.total += torch.bincount(labels.flatten(), minlength=self.k)
            self.correct += torch.bincount(labels[hit], minlength=self.k)
            self.confusion = None
            return
        y, pred = y.cpu().long(), scores.argmax(1)
        counts = torch.bincount(y * self.k + pred, minlength=self.k * self.k)
        if self.confusion is not None:
            self.confusion += counts.view(self.k, self.k)  # (true, predicted)
        self.total += torch.bincount(y, minlength=self.k)
        self.correct += torch.bincount(y[pred == y], minlength=self.k)

    def report(self, class_names: Sequence[str]) -> dict[str, Any]:
        """Per class: name, examples, correct and accuracy (their quotient as a Python
        float: 4 of 5 is 0.8, not float32's 0.800000011920929; None without examples); the
        confusion matrix as a list of rows (None for several labels per image)."""
        per_class = [
            {
                "class": k,
                "name": class_names[k],
                "examples": int(self.total[k]),
                "correct": int(self.correct[k]),
                "accuracy": int(self.correct[k]) / int(self.total[k]) if self.total[k] else None,
            }
            for k in range(self.k)
        ]
        confusion = None if self.confusion is None else self.confusion.tolist()
        return {"class_names": list(class_names), "per_class": per_class, "confusion": confusion}


def save_confusion_png(report: dict[str, Any], path: Path, title: str = "") -> None:
    """The confusion matrix, each row scaled to its class's examples, with the counts."""
    plt = pyplot()
    counts = torch.tensor(report["confusion"], dtype=torch.float64)  # (K, K)
    k, names = len(counts), report["class_names"]
    rates = counts / counts.sum(1, keepdim=True).clamp_min(1)
    fig, ax = plt.subplots(figsize=(2 + 0.5 * k, 1.5 + 0.5 * k), dpi=100)
    ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    if k <= 30:
        for t in range(k):
            for p in range(k):
                color = "white" if rates[t, p] > 0.5 else "black"
                ax.text(p, t, int(counts[t, p]), ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(range(k), names, rotation=90, fontsize=7)
    ax.set_yticks(range(k), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)


def write_class_report(report: dict[str, Any], stem: Path, title: str = "") -> list[Path]:
    """``stem``.json (per-class accuracy, confusion) and, if there is a confusion matrix,
    ``stem``.png. Returns the files written."""
    json_path = stem.with_suffix(".json")
    write_json(json_path, report)
    if report["confusion"] is None:
        return [json_path]
    save_confusion_png(report, stem.with_suffix(".png"), title)
    return [json_path, stem.with_suffix(".png")]


__all__ = ["ClassCounts", "save_confusion_png", "write_class_report"]
