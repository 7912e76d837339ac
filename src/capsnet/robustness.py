"""Robustness sweeps: accuracy of a classifier as test images are changed step by step.

The paper's central claim is that capsules generalise to poses not seen in training. Each
perturbation below maps float images (N, C, H, W) in [0, 1] and one strength to images of
the same shape, is the identity at strength 0, and draws anything random (directions, signs,
displacement fields) from the ``torch.Generator`` it is given, so a sweep is reproducible.
All are batched tensor ops (no loop over images).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from capsnet.data.affnist import affine_matrices, warp
from capsnet.data.transforms import shift_images
from capsnet.errors import ConfigError

Transform = Callable[[Tensor, float, torch.Generator], Tensor]


def _signs(n: int, generator: torch.Generator) -> Tensor:
    """(n,) float64 of ±1, each sign with probability ½."""
    return torch.randint(0, 2, (n,), generator=generator).double() * 2 - 1


def _linear(x: Tensor, rotation: Tensor, shear: Tensor, scale: Tensor) -> Tensor:
    """Warp (N, C, H, W) about the centre by affine_matrices(rotation, shear, scale, scale)."""
    return warp(x, affine_matrices(rotation, shear, scale, scale).to(x.dtype)).clamp_(0, 1)


def rotate(x: Tensor, degrees: float, generator: torch.Generator) -> Tensor:
    """Rotate each image by ``degrees`` about its centre, clockwise or anticlockwise at random."""
    if degrees == 0:
        return x
    n = len(x)
    angle = _signs(n, generator) * math.radians(degrees)  # (N,)
    return _linear(
        x, angle, torch.zeros(n, dtype=torch.float64), torch.ones(n, dtype=torch.float64)
    )


def scale(x: Tensor, octaves: float, generator: torch.Generator) -> Tensor:
    """Scale every image about its centre by ``2**octaves`` (< 0 shrinks, > 0 enlarges)."""
    if octaves == 0:
        return x
    n = len(x)
    zero = torch.zeros(n, dtype=torch.float64)
    return _linear(x, zero, zero, torch.full((n,), 2.0**octaves, dtype=torch.float64))


def shear(x: Tensor, factor: float, generator: torch.Generator) -> Tensor:
    """Shear each image along x by ``factor`` (x' = x + factor·y about the centre), sign random."""
    if factor == 0:
        return x
    n = len(x)
    zero, one = torch.zeros(n, dtype=torch.float64), torch.ones(n, dtype=torch.float64)
    return _linear(x, zero, _signs(n, generator) * factor, one)


def translate(x: Tensor, pixels: float, generator: torch.Generator) -> Tensor:
    """Move each image by ``pixels`` in a random direction (rounded to whole pixels, zero fill)."""
    if pixels == 0:
        return x
    theta = torch.rand(len(x), generator=generator, dtype=torch.float64) * 2 * math.pi  # (N,)
    dy, dx = (pixels * torch.sin(theta)).round().long(), (pixels * torch.cos(theta)).round().long()
    return shift_images(x, dy, dx)


def stroke(x: Tensor, steps: float, generator: torch.Generator) -> Tensor:
    """Bolder (``steps`` > 0, grey dilation) or thinner (< 0, grey erosion) strokes.

    Each whole step is one 3×3 max (dilation) or min (erosion) filter; ``steps`` is rounded.
    """
    k = round(steps)
    if k == 0:
        return x
    sign = 1.0 if k > 0 else -1.0
    y = x * sign
    for _ in range(abs(k)):  # a few steps of one batched filter, not a loop over images
        y = F.max_pool2d(y, 3, stride=1, padding=1)
    return y * sign


def _gaussian_kernel(sigma: float, dtype: torch.dtype) -> Tensor:
    """Normalised 1-D Gaussian of standard deviation ``sigma``, radius ceil(3σ): (2r+1,)."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).to(dtype)


def _smooth(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian filter of (N, C, H, W) with zero padding (same shape)."""
    k = _gaussian_kernel(sigma, x.dtype)
    n, c, h, w = x.shape
    y = x.reshape(n * c, 1, h, w)
    y = F.conv2d(y, k.view(1, 1, -1, 1), padding=(len(k) // 2, 0))
    y = F.conv2d(y, k.view(1, 1, 1, -1), padding=(0, len(k) // 2))
    return y.view(n, c, h, w)


def blur(x: Tensor, sigma: float, generator: torch.Generator) -> Tensor:
    """Gaussian blur of standard deviation ``sigma`` pixels."""
    return x if sigma == 0 else _smooth(x, sigma)


def resolution(x: Tensor, octaves: float, generator: torch.Generator) -> Tensor:
    """Loss of resolution: area-downsample by ``2**octaves``, then bilinear back to full size."""
    if octaves == 0:
        return x
    h, w = x.shape[-2:]
    small = (max(1, round(h / 2**octaves)), max(1, round(w / 2**octaves)))
    low = F.interpolate(x, size=small, mode="area")
    return F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False).clamp_(0, 1)


def elastic(x: Tensor, alpha: float, generator: torch.Generator, sigma: float = 4.0) -> Tensor:
    """Elastic distortion (Simard, Steinkraus & Platt 2003): a random displacement field,
    uniform in [-1, 1] per pixel, smoothed by a Gaussian of ``sigma`` pixels and scaled by
    ``alpha`` pixels; bilinear resampling. Simard et al. used α = 34, σ = 4 on MNIST."""
    if alpha == 0:
        return x
    n, _, h, w = x.shape
    field = torch.rand(n, 2, h, w, generator=generator, dtype=torch.float64) * 2 - 1
    field = _smooth(field.to(x.dtype), sigma) * alpha  # (N, 2, H, W) pixels, (dx, dy)
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=x.dtype), torch.arange(w, dtype=x.dtype), indexing="ij"
    )
    gx = (xs + field[:, 0]) * 2 / w - 1 + 1 / w  # (N, H, W), normalised, pixel centres
    gy = (ys + field[:, 1]) * 2 / h - 1 + 1 / h
    grid = torch.stack([gx, gy], -1)  # (N, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@dataclass(frozen=True)
class Perturbation:
    """A transform and the strengths a sweep visits (0, the identity, among them)."""

    transform: Transform
    strengths: tuple[float, ...]
    unit: str


PERTURBATIONS: dict[str, Perturbation] = {
    "rotation": Perturbation(rotate, (0, 10, 20, 30, 45, 60, 90), "degrees (either direction)"),
    "scale": Perturbation(scale, (-1, -0.75, -0.5, -0.25, 0, 0.25, 0.5), "octaves (2^s)"),
    "shear": Perturbation(shear, (0, 0.2, 0.4, 0.6, 0.8, 1.0), "x-shear factor"),
    "translation": Perturbation(translate, (0, 2, 4, 6, 8), "pixels (random direction)"),
    "stroke": Perturbation(stroke, (-2, -1, 0, 1, 2), "3×3 erosions (<0) / dilations (>0)"),
    "blur": Perturbation(blur, (0, 0.5, 1, 1.5, 2, 3), "Gaussian σ, pixels"),
    "resolution": Perturbation(resolution, (0, 0.5, 1, 1.5, 2), "octaves lost (2^s)"),
    "elastic": Perturbation(elastic, (0, 8, 16, 24, 34, 48), "α, pixels (σ = 4)"),
}


def check_perturbations(names: Sequence[str]) -> None:
    unknown = sorted(set(names) - set(PERTURBATIONS))
    if unknown:
        raise ConfigError(
            f"unknown perturbation {', '.join(unknown)}; choose from: {', '.join(PERTURBATIONS)}"
        )


def sweep(
    scores: Callable[[Tensor], Tensor],
    images: Tensor,
    labels: Tensor,
    names: Sequence[str] = tuple(PERTURBATIONS),
    seed: int = 0,
    on_step: Callable[[str, float, float], None] | None = None,
    strengths: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, dict[str, list[float]]]:
    """Accuracy of ``scores`` (images → (N, K) class scores) under every perturbation.

    ``images`` float (N, C, H, W) in [0, 1], ``labels`` (N,). A perturbation visits the
    strengths ``strengths`` gives it, else its own (``PERTURBATIONS``). Every (perturbation,
    strength) is drawn from a generator seeded with ``seed``, so each point of a curve is
    reproducible on its own. Returns ``{name: {"strength": [...], "accuracy": [...]}}``
    (accuracy in [0, 1]); ``on_step(name, strength, accuracy)`` is called after each point.
    """
    check_perturbations(names)
    out: dict[str, dict[str, list[float]]] = {}
    for name in names:
        p = PERTURBATIONS[name]
        visit = (strengths or {}).get(name, p.strengths)
        accuracies = []
        for s in visit:
            x = p.transform(images, float(s), torch.Generator().manual_seed(seed))
            acc = (scores(x).argmax(1) == labels).double().mean().item()
            accuracies.append(acc)
            if on_step is not None:
                on_step(name, s, acc)
        out[name] = {"strength": [float(s) for s in visit], "accuracy": accuracies}
    return out


def robustness_report(
    models: Mapping[str, nn.Module],
    images: Tensor,
    labels: Tensor,
    out_dir: str | Path,
    names: Sequence[str] = tuple(PERTURBATIONS),
    seed: int = 0,
    batch_size: int = 500,
    on_step: Callable[[str, str, float, float], None] | None = None,
    extra: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
    strengths: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, Any]:
    """Sweep every model (label → classifier) over the same perturbed images (at
    ``strengths``, as :func:`sweep` takes them); write
    ``robustness.json`` (with ``extra`` added) and ``robustness.png`` into ``out_dir``;
    return the JSON's content.

    ``images`` float (N, C, H, W) in [0, 1] on the CPU; the models run on ``device``.
    All models see identical perturbed images
    (the same seed), so their curves compare point by point. ``on_step(label, name,
    strength, accuracy)`` is called after each point.
    """
    from capsnet.checkpoint import write_json
    from capsnet.predict import predict
    from capsnet.viz import save_robustness

    check_perturbations(names)
    out = Path(out_dir)
    curves = {
        label: sweep(
            partial(predict, model, batch_size=batch_size, device=device),
            images,
            labels,
            names,
            seed,
            on_step=None if on_step is None else partial(on_step, label),
            strengths=strengths,
        )
        for label, model in models.items()
    }
    report = {
        **(extra or {}),
        "test_examples": len(labels),
        "seed": seed,
        "units": {name: PERTURBATIONS[name].unit for name in names},
        "models": curves,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "robustness.json", report)
    save_robustness(curves, out / "robustness.png")
    return report


def compare_runs(
    runs: Sequence[str | Path],
    out_dir: str | Path,
    limit: int | None = None,
    names: Sequence[str] = tuple(PERTURBATIONS),
    seed: int = 0,
    data_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    on_step: Callable[[str, str, float, float], None] | None = None,
    strengths: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, Any]:
    """:func:`robustness_report` for runs or pretrained names, on the first ``limit`` test
    images of the first run's task (from ``data_dir``, else where it was trained). Every
    model must have been trained on that task (where its run says) and take its images and
    classes; the report also records each run's
    clean test accuracy from its ``metrics.json``."""
    from capsnet.training.rundir import RunDir

    check_perturbations(names)
    dirs = [RunDir(r) for r in runs]
    models = {d.name: d.load_model(device) for d in dirs}
    if len(models) < len(dirs):
        raise ConfigError("the same run is given twice")
    task = dirs[0].dataset
    for d in dirs[1:]:  # another task's model would be scored on labels it never learnt
        if None not in (task, d.dataset) and d.dataset != task:
            raise ConfigError(f"{d.name} was trained on {d.dataset}, not {task} as {dirs[0].name}")
    images, labels = dirs[0].test_set(data_dir, limit=limit)
    if not isinstance(labels, Tensor):
        raise ConfigError(f"{dirs[0].name}: robustness needs one label per image")
    for label, model in models.items():
        cfg = model.config
        if (cfg.in_channels, *cfg.input_size) != tuple(images.shape[1:]):
            shape = (cfg.in_channels, *cfg.input_size)
            raise ConfigError(f"{label} takes images of {shape}, not {dirs[0].dataset}'s")
        if cfg.num_classes <= int(labels.max()):
            raise ConfigError(f"{label} has {cfg.num_classes} classes, fewer than the task's")
    extra = {
        "dataset": dirs[0].dataset,
        "clean_test_accuracy": {d.name: (d.metrics() or {}).get("test_accuracy") for d in dirs},
    }
    x = images.float().div(255)  # (N, C, H, W); perturbed on the CPU, batches go to device
    return robustness_report(
        models, x, labels, out_dir, names, seed, on_step=on_step, extra=extra, device=device,
        strengths=strengths,
    )  # fmt: skip
