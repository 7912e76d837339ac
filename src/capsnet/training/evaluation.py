"""Evaluation: accuracy and loss of a model on a test set (``evaluate``, used by the
training loop for validation and test), and testing a finished run on its own test set
(as made in training) or another task's (``evaluate_run``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from capsnet import _deprecated
from capsnet.errors import ConfigError
from capsnet.files import check_writable_dir, write_json
from capsnet.runtime import autocast
from capsnet.targets import Targets, num_correct
from capsnet.training.environment import environment
from capsnet.training.metrics import ClassCounts, write_class_report
from capsnet.training.progress import NoProgress, ProgressFactory
from capsnet.training.run import Run

log = logging.getLogger(__name__)


def to_input(images: Tensor, device: torch.device) -> Tensor:
    """uint8 images → floats in [0, 1] on ``device``, as the models take them."""
    return images.to(device, non_blocking=True).float().div_(255.0)


@torch.no_grad()
@_deprecated.keyword_only(3)
def evaluate(
    model: nn.Module,
    images: Tensor,
    labels: Targets,
    *,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    progress: ProgressFactory = NoProgress,
    desc: str = "eval",
    precision: str = "fp32",
    counts: ClassCounts | None = None,
) -> dict[str, float]:
    """Accuracy and mean loss of ``model`` on uint8 images (N, C, H, W) with labels (N,)
    or OverlayTargets (see ``num_correct``). The loss is the training loss: the decoder,
    if any, reconstructs the true class(es), as in training. ``counts``, if given, also
    counts per class."""
    device = torch.device(device)
    model.eval()
    correct, loss_sum, n = 0, 0.0, len(labels)
    bar = progress(total=n, desc=desc)
    for idx in torch.arange(n).split(batch_size):
        x, y = to_input(images[idx], device), labels[idx].to(device)
        with autocast(device, precision):
            out = model(x, y)
            loss, _ = model.loss(out, x, y)
        correct += int(num_correct(out.scores, y))
        if counts is not None:
            counts.update(out.scores, y)
        loss_sum += float(loss) * len(idx)
        bar.update(len(idx))
    bar.close()
    return {"accuracy": correct / n, "error": 1 - correct / n, "loss": loss_sum / n}


@_deprecated.keyword_only(1)
def evaluate_run(
    run_dir: str | Path,
    *,
    dataset: str | None = None,
    options: dict[str, Any] | None = None,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 500,
    device: str | torch.device = "cpu",
    progress: ProgressFactory = NoProgress,
    out: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Test a run's selected model; write and return ``eval.json`` (``eval-TASK.json`` for
    another task), and per-class accuracy with the confusion matrix as ``classes.json``
    and ``classes.png`` (``classes-TASK.*``), into ``out`` (default: the run directory;
    for a pretrained model, nothing is written without ``out``). Its own task's test set
    is made with the run's options (``options`` override them) from ``data_dir``, else the
    run's data directory. ``overrides`` replace fields of the saved model config (see
    :meth:`Run.load_model`) and are recorded as ``overrides`` in the result; the results
    of a model that is not as saved do not go into its run directory (ConfigError before
    any work)."""
    run = Run(run_dir)
    if overrides and out is None and not run.pretrained:
        raise ConfigError(
            f"{run.path}: the run's own results are of the model as saved; with model "
            "options (overrides), pass another directory (--out)"
        )
    model = run.load_model(device, overrides=overrides)  # first: CheckpointError, ConfigError
    run.require_run()
    where = Path(out) if out is not None else None if run.pretrained else run.path
    if where is not None:
        check_writable_dir(where)  # before the test set is made
    own = dataset in (None, run.dataset)
    task = run.task(dataset, options)
    dataset = task.name
    x, y = task.load_test(limit=limit, data_dir=data_dir)
    config = model.config
    config.check_images(x, dataset)
    counts = ClassCounts(config.num_classes)
    r = evaluate(
        model,
        x,
        y,
        batch_size=batch_size,
        device=device,
        progress=progress,
        desc="test",
        counts=counts,
    )
    result = {
        "dataset": dataset,
        "test_accuracy": r["accuracy"],
        "test_error": r["error"],
        "test_loss": r["loss"],
        "test_examples": len(y),
        "checkpoint": run.pretrained or run.checkpoint.name,  # best, else last, or the file
        **({"overrides": dict(overrides)} if overrides else {}),  # the model is not as saved
        **environment(),
    }
    if where is not None:
        names = run.class_names_for(config.num_classes, None if own else task)
        _write_results(result, counts.report(names), where, "" if own else dataset, run.name)
    return result


def _write_results(
    result: dict[str, Any], report: dict[str, Any], where: Path, dataset: str, name: str
) -> None:
    """``eval.json`` and the per-class report into ``where``; for another task than the
    run's own (``dataset`` not empty) named ``eval-DATASET.json`` and ``classes-DATASET.*``."""
    where.mkdir(parents=True, exist_ok=True)
    suffix = "-" + file_safe(dataset) if dataset else ""
    write_json(where / f"eval{suffix}.json", result)
    title = f"{name} on {result['dataset']}: {result['test_accuracy']:.2%}"
    for path in write_class_report(report, where / f"classes{suffix}", title):
        log.info("wrote %s", path)


def file_safe(dataset: str) -> str:
    """A dataset name usable in a file name (``folder:/a/b`` → ``folder-a-b``)."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in dataset).strip("-")


__all__ = ["evaluate", "evaluate_run", "to_input"]
