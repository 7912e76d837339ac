"""Throughput and memory of a model's training step and inference, on random inputs."""

from __future__ import annotations

import csv
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from capsnet.allocator import allocator_tuned
from capsnet.errors import ConfigError
from capsnet.files import atomic_write, check_writable_dir
from capsnet.models import check_model_name, create_model
from capsnet.models.contract import Classifier, require
from capsnet.runtime import (
    autocast,
    check_precision,
    grad_scaler,
    resolve_device,
    resolve_precision,
)
from capsnet.training.environment import environment
from capsnet.training.step import adam, train_step


@dataclass(frozen=True)
class BenchConfig:
    model: str = "capsnet-mnist"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 100
    device: str = "auto"
    precision: str = "fp32"
    compile: bool = False
    warmup: int = 2  # untimed steps (first calls, compilation)
    steps: int = 10  # timed steps; the median is reported

    def __post_init__(self) -> None:
        check_model_name(self.model)
        check_precision(self.precision)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn: Callable[[], Any], warmup: int, steps: int, device: torch.device):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return kb / (2**20 if sys.platform == "darwin" else 2**10), "process_peak_rss"


def benchmark(cfg: BenchConfig, model: nn.Module | None = None) -> dict[str, Any]:
    """Median images/s of training steps (forward, loss, backward, Adam) and of inference.

    ``model`` defaults to ``create_model(cfg.model, **cfg.model_overrides)``; inputs are
    uniform noise of the model's input shape with random labels, so no data set is needed.
    """
    model = model or create_model(cfg.model, **cfg.model_overrides)
    require(model, "bench", Classifier)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    torch.manual_seed(0)
    model = model.to(device)
    c = model.config
    x = torch.rand(cfg.batch_size, *c.input_shape, device=device)
    y = torch.randint(0, c.num_classes, (cfg.batch_size,), device=device)
    forward = torch.compile(model) if cfg.compile else model
    optim = adam(model, lr=1e-3)
    scaler = grad_scaler(device, precision)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    model.train()
    train_s = _median_seconds(
        lambda: train_step(model, forward, optim, x, y, precision=precision, scaler=scaler),
        cfg.warmup,
        cfg.steps,
        device,
    )
    model.eval()

    @torch.no_grad()
    def infer() -> None:
        with autocast(device, precision):
            forward(x)

    infer_s = _median_seconds(infer, cfg.warmup, cfg.steps, device)
    peak_mb, memory_kind = _peak_memory_mb(device)
    env = environment()
    return {
        **asdict(cfg),
        "impl": "capsnet",
        "allocator": "tuned" if allocator_tuned() else "default",
        "device": str(device),
        "precision": precision,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_images_per_second": round(cfg.batch_size / train_s, 2),
        "infer_images_per_second": round(cfg.batch_size / infer_s, 2),
        "peak_memory_mb": round(peak_mb, 1),
        "memory_kind": memory_kind,
        **{k: env[k] for k in ENV_FIELDS},
    }


def summary(r: dict[str, Any]) -> str:
    """One line describing a :func:`benchmark` result."""
    return (
        f"{r['model']} batch {r['batch_size']} {r['precision']}"
        f"{' compiled' if r['compile'] else ''} on {r['device']} ({r['device_name']}, "
        f"{r['cpu_features']}, {r['cpu_threads']} threads, torch "
        f"{r['torch_version']}): train {r['train_images_per_second']:.1f} img/s, inference "
        f"{r['infer_images_per_second']:.1f} img/s, peak memory {r['peak_memory_mb']:.0f} MiB "
        f"({r['memory_kind']})"
    )


ENV_FIELDS = ("device_name", "cpu_features", "cpu_threads", "torch_version", "commit", "date")
CSV_FIELDS = (
    "date", "commit", "device", "device_name", "cpu_threads", "torch_version", "impl",
    "allocator", "model", "parameters", "batch_size", "precision", "compile",
    "train_images_per_second", "infer_images_per_second", "peak_memory_mb", "memory_kind",
    "cpu_features",
)  # fmt: skip


BENCH_COLUMNS = {"date", "model"}  # in every bench CSV capsnet has written


def _read_csv(path: Path) -> list[dict[str, str]] | None:
    """None if a row can be appended to ``path`` as it is (a bench CSV with today's columns),
    else the rows to write again under today's header ([] for a new or empty file; an older
    bench CSV's rows); ConfigError, naming the file, unless it is a bench CSV."""
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a CSV file")
    if not path.exists() or path.stat().st_size == 0:
        return []
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = tuple(reader.fieldnames or ())
            rows = None if columns == CSV_FIELDS else list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ConfigError(f"{path}: not a readable CSV file ({e})") from None
    if not set(columns) >= BENCH_COLUMNS:
        raise ConfigError(f"{path}: not a benchmark CSV (its columns: {', '.join(columns)})")
    return rows


def check_csv(path: str | Path) -> None:
    """ConfigError, before any work, unless :func:`append_csv` can add a row to ``path``."""
    path = Path(path)
    _read_csv(path)
    check_writable_dir(path.parent)


def append_csv(path: str | Path, row: dict[str, Any]) -> None:
    """Append ``row`` (the CSV_FIELDS of a benchmark result) to a bench CSV file.

    A bench CSV written with other columns (by an older capsnet) is first rewritten,
    atomically, with the current ones; its old rows keep their values and leave new columns
    empty. Any other file is refused (ConfigError), never rewritten.
    """
    path = Path(path)
    rows = _read_csv(path)
    if rows is None:
        with path.open("a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore").writerow(row)
        return

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows([*rows, row])

    atomic_write(path, write)
