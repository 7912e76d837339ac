"""Pictures of what a trained model does (matplotlib, headless): the paper's figures.

``save_figures(run_dir)`` draws every figure a run's model supports (see
:mod:`capsnet.models.contract`): ``training.png`` (curves) for every model;
``coupling.png`` (routing) for a capsule classifier; with a decoder also
``reconstructions.png`` (Fig. 3) or, for MultiMNIST, ``multimnist.png`` (Fig. 5), and
``perturbation.png`` (Fig. 4).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from capsnet import _deprecated
from capsnet.errors import ConfigError
from capsnet.files import check_new_file, check_writable_dir
from capsnet.models.contract import CapsuleClassifier, PoseDecoder, provides
from capsnet.models.figures import (
    device_of,
    perturbed_reconstructions,
    pyplot,
    save_coupling,
    save_multimnist,
    save_perturbations,
    save_png,
    save_reconstructions,
)
from capsnet.targets import OverlayTargets
from capsnet.tools import perturbations
from capsnet.training.run import Run
from capsnet.training.rundir import AVERAGED, FIGURES, RunDir

log = logging.getLogger(__name__)


def save_training_curves(run_dir: str | Path, path: str | Path) -> Path:
    """Loss and error per epoch from ``history.csv``; the test error of the selected
    epoch from ``metrics.json`` as a point, if the run has finished."""
    plt = pyplot()
    run = RunDir(run_dir)
    rows = run.history()

    def column(name: str) -> list[float]:
        return [float(r[name]) if r.get(name) else float("nan") for r in rows]

    epochs = column("epoch")
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax_loss.plot(epochs, column("train_loss"), "o-", label="train")
    ax_loss.plot(epochs, column("val_loss"), "s-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_err.plot(epochs, [100 * (1 - a) for a in column("train_accuracy")], "o-", label="train")
    ax_err.plot(epochs, [100 * (1 - a) for a in column("val_accuracy")], "s-", label="validation")
    m = run.metrics()
    if m is not None and "best_epoch" in m and "test_error" in m:
        ax_err.plot(
            [m["best_epoch"]], [100 * m["test_error"]], "r*", ms=12, label="test (selected epoch)"
        )
    ax_err.set(xlabel="epoch", ylabel="error (%)", title="error")
    for ax in (ax_loss, ax_err):
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))  # whole epochs only
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_png(fig, path)


def _spread(y: Tensor, n: int) -> Tensor:
    """Indices of ``n`` examples spread over the classes of labels ``y`` (N,), whatever
    their order (a folder's test set is sorted by class): the first example of each class,
    in class order, then the second of each, and so on."""
    order = torch.argsort(y, stable=True)
    starts = torch.searchsorted(y[order], y[order])  # where each one's class begins
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(y)) - starts  # its place among its class's examples
    return torch.argsort(rank * (int(y.max()) + 1) + y, stable=True)[:n]


@torch.no_grad()
def _with_failures(
    model: nn.Module, x: Tensor, y: Tensor, examples: int = 10, failures: int = 4
) -> Tensor:
    """Indices of ``examples`` examples spread over the classes (:func:`_spread`) and of
    up to ``failures`` misclassified others, the first ones."""
    device = device_of(model)
    preds = torch.cat([model(b.to(device)).scores.argmax(1).cpu() for b in x.split(100)])
    shown = _spread(y, examples)
    wrong = torch.nonzero(preds != y).flatten()
    wrong = wrong[~torch.isin(wrong, shown)][:failures]
    return torch.cat([shown, wrong])


def _figures_dir(run: Run, out_dir: str | Path | None, overridden: bool) -> tuple[Path, bool]:
    """Where the figures go, and whether that is the run's own directory; a pretrained
    model's directory is inside the package, so its default is ``NAME-figures``."""
    if out_dir is None:
        out_dir = f"{run.pretrained}-figures" if run.pretrained else run.path
    out = Path(out_dir)
    own = not run.pretrained and out.resolve() == run.path.resolve()
    if own and overridden:
        raise ConfigError(
            f"{out}: the run's own figures show the model as saved; with model options "
            "(overrides), pass another directory (--out)"
        )
    return out, own


@_deprecated.keyword_only(2)
def save_figures(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    data_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    examples: int = 300,
    overwrite: bool = False,
    overrides: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Every figure the run's model supports, into ``out_dir`` (default: the run directory;
    for a pretrained model, ``NAME-figures`` in the current directory). Figures in the
    run's own directory are replaced; elsewhere an existing file of a figure's name is an
    error (before any work) unless ``overwrite``.

    Uses the first ``examples`` images of the run's own test set (Fig. 3 and 4 show some of
    every class, and failures for Fig. 3 are searched among them), from ``data_dir``, else
    the run's data directory. Models that
    are not capsule classifiers get the training curves only, and those without a decoder
    no reconstruction figures; a run of averaged weights (:mod:`capsnet.tools.average`) gets
    no training curves. ``overrides`` replace fields of the saved model config
    (see :meth:`Run.load_model`); the figures of a model that is not as saved do not go
    into its run directory (ConfigError before any work).
    """
    run = run_dir if isinstance(run_dir, Run) else Run(run_dir)
    out, own = _figures_dir(run, out_dir, bool(overrides))
    model = run.load_model(device, overrides=overrides)
    run.require_run()
    check_writable_dir(out)
    if out.is_dir() and not own:  # a run's own figures are replaced
        for name in FIGURES:
            check_new_file(out / name, overwrite)
    paths = []
    if AVERAGED in run.config:  # written by capsnet.tools.average: never trained itself
        log.info("%s: a mean of other runs' weights, so no training curves", run.path)
    else:
        paths.append(save_training_curves(run.path, out / "training.png"))
    if not provides(model, CapsuleClassifier):
        log.info("%s: not a capsule classifier, so only the training curves", run.path)
        return paths
    x, y = run.test_set(data_dir, limit=examples)
    x = x.float() / 255
    names = run.class_names_for(model.config.num_classes)
    paths.append(save_coupling(model, x[0], out / "coupling.png", names))
    if not provides(model, PoseDecoder):
        log.info("%s: no decoder, so no reconstructions", run.path)
        return paths
    if isinstance(y, OverlayTargets):
        paths.append(save_multimnist(model, x[:10], y[:10], out / "multimnist.png"))
        paths.append(save_perturbations(model, x[:3], out / "perturbation.png", None, names))
        return paths
    idx = _with_failures(model, x, y)
    paths.append(save_reconstructions(model, x[idx], y[idx], out / "reconstructions.png", names))
    few = _spread(y, 3)
    paths.append(save_perturbations(model, x[few], out / "perturbation.png", y[few], names))
    return paths


__all__ = [
    "perturbed_reconstructions",
    "save_coupling",
    "save_figures",
    "save_multimnist",
    "save_perturbations",
    "save_reconstructions",
    "save_training_curves",
]


def _panels(n: int) -> tuple[Any, Any]:
    """A figure with ``n`` panels, up to 4 a row (those left over switched off)."""
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = pyplot().subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, axes.flat


def _strength_axes(ax: Any, name: str) -> None:
    """Title, labels and limits of a panel of accuracy against a perturbation's strength."""
    ax.set_title(name, fontsize=10)
    ax.set_xlabel(perturbations.PERTURBATIONS[name].unit, fontsize=8)
    ax.set_ylabel("test accuracy (%)", fontsize=8)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)


def save_robustness(curves: dict[str, dict[str, dict[str, list[float]]]], path: str | Path) -> Path:
    """Accuracy against strength, one panel per perturbation, one line per model.

    ``curves`` maps a model's label to the result of ``capsnet.tools.robustness.sweep``.
    """
    names = list(next(iter(curves.values())))
    fig, axes = _panels(len(names))
    for ax, name in zip(axes, names, strict=False):
        for label, sweep in curves.items():
            accuracy = [100 * a for a in sweep[name]["accuracy"]]
            ax.plot(sweep[name]["strength"], accuracy, "o-", ms=3, label=label)
        _strength_axes(ax, name)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return save_png(fig, path)


def save_generalisation(report: dict[str, Any], path: str | Path) -> Path:
    """The report of ``capsnet.tools.generalisation``: a panel of clean (and cross-task) test
    accuracy per contender, the mean over seeds with their sample standard deviation as
    error bars; then a panel per swept perturbation with each contender's mean accuracy
    against strength and a band of ± one standard deviation."""
    contenders = report["contenders"]
    names = list(report["sweep"]["units"]) if report["sweep"] else []
    fig, axes = _panels(1 + len(names))
    columns = ["clean_accuracy", *([report["cross_dataset"]] if report["cross_dataset"] else [])]
    width = 0.8 / len(columns)
    for k, column in enumerate(columns):
        stats = [c["summary"][column] for c in contenders.values()]
        x = np.arange(len(stats)) + k * width
        errors = [100 * (s["std"] or 0) for s in stats]
        text = "clean" if column == "clean_accuracy" else column
        grey = str(0.3 + 0.4 * k)  # not a contender's colour
        axes[0].bar(x, [100 * s["mean"] for s in stats], width, yerr=errors, label=text, color=grey)
    axes[0].set_xticks(np.arange(len(contenders)) + width * (len(columns) - 1) / 2)
    axes[0].set_xticklabels(list(contenders), fontsize=7, rotation=20)
    axes[0].set_ylabel("test accuracy (%)", fontsize=8)
    axes[0].set_ylim(0, 100)
    axes[0].legend(fontsize=7)
    for ax, name in zip(axes[1:], names, strict=False):
        for label, c in contenders.items():
            curve = c["summary"]["perturbations"][name]
            mean = np.array([100 * a["mean"] for a in curve["accuracy"]])
            std = np.array([100 * (a["std"] or 0) for a in curve["accuracy"]])
            (line,) = ax.plot(curve["strength"], mean, "o-", ms=3, label=label)
            ax.fill_between(
                curve["strength"], mean - std, mean + std, color=line.get_color(), alpha=0.2
            )
        _strength_axes(ax, name)
    if names:
        axes[1].legend(fontsize=7)
    fig.tight_layout()
    return save_png(fig, path)
