"""The paper's Table 1: baseline CNN vs CapsNet with 1 or 3 routing iterations, with and
without the reconstruction loss; N seeds per row, test error as mean ± std.

Every run is an ordinary run directory (``<out>/table1/<row>/seed<S>/``) trained by
:func:`capsnet.training.train`, selected on validation only. Finished runs are reused and
interrupted ones resumed, so the experiment can be stopped and restarted.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capsnet.errors import ConfigError
from capsnet.files import atomic_write, read_json
from capsnet.training import STATE_JSON, NoProgress, ProgressFactory, RunDir, TrainConfig, train

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Row:
    name: str
    method: str
    routing: int | None  # None: the baseline
    reconstruction: bool | None
    paper: dict[str, str]  # the paper's Table 1, test error (%), by dataset


ROWS = (
    Row("baseline", "Baseline", None, None, {"mnist": "0.39", "multimnist": "8.1"}),
    Row("routing1-norecon", "CapsNet", 1, False, {"mnist": "0.34 ± 0.032", "multimnist": "–"}),
    Row("routing1-recon", "CapsNet", 1, True, {"mnist": "0.29 ± 0.011", "multimnist": "7.5"}),
    Row("routing3-norecon", "CapsNet", 3, False, {"mnist": "0.35 ± 0.036", "multimnist": "–"}),
    Row("routing3-recon", "CapsNet", 3, True, {"mnist": "0.25 ± 0.005", "multimnist": "5.2"}),
)
ROW_NAMES = tuple(r.name for r in ROWS)
SIZES = {  # --size → (CapsNet model, baseline model)
    "paper": ("capsnet-mnist", "baseline-cnn"),
    "small": ("capsnet-small", "baseline-cnn-small"),
}


@dataclass(frozen=True)
class Table1Config:
    """The experiment: ``train`` gives dataset, budget and device (its model and seed are
    set per run); ``*_overrides`` change every CapsNet / baseline model (e.g. tiny tests)."""

    train: TrainConfig = field(default_factory=TrainConfig)
    seeds: tuple[int, ...] = (0, 1, 2)
    rows: tuple[str, ...] = ROW_NAMES
    size: str = "paper"
    capsnet_overrides: dict[str, Any] = field(default_factory=dict)
    baseline_overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.rows) - set(ROW_NAMES))
        if unknown:
            raise ConfigError(f"unknown row(s) {', '.join(unknown)}; choose from {ROW_NAMES}")
        if self.size not in SIZES:
            raise ConfigError(f"unknown size '{self.size}'; choose from: {', '.join(SIZES)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must be distinct and at least one, got {self.seeds}")


def run_config(cfg: Table1Config, row: Row, seed: int) -> TrainConfig:
    """The training config of one run of the table."""
    capsnet, baseline = SIZES[cfg.size]
    if row.routing is None:
        return dataclasses.replace(
            cfg.train, model=baseline, model_overrides=dict(cfg.baseline_overrides), seed=seed
        )
    overrides = {
        **cfg.capsnet_overrides,
        "routing_iterations": row.routing,
        "reconstruction": row.reconstruction,
    }
    return dataclasses.replace(cfg.train, model=capsnet, model_overrides=overrides, seed=seed)


def _comparable(train_cfg: dict[str, Any]) -> dict[str, Any]:
    """A saved or new config as JSON sees it, without the device (free to change)."""
    d = json.loads(json.dumps(train_cfg))
    d.pop("device", None)
    return d


def train_or_reuse(
    train_cfg: TrainConfig, run: Path, progress: ProgressFactory = NoProgress
) -> dict[str, Any]:
    """Train, resume or reuse the run in ``run``; its metrics. ConfigError if ``run``
    holds a run with other settings (the device aside; data paths compared absolute, as
    the run saved them)."""
    saved = RunDir(run).train  # migrated: settings added since take their defaults
    if saved is not None:
        if _comparable(saved.to_dict()) != _comparable(train_cfg.as_saved_by(saved).to_dict()):
            raise ConfigError(f"{run}: holds a run with other settings; use another --out")
        if (run / "metrics.json").is_file():
            log.info("reusing %s", run)
            return read_json(run / "metrics.json")
    resume = (run / STATE_JSON).is_file()
    log.info("%s %s", "resuming" if resume else "training", run)
    return train(train_cfg, run, resume=resume, overwrite=not resume, progress=progress)


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n − 1; None for a single value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def _fmt(mean: float, std: float | None) -> str:
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.3f}"


def run_table1(
    cfg: Table1Config, out_dir: str | Path, progress: ProgressFactory = NoProgress
) -> Path:
    """Run (or reuse) every run of the table; write ``table1.md`` and ``table1.csv`` into
    ``out_dir`` and return the path of the Markdown file."""
    out = Path(out_dir)
    rows = [r for r in ROWS if r.name in cfg.rows]
    results: dict[str, list[tuple[int, float, str]]] = {}
    for row in rows:
        for seed in cfg.seeds:
            run = out / "table1" / row.name / f"seed{seed}"
            m = train_or_reuse(run_config(cfg, row, seed), run, progress)
            link = (run / "metrics.json").relative_to(out).as_posix()
            results.setdefault(row.name, []).append((seed, 100 * m["test_error"], link))
    _write_csv(out / "table1.csv", rows, results)
    md = out / "table1.md"
    atomic_write(md, lambda p: p.write_text(_markdown(cfg, rows, results)))
    return md


def _markdown(cfg: Table1Config, rows: list[Row], results: dict[str, Any]) -> str:
    t = cfg.train
    held_out = "a tenth, at most 5000," if t.val_size is None else t.val_size  # see tasks
    capsnet, baseline = SIZES[cfg.size]
    paper = t.dataset if t.dataset in ROWS[0].paper else None
    head = "| Method | Routing | Reconstruction | Test error (%) | Runs (seed: error %) |"
    rule = "| --- | --- | --- | --- | --- |"
    if paper:
        head, rule = head + " Paper (%) |", rule + " --- |"
    lines = [
        f"# Table 1: test error on {t.dataset}",
        "",
        f"Mean ± sample standard deviation over seeds {', '.join(map(str, cfg.seeds))}; each "
        "run's error links to its `metrics.json` (the epoch selected on validation, then "
        f"tested once). Models `{capsnet}` and `{baseline}`; {t.epochs} epochs, batch "
        f"{t.batch_size}, lr {t.lr} (× {t.lr_decay} per epoch), training examples: "
        f"{t.train_limit or 'all'} (validation {held_out} held out), test examples: "
        f"{t.test_limit or 'all'}.",
        "",
        head,
        rule,
    ]
    for row in rows:
        errors = [e for _, e, _ in results[row.name]]
        runs = ", ".join(f"{s}: [{e:.2f}]({link})" for s, e, link in results[row.name])
        cells = [
            row.method,
            "–" if row.routing is None else str(row.routing),
            "–" if row.reconstruction is None else ("yes" if row.reconstruction else "no"),
            _fmt(*mean_std(errors)),
            runs,
        ]
        if paper:
            cells.append(row.paper[paper])
        lines.append("| " + " | ".join(cells) + " |")
    if paper:
        lines += ["", "Paper: Sabour, Frosst & Hinton (2017), Table 1."]
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, rows: list[Row], results: dict[str, Any]) -> None:
    def write(p: Path) -> None:
        with p.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(
                ["row", "method", "routing", "reconstruction", "runs", "test_error_mean_pct"]
                + ["test_error_std_pct", "seeds", "test_errors_pct", "metrics"]
            )
            for row in rows:
                seeds, errors, links = zip(*results[row.name], strict=True)
                mean, std = mean_std(list(errors))
                w.writerow(
                    [row.name, row.method, row.routing or "", row.reconstruction, len(errors)]
                    + [f"{mean:.4f}", "" if std is None else f"{std:.4f}"]
                    + [" ".join(map(str, seeds)), " ".join(f"{e:.4f}" for e in errors)]
                    + [" ".join(links)]
                )

    atomic_write(path, write)


__all__ = [
    "ROWS",
    "SIZES",
    "Table1Config",
    "mean_std",
    "run_config",
    "run_table1",
    "train_or_reuse",
]
