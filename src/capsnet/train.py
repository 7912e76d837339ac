"""Training and evaluation loops. Progress display is the caller's (see ``Progress``)."""

from __future__ import annotations

import csv
import dataclasses
import datetime
import logging
import math
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from capsnet import __version__
from capsnet.checkpoint import (
    BEST,
    LAST,
    atomic_write,
    load_checkpoint,
    read_json,
    save_checkpoint,
    write_json,
)
from capsnet.data.custom import run_record
from capsnet.data.multimnist import OverlayTargets
from capsnet.data.tasks import Targets, check_dataset, dataset_spec, load_test, load_train
from capsnet.errors import CheckpointError, ConfigError
from capsnet.metrics import ClassCounts
from capsnet.models import check_model_name, create_model
from capsnet.runtime import (
    Distributed,
    autocast,
    check_precision,
    distributed_from_env,
    grad_scaler,
    process_group,
    resolve_device,
)
from capsnet.tensorboard import TensorBoardLog, check_available

log = logging.getLogger(__name__)

STATE_TENSORS, STATE_JSON = "train_state.safetensors", "train_state.json"
RUN_FILES = ("config.json", "metrics.json", "history.csv", BEST, LAST, STATE_TENSORS, STATE_JSON)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs besides the model's own config."""

    dataset: str = "mnist"
    dataset_options: dict[str, Any] = field(default_factory=dict)  # see capsnet.data.tasks
    data_dir: str | None = None
    model: str = "capsnet-mnist"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 100
    lr: float = 1e-3
    lr_decay: float = 0.96  # multiplies the learning rate after every epoch
    max_shift: int = 2  # random translation augmentation, pixels (paper: 2)
    train_limit: int | None = None
    val_size: int = 5000
    test_limit: int | None = None
    device: str = "auto"
    seed: int = 0
    precision: str = "fp32"  # fp32, bf16 or fp16 (autocast; fp16 with a grad scaler)
    compile: bool = False  # torch.compile the training forward
    tensorboard: bool = False  # TensorBoard events in RUN_DIR/tensorboard (capsnet.tensorboard)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.lr <= 0 or not 0 < self.lr_decay <= 1:
            raise ConfigError("lr must be > 0 and lr_decay in (0, 1]")
        if self.val_size < 0 or self.max_shift < 0:
            raise ConfigError("val_size and max_shift must be ≥ 0")
        check_precision(self.precision)
        check_dataset(self.dataset, self.dataset_options, train=True)  # before loading data
        check_model_name(self.model)
        if self.tensorboard:
            check_available()


class Progress(Protocol):
    """What the trainer needs of a progress bar (``tqdm`` fits)."""

    def update(self, n: int = 1) -> Any: ...
    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, **kwargs: Any) -> Any: ...
    def close(self) -> Any: ...


ProgressFactory = Callable[..., Progress]  # called as factory(total=..., desc=...)


class _NoProgress:
    def __init__(self, **_: Any) -> None: ...
    def update(self, n: int = 1) -> None: ...
    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, **kwargs: Any) -> None: ...
    def close(self) -> None: ...


def _to_input(images: Tensor, device: torch.device) -> Tensor:
    return images.to(device, non_blocking=True).float().div_(255.0)


def num_correct(lengths: Tensor, y: Targets) -> Tensor:
    """Correct predictions in a batch of class scores (B, K).

    One label per image: the longest capsule (highest score) is the label. L labels per
    image (OverlayTargets, MultiMNIST): the L longest capsules are exactly the L labels.
    """
    if not isinstance(y, OverlayTargets):
        return (lengths.argmax(1) == y).sum()
    k = y.labels.shape[1]
    top = lengths.topk(k, dim=1).indices.sort(1).values  # (B, L)
    return (top == y.labels.sort(1).values).all(1).sum()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: Tensor,
    labels: Targets,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    progress: ProgressFactory = _NoProgress,
    desc: str = "eval",
    precision: str = "fp32",
    counts: ClassCounts | None = None,
) -> dict[str, float]:
    """Accuracy and mean loss of ``model`` on uint8 images (N, C, H, W) with labels (N,)
    or OverlayTargets (see num_correct); ``counts`` (if given) also counts per class."""
    device = torch.device(device)
    model.eval()
    correct, loss_sum, n = 0, 0.0, len(labels)
    bar = progress(total=n, desc=desc)
    for idx in torch.arange(n).split(batch_size):
        x, y = _to_input(images[idx], device), labels[idx].to(device)
        with autocast(device, precision):
            out = model(x)
            loss, _ = model.loss(out, x, y)
        correct += int(num_correct(out.lengths, y))
        if counts is not None:
            counts.update(out.lengths, y)
        loss_sum += float(loss) * len(idx)
        bar.update(len(idx))
    bar.close()
    return {"accuracy": correct / n, "error": 1 - correct / n, "loss": loss_sum / n}


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--verify", "-q", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_features() -> str:
    """The vector instructions PyTorch uses here (``AVX512``, ``AVX2``, …), plus ``+bf16``
    when the CPU computes bfloat16 natively: the two change CPU speeds several-fold."""
    features = torch.backends.cpu.get_cpu_capability()
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return features
    return features + ("+bf16" if {"avx512_bf16", "amx_bf16"} & set(flags) else "")


def environment() -> dict[str, Any]:
    """Where and with what a run happened: recorded in every run directory."""
    return {
        "capsnet_version": __version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "commit": _git_commit(),
        "device_name": _device_name(),
        "cpu_features": _cpu_features(),
        "cpu_threads": torch.get_num_threads(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv,
    }


# --- optimizer and RNG state, pickle-free ----------------------------------------------


def _save_train_state(run: Path, optim: torch.optim.Optimizer, gen: torch.Generator, **meta: Any):
    sd = optim.state_dict()
    tensors = {"rng.generator": gen.get_state(), "rng.torch": torch.get_rng_state()}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, state in sd["state"].items():
        for k, v in state.items():
            if isinstance(v, Tensor):
                tensors[f"optim.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[k] = v
    atomic_write(run / STATE_TENSORS, lambda p: save_file(tensors, str(p)))
    write_json(
        run / STATE_JSON,
        {**meta, "param_groups": sd["param_groups"], "optim_scalars": scalars},
    )


def _load_train_state(
    run: Path, optim: torch.optim.Optimizer, gen: torch.Generator
) -> dict[str, Any]:
    meta = read_json(run / STATE_JSON)
    try:
        tensors = load_file(str(run / STATE_TENSORS))
    except Exception as e:  # safetensors raises several types for a corrupt file
        raise CheckpointError(f"{run / STATE_TENSORS}: unreadable ({e})") from None
    state: dict[int, dict[str, Any]] = {}
    for key, t in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = t
    for pid, scalars in meta["optim_scalars"].items():
        state.setdefault(int(pid), {}).update(scalars)
    try:
        optim.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        gen.set_state(tensors["rng.generator"])
        torch.set_rng_state(tensors["rng.torch"])
    except (KeyError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{run}: training state does not match the model ({e})") from None
    return meta


def _write_history(run: Path, history: list[dict[str, Any]]) -> None:
    def write(p: Path) -> None:
        with p.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(history[0]))
            w.writeheader()
            w.writerows(history)

    atomic_write(run / "history.csv", write)


# --- the training loop -----------------------------------------------------------------


def build_model(cfg: TrainConfig, image_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The registered model with its input shape and class count taken from the data."""
    c, h, w = image_shape
    overrides = {
        "in_channels": c,
        "input_size": (h, w),
        "num_classes": num_classes,
        **cfg.model_overrides,
    }
    return create_model(cfg.model, **overrides)


def _check_run_dir(run: Path, resume: bool, overwrite: bool) -> None:
    existing = [f for f in RUN_FILES if (run / f).exists()]
    if resume:
        if not (run / STATE_JSON).exists():
            raise CheckpointError(f"{run}: nothing to resume (no {STATE_JSON})")
    elif existing and not overwrite:
        raise CheckpointError(
            f"{run}: already holds a run ({existing[0]}); use --resume, --overwrite or a new --out"
        )
    elif run.exists() and not run.is_dir():
        raise CheckpointError(f"{run}: exists and is not a directory")


def train_step(
    model: nn.Module,
    forward: Callable[..., Any],
    optim: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    precision: str = "fp32",
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[Tensor, Tensor]:
    """One optimisation step. ``forward`` is ``model`` or a wrapper of it (DDP, compiled).

    Returns the detached loss and the number of correct predictions (no device sync).
    """
    with autocast(x.device, precision):
        out = forward(x, y)
        loss, _ = model.loss(out, x, y)
    optim.zero_grad(set_to_none=True)
    if scaler is not None and scaler.is_enabled():
        scaler.scale(loss).backward()
        scaler.step(optim)
        scaler.update()
    else:
        loss.backward()
        optim.step()
    return loss.detach(), num_correct(out.lengths.detach(), y)


def train(
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: ProgressFactory = _NoProgress,
) -> dict[str, Any]:
    """Train, checkpoint every epoch, select on validation, test the selected model.

    Writes into ``run_dir``: ``config.json``, ``history.csv``, ``last.safetensors``,
    ``best.safetensors``, ``train_state.*`` (for ``resume``) and ``metrics.json``.
    Returns the metrics. Under ``torchrun`` every process trains its share of each global
    batch (DistributedDataParallel) and only rank 0 writes files.
    """
    run = Path(run_dir)
    _check_run_dir(run, resume, overwrite)
    if resume:
        saved = read_json(run / "config.json")
        old = TrainConfig(**saved["train"])
        cfg = dataclasses.replace(old, epochs=cfg.epochs, device=cfg.device)
    info = distributed_from_env()
    if cfg.batch_size < info.world_size:
        raise ConfigError(f"batch size {cfg.batch_size} < {info.world_size} processes")
    with process_group(resolve_device(cfg.device), info) as device:
        if info.enabled:
            dist.barrier()  # every rank has checked the run directory before rank 0 writes
        return _train(cfg, run, resume, device, info, progress if info.is_main else _NoProgress)


def _train(
    cfg: TrainConfig,
    run: Path,
    resume: bool,
    device: torch.device,
    info: Distributed,
    progress: ProgressFactory,
) -> dict[str, Any]:
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    data = load_train(
        cfg.dataset,
        cfg.data_dir,
        val_size=cfg.val_size,
        train_limit=cfg.train_limit,
        max_shift=cfg.max_shift,
        options=cfg.dataset_options,
    )
    num_classes = dataset_spec(cfg.dataset).num_classes
    data_record = run_record(cfg.dataset, cfg.dataset_options)  # class names, image policy
    model = build_model(cfg, data.image_shape, num_classes).to(device)
    optim = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scaler = grad_scaler(device, cfg.precision)
    forward: Callable[..., Any] = model
    if info.enabled:
        forward = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        forward = torch.compile(forward)

    history: list[dict[str, Any]] = []
    start_epoch, best_val, best_epoch, best_state = 1, -1.0, 0, None
    if resume:
        meta = _load_train_state(run, optim, gen)
        model.load_state_dict(load_checkpoint(run / LAST).state_dict())
        best_state = load_checkpoint(run / BEST).state_dict()
        history, best_val, best_epoch = meta["history"], meta["best_val"], meta["best_epoch"]
        start_epoch = meta["epoch"] + 1
        log.info("resuming %s at epoch %d", run, start_epoch)
    elif info.is_main:
        run.mkdir(parents=True, exist_ok=True)
        write_json(
            run / "config.json",
            {
                "train": dataclasses.asdict(cfg),
                "model": {"name": cfg.model, "config": model.config.to_dict()},
                "data": data_record,
                "parameters": sum(p.numel() for p in model.parameters()),
                "world_size": info.world_size,
                "environment": environment(),
            },
        )
    n_train = data.size
    train_seconds = sum(h["train_seconds"] for h in history)
    tb = TensorBoardLog(run) if cfg.tensorboard and info.is_main else None
    global_step = len(history) * math.ceil(n_train / cfg.batch_size)  # steps done (resume)

    for epoch in range(start_epoch, cfg.epochs + 1):
        lr = cfg.lr * cfg.lr_decay ** (epoch - 1)
        for group in optim.param_groups:
            group["lr"] = lr
        model.train()
        bar = progress(total=n_train, desc=f"epoch {epoch}/{cfg.epochs}")
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        t0 = time.perf_counter()
        for step, (x, y) in enumerate(data.batches(cfg.batch_size, gen)):
            # Every rank makes the whole global batch (the same examples and augmentation
            # as one process at this batch size), then trains on its share of it.
            n = len(x)
            if info.enabled:
                share = torch.arange(n).tensor_split(info.world_size)[info.rank]
                x, y = x[share], y[share]
            x, y = _to_input(x, device), y.to(device)
            loss, n_correct = train_step(model, forward, optim, x, y, cfg.precision, scaler)
            loss_sum += loss * len(x)
            correct += n_correct
            bar.update(n)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
            if tb is not None:  # per-step scalars (a device sync per step)
                global_step += 1
                rate = (step * cfg.batch_size + n) / (time.perf_counter() - t0)  # this epoch
                tb.step(global_step, float(loss), lr, rate)
        if info.enabled:
            dist.all_reduce(loss_sum)
            dist.all_reduce(correct)
        bar.close()
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        row = {
            "epoch": epoch,
            "lr": lr,
            "train_loss": float(loss_sum) / n_train,
            "train_accuracy": int(correct) / n_train,
            "train_seconds": round(seconds, 3),
            "train_images_per_second": round(n_train / seconds, 2),
        }
        if not math.isfinite(row["train_loss"]):
            raise ConfigError(f"training diverged at epoch {epoch} (loss {row['train_loss']})")
        if len(data.val_y):  # every rank evaluates (identically), so all agree on the best
            val = evaluate(
                model, data.val_x, data.val_y, 500, device, progress, "validation", cfg.precision
            )
            row |= {"val_loss": val["loss"], "val_accuracy": val["accuracy"]}
            is_best = val["accuracy"] > best_val
        else:
            is_best = True  # no validation split: the last epoch is the selected one
        history.append(row)
        if tb is not None:
            tb.epoch(row)
            tb.figures(model, data.val_x, data.val_y, epoch, data_record["class_names"])
        if is_best:
            best_val, best_epoch = row.get("val_accuracy", -1.0), epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if info.is_main:
            save_checkpoint(run / LAST, model, cfg.model, epoch=epoch)
            if is_best:
                save_checkpoint(run / BEST, model, cfg.model, epoch=epoch)
            _write_history(run, history)
            _save_train_state(
                run,
                optim,
                gen,
                epoch=epoch,
                history=history,
                best_val=best_val,
                best_epoch=best_epoch,
            )
        log.info(
            "epoch %d: loss %.4f, train accuracy %.2f%%, val accuracy %s, %.0f images/s",
            epoch,
            row["train_loss"],
            100 * row["train_accuracy"],
            f"{100 * row['val_accuracy']:.2f}%" if "val_accuracy" in row else "n/a",
            row["train_images_per_second"],
        )

    if tb is not None:
        tb.close()
    model.load_state_dict(best_state)
    test_x, test_y = load_test(
        cfg.dataset, cfg.data_dir, limit=cfg.test_limit, options=cfg.dataset_options
    )
    test = evaluate(model, test_x, test_y, 500, device, progress, "test", cfg.precision)
    metrics = {
        "dataset": cfg.dataset,
        "model": cfg.model,
        "test_accuracy": test["accuracy"],
        "test_error": test["error"],
        "test_loss": test["loss"],
        "test_examples": len(test_y),
        "best_val_accuracy": best_val if best_val >= 0 else None,
        "best_epoch": best_epoch,
        "epochs": cfg.epochs,
        "train_examples": n_train,
        "train_images_per_second": round(n_train * len(history) / train_seconds, 2),
        "train_seconds": round(train_seconds, 1),
        "device": str(device),
        "world_size": info.world_size,
        "precision": cfg.precision,
        "compile": cfg.compile,
        **{k: v for k, v in environment().items() if k != "command"},
    }
    if info.is_main:
        write_json(run / "metrics.json", metrics)
    return metrics
