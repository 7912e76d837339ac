"""A fair generalisation benchmark: several models ("contenders") trained at one budget,
then compared side by side.

Every run shares one :class:`~capsnet.training.TrainConfig` (dataset, epochs, batch size,
learning-rate schedule, augmentation, data limits, precision) and the same seeds; only the
model and its options differ, so every contender gets the same steps on the same data. Each
run is an ordinary run directory ``<out>/generalisation/<label>/seed<S>/`` trained by
:func:`capsnet.training.train`; finished runs are reused and interrupted ones resumed
(:func:`capsnet.tools.experiments.train_or_reuse`). Reported per run and as mean ± sample
standard deviation over the seeds: the training wall-clock seconds, the clean test accuracy
(``metrics.json``), the accuracy on ``affnist-generated`` for runs trained on
``expanded-mnist`` (:func:`capsnet.training.evaluation.evaluate_run`), and the robustness
sweep (:func:`capsnet.tools.robustness.compare_runs`): every run sees the same perturbed test
images (one sweep seed); per perturbation the accuracy at each strength and the area under
the accuracy curve (:func:`auc`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from capsnet.errors import ConfigError
from capsnet.files import atomic_write, check_writable_dir, write_json
from capsnet.runtime import resolve_device
from capsnet.tools.experiments import mean_std, train_or_reuse
from capsnet.tools.perturbations import PERTURBATIONS, check_perturbations
from capsnet.tools.robustness import compare_runs
from capsnet.tools.viz import save_generalisation
from capsnet.training import NoProgress, ProgressFactory, TrainConfig
from capsnet.training.evaluation import evaluate_run

log = logging.getLogger(__name__)

CROSS_TASKS = {"expanded-mnist": "affnist-generated"}  # trained on → also tested on
LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a contender's directory and row


@dataclass(frozen=True)
class Contender:
    """A model of the benchmark: ``label`` names its runs' directory and its row;
    ``overrides`` are fields of the model's config."""

    label: str
    model: str
    overrides: dict[str, Any] = field(default_factory=dict)


DEFAULT_CONTENDERS = tuple(
    Contender(name, name) for name in ("capsnet-mnist", "aff-capsnet", "baseline-cnn")
)


@dataclass(frozen=True)
class GeneralisationConfig:
    """The benchmark. ``train`` is shared by every run (its model and seed are set per
    run). ``perturbations`` None: every perturbation of the sweep (MultiMNIST: a pair is
    right when both digits are). ``strengths`` replaces a swept perturbation's default strengths
    (ascending, at least two). The sweep tests the first ``sweep_limit`` test images (None:
    ``train.test_limit``), perturbed with ``sweep_seed`` alike for every run."""

    train: TrainConfig = field(default_factory=TrainConfig)
    contenders: tuple[Contender, ...] = DEFAULT_CONTENDERS
    seeds: tuple[int, ...] = (0, 1)
    perturbations: tuple[str, ...] | None = None
    strengths: dict[str, tuple[float, ...]] = field(default_factory=dict)
    sweep_limit: int | None = None
    sweep_seed: int = 0

    def __post_init__(self) -> None:
        labels = [c.label for c in self.contenders]
        if not labels or len(set(labels)) != len(labels):
            raise ConfigError(f"contenders must be distinct and at least one, got {labels}")
        if bad := [x for x in labels if not LABEL.fullmatch(x)]:
            raise ConfigError(f"contender label {bad[0]!r}: use letters, digits, '.', '_', '-'")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must be distinct and at least one, got {self.seeds}")
        if self.sweep_limit is not None and self.sweep_limit < 1:
            raise ConfigError(f"sweep_limit must be ≥ 1, got {self.sweep_limit}")
        check_perturbations((*(self.perturbations or ()), *self.strengths))
        for name, strengths in self.strengths.items():
            if name not in self.swept:
                raise ConfigError(f"strengths for {name}, which is not swept")
            ascending = all(a < b for a, b in zip(strengths, strengths[1:], strict=False))
            if len(strengths) < 2 or not ascending or not all(map(math.isfinite, strengths)):
                raise ConfigError(f"{name}: at least two finite, ascending strengths")
        for c in self.contenders:  # the model, its options and the seeds, before any work
            for seed in self.seeds:
                self.run_config(c, seed)

    @property
    def swept(self) -> tuple[str, ...]:
        """The perturbations the sweep visits."""
        if self.perturbations is not None:
            return self.perturbations
        return tuple(PERTURBATIONS)

    def strengths_of(self, name: str) -> tuple[float, ...]:
        return tuple(self.strengths.get(name, PERTURBATIONS[name].strengths))

    def run_config(self, contender: Contender, seed: int) -> TrainConfig:
        """The training config of one run: the shared one with this model and seed."""
        overrides = dict(contender.overrides)
        return dataclasses.replace(
            self.train, model=contender.model, model_overrides=overrides, seed=seed
        )


def auc(strengths: list[float], accuracies: list[float]) -> float:
    """The area under an accuracy curve by the trapezoid rule over ``strengths``
    (ascending), divided by the strength range: the curve's mean accuracy over that range,
    in [0, 1] for accuracies in [0, 1]."""
    pairs = zip(strengths, strengths[1:], accuracies, accuracies[1:], strict=False)
    area = sum((s1 - s0) * (a0 + a1) / 2 for s0, s1, a0, a1 in pairs)
    return area / (strengths[-1] - strengths[0])


def spread(values: list[float]) -> dict[str, Any]:
    """``values`` with their mean and sample standard deviation (None for one value)."""
    mean, std = mean_std(values)
    return {"mean": mean, "std": std, "values": values}


def _log_step(label: str, name: str, strength: float, accuracy: float) -> None:
    log.info("%s: %s %g: %.2f%%", label, name, strength, 100 * accuracy)


def run_generalisation(
    cfg: GeneralisationConfig, out_dir: str | Path, progress: ProgressFactory = NoProgress
) -> dict[str, Any]:
    """Train (or reuse) every contender × seed, test and sweep them; write
    ``generalisation.json`` (returned), ``generalisation.md`` and ``generalisation.png``
    into ``out_dir``, and the sweep's own report into ``<out>/generalisation/robustness/``."""
    out = Path(out_dir)
    device = resolve_device(cfg.train.device)
    check_writable_dir(out)
    cross = CROSS_TASKS.get(cfg.train.dataset)
    runs: dict[str, list[dict[str, Any]]] = {}
    paths = []
    for c in cfg.contenders:
        for seed in cfg.seeds:
            paths.append(path := out / "generalisation" / c.label / f"seed{seed}")
            m = train_or_reuse(cfg.run_config(c, seed), path, progress)
            run = {"seed": seed, "run": path.relative_to(out).as_posix()}
            run |= {k: m[k] for k in ("epochs", "train_examples", "train_seconds")}
            run["clean_accuracy"] = m["test_accuracy"]
            if cross:
                limit, data = cfg.train.test_limit, cfg.train.data_dir
                r = evaluate_run(
                    path,
                    dataset=cross,
                    options=None,
                    data_dir=data,
                    limit=limit,
                    device=device,
                    progress=progress,
                )
                run[cross] = r["test_accuracy"]
                log.info("%s on %s: %.2f%%", path, cross, 100 * r["test_accuracy"])
            runs.setdefault(c.label, []).append(run)
    sweep = _sweep(cfg, out, paths, runs, device)
    report = _report(cfg, runs, cross, sweep)
    write_json(out / "generalisation.json", report)
    atomic_write(out / "generalisation.md", lambda p: p.write_text(markdown(report)))
    save_generalisation(report, out / "generalisation.png")
    return report


def _sweep(
    cfg: GeneralisationConfig,
    out: Path,
    paths: list[Path],
    runs: dict[str, list[dict[str, Any]]],
    device: torch.device,
) -> dict[str, Any] | None:
    """Sweep the runs in ``paths`` (those of ``runs``, in order) on the same perturbed
    images; add each run's curves with their AUC to it (``"perturbations"``); return the
    sweep's settings, or None where nothing is swept."""
    if not cfg.swept:
        return None
    report = compare_runs(
        paths,
        out / "generalisation" / "robustness",
        limit=cfg.sweep_limit or cfg.train.test_limit,
        names=cfg.swept,
        seed=cfg.sweep_seed,
        data_dir=cfg.train.data_dir,
        device=device,
        on_step=_log_step,
        strengths={name: cfg.strengths_of(name) for name in cfg.swept},
    )
    curves = iter(report["models"].values())  # in the order of ``paths``
    for rs in runs.values():
        for run in rs:
            run["perturbations"] = {
                name: {**c, "auc": auc(c["strength"], c["accuracy"])}
                for name, c in next(curves).items()
            }
    return {k: report[k] for k in ("seed", "test_examples", "units")}


def summarise_curves(curves: list[dict[str, Any]]) -> dict[str, Any]:
    """One perturbation's curves of several seeds (``strength``, ``accuracy``, ``auc``; the
    same strengths) as their strengths, the ``spread`` of their AUC and a ``spread`` of
    the accuracy at each strength."""
    accuracies = zip(*(c["accuracy"] for c in curves), strict=True)
    return {
        "strength": curves[0]["strength"],
        "auc": spread([c["auc"] for c in curves]),
        "accuracy": [spread(list(a)) for a in accuracies],
    }


def _report(
    cfg: GeneralisationConfig,
    runs: dict[str, list[dict[str, Any]]],
    cross: str | None,
    sweep: dict[str, Any] | None,
) -> dict[str, Any]:
    """generalisation.json: per contender its runs and their mean ± std (``spread``)."""
    contenders = {}
    for c in cfg.contenders:
        rs = runs[c.label]
        summary = {k: spread([r[k] for r in rs]) for k in ("train_seconds", "clean_accuracy")}
        if cross:
            summary[cross] = spread([r[cross] for r in rs])
        summary["perturbations"] = {
            name: summarise_curves([r["perturbations"][name] for r in rs]) for name in cfg.swept
        }
        model = {"model": c.model, "model_overrides": c.overrides, "epochs": cfg.train.epochs}
        contenders[c.label] = {**model, "summary": summary, "runs": rs}
    return {
        "dataset": cfg.train.dataset,
        "cross_dataset": cross,
        "seeds": list(cfg.seeds),
        "sweep": sweep,
        "config": dataclasses.asdict(cfg),
        "contenders": contenders,
    }


def _cell(s: dict[str, Any], scale: float = 100, digits: int = 2) -> str:
    mean = f"{scale * s['mean']:.{digits}f}"
    return mean if s["std"] is None else f"{mean} ± {scale * s['std']:.{digits}f}"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


SETTINGS = ("epochs", "batch_size", "lr", "lr_schedule", "lr_decay", "warmup_epochs")
SETTINGS += ("weight_decay", "max_shift", "rotation", "scale", "elastic", "squeeze", "erase")
SETTINGS += ("blur", "train_limit", "val_size", "test_limit", "precision")


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: a row per contender (mean ± sample std over the seeds, %),
    then a table of accuracy at every strength per perturbation."""
    train, cross, sweep = report["config"]["train"], report["cross_dataset"], report["sweep"]
    names = list(sweep["units"]) if sweep else []
    settings = ", ".join(f"{k} {train[k]}" for k in SETTINGS)
    lines = [
        f"# Generalisation at one budget: {report['dataset']}",
        "",
        f"Every contender trained with the same settings ({settings}) and seeds "
        f"{', '.join(map(str, report['seeds']))}; mean ± sample standard deviation over the "
        "seeds, accuracy in %. AUC: the area under the accuracy curve over the strengths "
        "divided by their range (the curve's mean accuracy).",
    ]
    if sweep:
        lines[-1] += (
            f" Sweep: the first {sweep['test_examples']} test images, perturbed with seed "
            f"{sweep['seed']}, the same for every run."
        )
    head = ["Contender", "Model", "Train (s)", "Clean", *([cross] if cross else [])]
    rows = []
    for label, c in report["contenders"].items():
        s = c["summary"]
        cells = [label, f"`{c['model']}`", _cell(s["train_seconds"], 1, 0)]
        cells += [_cell(s[k]) for k in ["clean_accuracy", *([cross] if cross else [])]]
        rows.append(cells + [_cell(s["perturbations"][n]["auc"]) for n in names])
    lines += ["", *_table(head + [f"{n} AUC" for n in names], rows)]
    for n in names:
        curves = {k: c["summary"]["perturbations"][n] for k, c in report["contenders"].items()}
        strengths = next(iter(curves.values()))["strength"]
        rows = [[k, *map(_cell, p["accuracy"])] for k, p in curves.items()]
        lines += ["", f"## {n}: accuracy at each strength ({sweep['units'][n]})", ""]
        lines += _table(["Contender", *(f"{s:g}" for s in strengths)], rows)
    return "\n".join(lines) + "\n"


__all__ = [
    "CROSS_TASKS",
    "Contender",
    "GeneralisationConfig",
    "auc",
    "markdown",
    "run_generalisation",
    "spread",
    "summarise_curves",
]
