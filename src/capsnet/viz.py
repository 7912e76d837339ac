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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from capsnet.checkpoint import atomic_write, check_new_file, check_writable_dir
from capsnet.models.contract import CapsuleClassifier, PoseDecoder, provides, require
from capsnet.targets import OverlayTargets
from capsnet.training.rundir import FIGURES, RunDir

log = logging.getLogger(__name__)

PERTURBATIONS = torch.arange(-5, 6) / 20  # Fig. 4: −0.25 … +0.25 in steps of 0.05, 0 exactly


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    atomic_write(path, lambda p: fig.savefig(p, dpi=100, format="png"))
    _pyplot().close(fig)
    return path


def _colour(c: int) -> bool:
    """Whether C channels are shown as colour (RGB, RGBA); others as greyscale, side by side
    (e.g. smallNORB's stereo pair)."""
    return c in (3, 4)


def _cmap(c: int) -> str | None:
    return None if _colour(c) else "gray"


def _image(x: Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] → (H, W, C) array for imshow if colour, else (H, C·W)."""
    c, h, w = x.shape
    return (x.permute(1, 2, 0) if _colour(c) else x.permute(1, 0, 2).reshape(h, c * w)).numpy()


def _montage(images: Tensor) -> np.ndarray:
    """Tile (R, S, C, H, W) into one (R·H, S·W, C) image if colour, else (R·H, C·S·W)."""
    r, s, c, h, w = images.shape
    grid = images.permute(0, 3, 1, 4, 2).reshape(r * h, s * w, c)  # rows of tiles
    if not _colour(c):
        grid = grid.permute(0, 2, 1).reshape(r * h, c * s * w)  # channels side by side
    return grid.float().cpu().numpy()


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _names(class_names: Sequence[str] | None) -> Any:
    return (lambda k: class_names[k]) if class_names else str


@torch.no_grad()
def save_reconstructions(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    path: str | Path,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Inputs (top row) above their reconstructions from the longest capsule (bottom row).

    ``images``: (N, C, H, W) floats in [0, 1]; titles give the true and predicted class,
    failures in red (cf. the paper's Fig. 3).
    """
    plt = _pyplot()
    require(model, "save_reconstructions", PoseDecoder)
    model.eval()
    out = model(images.to(_device(model)))
    preds = out.scores.argmax(1).cpu()
    recon = out.reconstructions.float().cpu()
    n = len(images)
    name = _names(class_names)
    fig, axes = plt.subplots(2, n, figsize=(1.3 * n, 3), squeeze=False)
    cmap = _cmap(images.shape[1])
    for i in range(n):
        ok = int(preds[i]) == int(labels[i])
        axes[0, i].imshow(_image(images[i].cpu()), cmap=cmap, vmin=0, vmax=1)
        axes[0, i].set_title(f"true {name(int(labels[i]))}", fontsize=7)
        axes[1, i].imshow(_image(recon[i]), cmap=cmap, vmin=0, vmax=1)
        axes[1, i].set_title(f"pred {name(int(preds[i]))}", fontsize=7, color="k" if ok else "r")
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


@torch.no_grad()
def perturbed_reconstructions(
    model: nn.Module, images: Tensor, deltas: Tensor = PERTURBATIONS
) -> Tensor:
    """Fig. 4: decode the winning capsule with each dimension tweaked by each delta.

    ``images`` (N, C, H, W) in [0, 1] → (N, D, T, C, H, W) for D capsule dimensions and
    T deltas, all decoded in one forward.
    """
    require(model, "perturbed_reconstructions", PoseDecoder)
    model.eval()
    out = model(images.to(_device(model)))
    n, k, d = out.poses.shape
    onehot = F.one_hot(out.scores.argmax(1), k).to(out.poses.dtype)  # (N, K)
    winner = (out.poses * onehot.unsqueeze(-1)).sum(1)  # (N, D)
    tweak = torch.eye(d).unsqueeze(1) * deltas.view(1, -1, 1)  # (D, T, D): dim i += delta t
    tweaked = winner.view(n, 1, 1, d) + tweak.to(winner)  # (N, D, T, D)
    poses = onehot.view(n, 1, 1, k, 1) * tweaked.unsqueeze(3)  # (N, D, T, K, D)
    masks = onehot.view(n, 1, 1, k).expand(n, d, len(deltas), k)  # (N, D, T, K)
    recon = model.decode(poses.flatten(0, 2), masks.flatten(0, 2))  # (N·D·T, C, H, W)
    return recon.view(n, d, len(deltas), *recon.shape[1:]).cpu()


@torch.no_grad()
def save_perturbations(
    model: nn.Module,
    images: Tensor,
    path: str | Path,
    labels: Tensor | None = None,
    class_names: Sequence[str] | None = None,
) -> Path:
    """One panel per input: rows are the capsule's dimensions, columns the tweaks (the
    strength added to that dimension). Each panel is titled with the winning capsule's class
    and, given ``labels``, the true class (in red if they differ)."""
    plt = _pyplot()
    recon = perturbed_reconstructions(model, images)  # (N, D, T, C, H, W)
    preds = model(images.to(_device(model))).scores.argmax(1).cpu()
    name = _names(class_names)
    n, d, t = recon.shape[:3]
    fig, axes = plt.subplots(1, n, figsize=(0.35 * t * n + 1, 0.35 * d + 1.3), squeeze=False)
    h, w = recon.shape[-2:]
    for i, ax in enumerate(axes[0]):
        ax.imshow(_montage(recon[i]), cmap="gray", vmin=0, vmax=1)
        ax.set_yticks([(j + 0.5) * h for j in range(d)], [str(j) for j in range(d)], fontsize=6)
        ticks = [f"{v:+.2f}" for v in PERTURBATIONS]
        ax.set_xticks([(j + 0.5) * w for j in range(t)], ticks, fontsize=5)
        ax.tick_params(axis="x", rotation=90)
        ax.set_ylabel("capsule dimension", fontsize=7)
        ax.set_xlabel("added to the dimension", fontsize=7)
        title = f"capsule {name(int(preds[i]))}"
        wrong = labels is not None and int(labels[i]) != int(preds[i])
        if labels is not None:
            title = f"true {name(int(labels[i]))}, {title}"
        ax.set_title(title, fontsize=8, color="r" if wrong else "k")
    fig.suptitle("winning capsule, one dimension tweaked by −0.25 … +0.25", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


@torch.no_grad()
def save_coupling(
    model: nn.Module, image: Tensor, path: str | Path, class_names: Sequence[str] | None = None
) -> Path:
    """Routing weights (e.g. coupling coefficients c_ij) of every child capsule i of the
    class capsules to the predicted class j (a CapsuleClassifier's ``routing_weights``).

    ``image`` (C, H, W) in [0, 1]. Shown next to the input: their mean over the capsule
    types on the primary grid, and one map per type (white where a type is absent).
    """
    plt = _pyplot()
    require(model, "save_coupling", CapsuleClassifier)
    model.eval()
    out = model(image.unsqueeze(0).to(_device(model)))
    k = out.scores.shape[1]
    pred = int(out.scores.argmax(1))
    types, gh, gw = model.routing_grid
    c = out.routing_weights.view(types, gh, gw, k)[..., pred].float().cpu()  # (types, H', W')
    cols = min(8, types)
    rows = math.ceil(types / cols)
    tiles = torch.full((rows * cols, 1, gh, gw), float("nan"))
    tiles[:types, 0] = c
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6), width_ratios=(1, 1, 2.2))
    cmap = _cmap(image.shape[0])
    axes[0].imshow(_image(image.cpu()), cmap=cmap, vmin=0, vmax=1)
    axes[0].set_title(f"input, predicted {_names(class_names)(pred)}", fontsize=8)
    vmax = float(c.max())
    axes[1].imshow(c.mean(0).numpy(), cmap="viridis", vmin=0, vmax=vmax)
    axes[1].set_title(f"mean over the {types} capsule types", fontsize=8)
    im = axes[2].imshow(
        _montage(tiles.view(rows, cols, 1, gh, gw)), cmap="viridis", vmin=0, vmax=vmax
    )
    axes[2].set_title(f"each type ({gh}×{gw} grid); uniform coupling = 1/{k}", fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.colorbar(im, ax=axes[2], fraction=0.03, label=f"c_ij to class {pred}")
    fig.tight_layout()
    return _save(fig, path)


@torch.no_grad()
def save_multimnist(
    model: nn.Module, images: Tensor, targets: OverlayTargets, path: str | Path
) -> Path:
    """Fig. 5: overlaid digits (top) and the two longest capsules decoded one at a time
    (bottom, the longer in red, the other in green); wrong pairs titled in red."""
    plt = _pyplot()
    require(model, "save_multimnist", PoseDecoder)
    model.eval()
    out = model(images.to(_device(model)))
    top = out.scores.topk(2, dim=1).indices  # (N, 2)
    recon = model.decode_classes(out.poses, top)[:, :, 0].float().cpu()  # (N, 2, H, W)
    rgb = torch.stack([recon[:, 0], recon[:, 1], torch.zeros_like(recon[:, 0])], -1)
    top, truth = top.cpu(), targets.labels.cpu()
    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(1.3 * n, 3), squeeze=False)
    for i in range(n):
        ok = set(top[i].tolist()) == set(truth[i].tolist())
        axes[0, i].imshow(images[i, 0].cpu().numpy(), cmap="gray", vmin=0, vmax=1)
        axes[0, i].set_title("true {},{}".format(*truth[i].tolist()), fontsize=7)
        axes[1, i].imshow(rgb[i].clamp(0, 1).numpy())
        axes[1, i].set_title(
            "pred {},{}".format(*top[i].tolist()), fontsize=7, color="k" if ok else "r"
        )
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def save_training_curves(run_dir: str | Path, path: str | Path) -> Path:
    """Loss and error per epoch from ``history.csv``; the test error of the selected
    epoch from ``metrics.json`` as a point, if the run has finished."""
    plt = _pyplot()
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
    return _save(fig, path)


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
    device = _device(model)
    preds = torch.cat([model(b.to(device)).scores.argmax(1).cpu() for b in x.split(100)])
    shown = _spread(y, examples)
    wrong = torch.nonzero(preds != y).flatten()
    wrong = wrong[~torch.isin(wrong, shown)][:failures]
    return torch.cat([shown, wrong])


def save_figures(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    examples: int = 300,
    overwrite: bool = False,
) -> list[Path]:
    """Every figure the run's model supports, into ``out_dir`` (default: the run directory;
    for a pretrained model, ``NAME-figures`` in the current directory). Figures in the
    run's own directory are replaced; elsewhere an existing file of a figure's name is an
    error (before any work) unless ``overwrite``.

    Uses the first ``examples`` images of the run's own test set (Fig. 3 and 4 show some of
    every class, and failures for Fig. 3 are searched among them), from ``data_dir``, else
    the run's data directory. Models that
    are not capsule classifiers get the training curves only, and those without a decoder
    no reconstruction figures.
    """
    run = RunDir(run_dir)
    if out_dir is None:  # a pretrained model's directory is inside the package
        out_dir = f"{run.pretrained}-figures" if run.pretrained else run.path
    out = Path(out_dir)
    model = run.load_model(device)
    run.require_run()
    check_writable_dir(out)
    own = not run.pretrained and out.resolve() == run.path.resolve()
    if out.is_dir() and not own:  # a run's own figures are replaced
        for name in FIGURES:
            check_new_file(out / name, overwrite)
    paths = [save_training_curves(run.path, out / "training.png")]
    if not provides(model, CapsuleClassifier):
        log.info("%s: not a capsule classifier, so only the training curves", run.path)
        return paths
    x, y = run.test_set(data_dir, limit=examples)
    x = x.float() / 255
    names = run.class_names(model.config.num_classes)
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
    fig, axes = _pyplot().subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, axes.flat


def _strength_axes(ax: Any, name: str) -> None:
    """Title, labels and limits of a panel of accuracy against a perturbation's strength."""
    from capsnet.robustness import PERTURBATIONS

    ax.set_title(name, fontsize=10)
    ax.set_xlabel(PERTURBATIONS[name].unit, fontsize=8)
    ax.set_ylabel("test accuracy (%)", fontsize=8)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)


def save_robustness(curves: dict[str, dict[str, dict[str, list[float]]]], path: str | Path) -> Path:
    """Accuracy against strength, one panel per perturbation, one line per model.

    ``curves`` maps a model's label to the result of ``capsnet.robustness.sweep``.
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
    return _save(fig, path)


def save_generalisation(report: dict[str, Any], path: str | Path) -> Path:
    """The report of ``capsnet.generalisation``: a panel of clean (and cross-task) test
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
    return _save(fig, path)
