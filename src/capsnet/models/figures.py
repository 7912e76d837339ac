"""Pictures of what a model does on images (matplotlib, headless): the paper's Fig. 3
(reconstructions), Fig. 4 (one capsule dimension tweaked), Fig. 5 (MultiMNIST) and the
routing weights. A run's figures (:func:`capsnet.tools.viz.save_figures`) and TensorBoard
(:mod:`capsnet.training.tensorboard`) draw them.
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

from capsnet import _deprecated
from capsnet.files import atomic_write
from capsnet.models.contract import CapsuleClassifier, PoseDecoder, require
from capsnet.targets import OverlayTargets

log = logging.getLogger(__name__)

POSE_DELTAS = torch.arange(-5, 6) / 20  # Fig. 4: −0.25 … +0.25 in steps of 0.05, 0 exactly


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the headless Agg backend, loaded when the first figure is
    drawn: importing capsnet (the trainer imports this module) neither pays for matplotlib
    nor changes the caller's backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` as a PNG (atomically) and close it."""
    path = Path(path)
    atomic_write(path, lambda p: fig.savefig(p, dpi=100, format="png"))
    pyplot().close(fig)
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


def device_of(model: nn.Module) -> torch.device:
    """The device of the model's parameters."""
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
    plt = pyplot()
    require(model, "save_reconstructions", PoseDecoder)
    model.eval()
    out = model(images.to(device_of(model)))
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
    return save_png(fig, path)


@torch.no_grad()
def perturbed_reconstructions(
    model: nn.Module, images: Tensor, deltas: Tensor = POSE_DELTAS
) -> Tensor:
    """Fig. 4: decode the winning capsule with each dimension tweaked by each delta.

    ``images`` (N, C, H, W) in [0, 1] → (N, D, T, C, H, W) for D capsule dimensions and
    T deltas, all decoded in one forward.
    """
    require(model, "perturbed_reconstructions", PoseDecoder)
    model.eval()
    out = model(images.to(device_of(model)))
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
    plt = pyplot()
    recon = perturbed_reconstructions(model, images)  # (N, D, T, C, H, W)
    preds = model(images.to(device_of(model))).scores.argmax(1).cpu()
    name = _names(class_names)
    n, d, t = recon.shape[:3]
    fig, axes = plt.subplots(1, n, figsize=(0.35 * t * n + 1, 0.35 * d + 1.3), squeeze=False)
    h, w = recon.shape[-2:]
    for i, ax in enumerate(axes[0]):
        ax.imshow(_montage(recon[i]), cmap="gray", vmin=0, vmax=1)
        ax.set_yticks([(j + 0.5) * h for j in range(d)], [str(j) for j in range(d)], fontsize=6)
        ticks = [f"{v:+.2f}" for v in POSE_DELTAS]
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
    return save_png(fig, path)


@torch.no_grad()
def save_coupling(
    model: nn.Module, image: Tensor, path: str | Path, class_names: Sequence[str] | None = None
) -> Path:
    """Routing weights (e.g. coupling coefficients c_ij) of every child capsule i of the
    class capsules to the predicted class j (a CapsuleClassifier's ``coupling``).

    ``image`` (C, H, W) in [0, 1]. Shown next to the input: their mean over the capsule
    types on the primary grid, and one map per type (white where a type is absent).
    """
    plt = pyplot()
    require(model, "save_coupling", CapsuleClassifier)
    model.eval()
    out = model(image.unsqueeze(0).to(device_of(model)))
    k = out.scores.shape[1]
    pred = int(out.scores.argmax(1))
    types, gh, gw = model.coupling_grid
    c = out.coupling.view(types, gh, gw, k)[..., pred].float().cpu()  # (types, H', W')
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
    return save_png(fig, path)


@torch.no_grad()
def save_multimnist(
    model: nn.Module, images: Tensor, targets: OverlayTargets, path: str | Path
) -> Path:
    """Fig. 5: overlaid digits (top) and the two longest capsules decoded one at a time
    (bottom, the longer in red, the other in green); wrong pairs titled in red."""
    plt = pyplot()
    require(model, "save_multimnist", PoseDecoder)
    model.eval()
    out = model(images.to(device_of(model)))
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
    return save_png(fig, path)


__all__ = [
    "POSE_DELTAS",
    "perturbed_reconstructions",
    "pyplot",
    "save_coupling",
    "save_multimnist",
    "save_perturbations",
    "save_png",
    "save_reconstructions",
]
__getattr__ = _deprecated.module_getattr(
    __name__, {"PERTURBATIONS": ("capsnet.models.figures.POSE_DELTAS", lambda: POSE_DELTAS)}
)
