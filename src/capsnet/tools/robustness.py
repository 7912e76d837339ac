"""Robustness sweeps: accuracy of a classifier as test images are changed step by step by
the perturbations of :mod:`capsnet.tools.perturbations` (seeded, so every sweep is
reproducible and every model sees identical images).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from capsnet import _deprecated
from capsnet.errors import ConfigError
from capsnet.files import write_json
from capsnet.targets import OverlayTargets, Targets, num_correct
from capsnet.tools.perturbations import PERTURBATIONS, check_perturbations
from capsnet.tools.predict import predict
from capsnet.tools.viz import save_robustness
from capsnet.training.run import Run


@_deprecated.keyword_only(3)
def sweep(
    scores: Callable[[Tensor], Tensor],
    images: Tensor,
    labels: Targets,
    *,
    names: Sequence[str] = tuple(PERTURBATIONS),
    seed: int = 0,
    on_step: Callable[[str, float, float], None] | None = None,
    strengths: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, dict[str, list[float]]]:
    """Accuracy of ``scores`` (images → (N, K) class scores) under every perturbation.

    ``images`` float (N, C, H, W) in [0, 1], ``labels`` (N,), or OverlayTargets (MultiMNIST:
    an image counts as right when its L highest scores are its L labels, ``num_correct``).
    The whole image is perturbed, overlaid digits together. A perturbation visits the
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
            acc = int(num_correct(scores(x), labels)) / len(labels)
            accuracies.append(acc)
            if on_step is not None:
                on_step(name, s, acc)
        out[name] = {"strength": [float(s) for s in visit], "accuracy": accuracies}
    return out


@_deprecated.keyword_only(4)
def robustness_report(
    models: Mapping[str, nn.Module],
    images: Tensor,
    labels: Targets,
    out_dir: str | Path,
    *,
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
    check_perturbations(names)
    out = Path(out_dir)
    curves = {
        label: sweep(
            partial(predict, model, batch_size=batch_size, device=device),
            images,
            labels,
            names=names,
            seed=seed,
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


@_deprecated.keyword_only(2)
def compare_runs(
    runs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    limit: int | None = None,
    names: Sequence[str] = tuple(PERTURBATIONS),
    seed: int = 0,
    data_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    on_step: Callable[[str, str, float, float], None] | None = None,
    strengths: Mapping[str, Sequence[float]] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """:func:`robustness_report` for runs or pretrained names, on the first ``limit`` test
    images of the first run's task (from ``data_dir``, else where it was trained). Every
    model must have been trained on that task (where its run says) and take its images and
    classes; the report also records each run's clean test accuracy from its
    ``metrics.json`` (the model as saved). ``overrides`` replace fields of every model's
    saved config (see :meth:`Run.load_model`) and are recorded as ``overrides``."""
    check_perturbations(names)
    dirs = [Run(r) for r in runs]
    models = {d.name: d.load_model(device, overrides=overrides) for d in dirs}
    if len(models) < len(dirs):
        raise ConfigError("the same run is given twice")
    task = dirs[0].dataset
    for d in dirs[1:]:  # another task's model would be scored on labels it never learnt
        if None not in (task, d.dataset) and d.dataset != task:
            raise ConfigError(f"{d.name} was trained on {d.dataset}, not {task} as {dirs[0].name}")
    images, labels = dirs[0].test_set(data_dir, limit=limit)
    classes = labels.labels if isinstance(labels, OverlayTargets) else labels  # (N,) or (N, L)
    for label, model in models.items():
        cfg = model.config
        cfg.check_images(images, f"{label}: {dirs[0].dataset}")
        if cfg.num_classes <= int(classes.max()):
            raise ConfigError(f"{label} has {cfg.num_classes} classes, fewer than the task's")
    extra = {
        "dataset": dirs[0].dataset,
        "clean_test_accuracy": {d.name: (d.metrics() or {}).get("test_accuracy") for d in dirs},
        **({"overrides": dict(overrides)} if overrides else {}),  # the models are not as saved
    }
    x = images.float().div(255)  # (N, C, H, W); perturbed on the CPU, batches go to device
    return robustness_report(
        models,
        x,
        labels,
        out_dir,
        names=names,
        seed=seed,
        on_step=on_step,
        extra=extra,
        device=device,
        strengths=strengths,
    )
