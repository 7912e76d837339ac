"""The training loop and evaluation. Progress display is the caller's (see ``Progress``).

``train`` runs the epochs of a :class:`Session` (the state of a run in progress): each
epoch trains, validates, keeps the best weights and writes the run directory; at the end
the selected weights are tested. Validation and test losses, like the training loss,
reconstruct the *true* class (the decoder is fed the target's capsules), so ``val_loss``
compares with ``train_loss``; ``history.csv`` says so in its ``loss_decodes`` column.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from capsnet.data.split import TrainData
from capsnet.data.task import Task, sized_class_names
from capsnet.data.tasks import get_task
from capsnet.data.transforms import check_erase
from capsnet.errors import ConfigError, TrainingDiverged
from capsnet.models.checkpoint import BEST, LAST, save_checkpoint, weights_for
from capsnet.runtime import (
    AUTO,
    Distributed,
    distributed_from_env,
    grad_scaler,
    process_group,
    resolve_device,
    resolve_precision,
)
from capsnet.targets import Targets, blank_out, shows_object
from capsnet.training.config import TrainConfig
from capsnet.training.environment import environment
from capsnet.training.evaluation import evaluate, to_input
from capsnet.training.finetune import model_for_data, starting_model
from capsnet.training.progress import NoProgress, ProgressFactory
from capsnet.training.run import Run
from capsnet.training.state import load_train_state, save_train_state
from capsnet.training.step import adam, train_step
from capsnet.training.tensorboard import TensorBoardLog

log = logging.getLogger(__name__)

LOSS_DECODES = "true_class"  # history.csv: what val_loss reconstructs (older runs: predicted)


def train(
    cfg: TrainConfig,
    run_dir: str | Path | Run,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: ProgressFactory = NoProgress,
) -> dict[str, Any]:
    """Train, checkpoint every epoch, select on validation, test the selected model.

    Writes into ``run_dir`` (see :class:`~capsnet.training.rundir.RunDir`; a
    :class:`~capsnet.training.run.Run` given keeps the task training resolved, so that the
    caller's figures read no data file again) and returns the metrics. A new run saves its
    data paths absolute (``TrainConfig.with_absolute_paths``).
    ``resume`` continues the run there with its saved config (only ``epochs`` and
    ``device`` from ``cfg``; a run that finished no epoch starts again from its first).
    Under ``torchrun`` every process trains its share of each global batch
    (DistributedDataParallel) and only rank 0 writes files.
    """
    run = run_dir if isinstance(run_dir, Run) else Run(run_dir, names=False)
    info = distributed_from_env()
    with contextlib.ExitStack() as stack:
        if info.is_main:  # other ranks' write probes would race with rank 0's (mkdir, rmdir)
            run.check_for_training(resume, overwrite)
            stack.enter_context(run.writing())  # one training at a time in a run directory
        return _train(cfg, run, info, resume, progress)


def _train(
    cfg: TrainConfig, run: Run, info: Distributed, resume: bool, progress: ProgressFactory
) -> dict[str, Any]:
    if resume:
        saved = run.resume_config(cfg.epochs)
        cfg = dataclasses.replace(saved, epochs=cfg.epochs, device=cfg.device)
    elif (absolute := cfg.with_absolute_paths()) != cfg:
        cfg = absolute
        log.info("the run saves its paths as absolute: %s", _data_paths(cfg))
    if cfg.batch_size < info.world_size:
        raise ConfigError(f"batch size {cfg.batch_size} < {info.world_size} processes")
    with process_group(resolve_device(cfg.device), info) as device:
        if cfg.precision == AUTO:  # the run records what auto chose here
            cfg = dataclasses.replace(cfg, precision=resolve_precision(cfg.precision, device))
            log.info("precision auto: %s on %s", cfg.precision, device)
        if info.enabled:
            dist.barrier()  # rank 0 has checked the run directory before anyone goes on
        done = run.epochs_done() if resume else 0
        start = starting_model(cfg, run, resuming=bool(done))  # --init, before any data
        shown = progress if info.is_main else NoProgress
        session = Session.start(cfg, run, device, info, shown, start)
        if resume and not done:
            log.info("%s finished no epoch: training it from the start", run.path)
        first = session.resume() if done else session.begin()
        try:
            for epoch in range(first, cfg.epochs + 1):
                session.end_epoch(session.train_epoch(epoch))
        except TrainingDiverged as e:
            session.stop(e)
        return session.finish()


def _data_paths(cfg: TrainConfig) -> str:
    """``--dataset NAME``, ``--data-dir DIR`` and ``--init RUN`` (those given) of ``cfg``,
    for a log line."""
    given = {"--dataset": cfg.dataset, "--data-dir": cfg.data_dir, "--init": cfg.init}
    return " ".join(f"{flag} {value}" for flag, value in given.items() if value)


@dataclass
class Session:
    """A training run in progress: what it trains, with what, and where it stands. ``task``
    is the run's dataset resolved once: its training data, class names, record and test
    set all come from it."""

    cfg: TrainConfig
    run: Run
    device: torch.device
    info: Distributed
    progress: ProgressFactory
    task: Task
    data: TrainData
    model: nn.Module
    forward: Callable[..., Any]  # the model, or its DDP / compiled wrapper
    optim: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    gen: torch.Generator
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val: float = -1.0
    best_epoch: int = 0
    best_state: dict[str, Tensor] | None = None
    tb: TensorBoardLog | None = None  # --tensorboard, on rank 0
    global_step: int = 0

    @classmethod
    def start(
        cls,
        cfg: TrainConfig,
        run: Run,
        device: torch.device,
        info: Distributed,
        progress: ProgressFactory,
        start: nn.Module | None = None,
    ) -> Session:
        """Seed, resolve the task and load its data, build the model (or take ``start``,
        see :func:`~capsnet.training.finetune.model_for_data`), its optimiser and
        wrappers."""
        torch.manual_seed(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        task = get_task(cfg.dataset, cfg.dataset_options, cfg.data_dir)
        run.set_task(task)
        data = task.load_train(
            val_size=cfg.val_size, train_limit=cfg.train_limit, max_shift=cfg.max_shift
        )
        check_erase(cfg.erase, data.image_shape)  # before anything is written
        if cfg.val_size is None and data.held_out is not None:  # the run saves the default
            cfg = dataclasses.replace(cfg, val_size=data.held_out)
        model = model_for_data(cfg, start, data.image_shape, task.num_classes).to(device)
        forward: Callable[..., Any] = model
        if info.enabled:
            ids = [device.index] if device.type == "cuda" else None
            forward = DistributedDataParallel(model, device_ids=ids)
        if cfg.compile:
            forward = torch.compile(forward)
        optim = adam(model, cfg.lr, cfg.weight_decay)
        scaler = grad_scaler(device, cfg.precision)
        session = cls(
            cfg, run, device, info, progress, task, data, model, forward, optim, scaler, gen
        )
        if cfg.tensorboard and info.is_main:
            session.tb = TensorBoardLog(run.path)
        return session

    def begin(self) -> int:
        """Clear the directory of an old run's files (``--overwrite``, or a resumed run that
        finished no epoch) and write config.json (rank 0); the first epoch."""
        if self.info.is_main:
            self.run.clear()
            self.run.write_config(
                {
                    "train": self.cfg.to_dict(),
                    "model": {"name": self.cfg.model, "config": self.model.config.to_dict()},
                    "data": self.task.record(),
                    "parameters": sum(p.numel() for p in self.model.parameters()),
                    "world_size": self.info.world_size,
                    "environment": environment(),
                }
            )
        return 1

    def resume(self) -> int:
        """Restore weights, optimiser, RNG and selection state; the next epoch."""
        path = self.run.path
        self.model.load_state_dict(weights_for(path / LAST, self.model))
        self.best_state = weights_for(path / BEST, self.model)
        meta = load_train_state(path, self.optim, self.gen)
        self.history, self.best_val = meta["history"], meta["best_val"]
        self.best_epoch = meta["best_epoch"]
        self.global_step = len(self.history) * math.ceil(self.data.size / self.cfg.batch_size)
        if self.info.is_main:
            self.run.record_resume(meta["epoch"], self.cfg, environment())
        log.info("resuming %s at epoch %d", path, meta["epoch"] + 1)
        return meta["epoch"] + 1

    def stop(self, diverged: TrainingDiverged) -> NoReturn:
        """End a diverged run, saying how to go on: the epochs that completed stay (a run
        that evaluate, figures and --resume read); if none did, what it wrote is removed."""
        if self.tb is not None:
            self.tb.close()
        path, done = self.run.path, len(self.history)
        if done:
            kept = f"{path} keeps the {done} epoch(s) before; rerun with --overwrite"
        else:
            if self.info.is_main:
                self.run.clear()
            kept = f"nothing was kept in {path}; rerun"
        raise ConfigError(f"{diverged}; {kept} and a lower --lr") from None

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One pass over the training data; the epoch's history row."""
        cfg, info, n_train = self.cfg, self.info, self.data.size
        steps, augment = math.ceil(n_train / cfg.batch_size), cfg.augmentation()
        per_step = cfg.lr_schedule != "exponential" or epoch - 1 < cfg.warmup_epochs
        lr = first_lr = self._set_lr(cfg.learning_rate(epoch, 0, steps))
        self.model.train()
        bar = self.progress(total=n_train, desc=f"epoch {epoch}/{cfg.epochs}")
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        shown = 0  # training images that show an object (not --blank's blanks)
        t0 = time.perf_counter()
        for step, (x, y) in enumerate(self.data.batches(cfg.batch_size, self.gen)):
            # Every rank makes the whole global batch (the same examples and augmentation
            # as one process at this batch size), then trains on its share of it.
            n = len(x)
            if augment is not None:  # beyond the paper's shifts (see TrainConfig)
                x = augment(x, self.gen)
            x, y = blank_out(x, y, cfg.blank, self.gen)  # as they are when blank is 0
            shown += int(shows_object(y).sum())  # on the CPU, of the whole global batch
            if per_step and step:
                lr = self._set_lr(cfg.learning_rate(epoch, step, steps))
            if info.enabled:
                share = torch.arange(n).tensor_split(info.world_size)[info.rank]
                x, y = x[share], y[share]
            x, y = to_input(x, self.device), y.to(self.device)
            loss, n_correct = train_step(
                self.model,
                self.forward,
                self.optim,
                x,
                y,
                precision=cfg.precision,
                scaler=self.scaler,
            )
            loss_sum += loss * len(x)
            correct += n_correct
            bar.update(n)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
            if self.tb is not None:  # per-step scalars (a device sync per step)
                self.global_step += 1
                rate = (step * cfg.batch_size + n) / (time.perf_counter() - t0)  # this epoch
                self.tb.step(self.global_step, float(loss), lr, rate)
        if info.enabled:
            dist.all_reduce(loss_sum)
            dist.all_reduce(correct)
        bar.close()
        seconds = time.perf_counter() - t0
        row = {"epoch": epoch, "lr": first_lr, "train_loss": float(loss_sum) / n_train}
        if not math.isfinite(row["train_loss"]):
            raise TrainingDiverged(epoch, row["train_loss"])
        return row | {
            "train_accuracy": int(correct) / max(shown, 1),  # blanks have no right answer
            "train_seconds": round(seconds, 3),
            "train_images_per_second": round(n_train / seconds, 2),
        }

    def _set_lr(self, lr: float) -> float:
        for group in self.optim.param_groups:
            group["lr"] = lr
        return lr

    def end_epoch(self, row: dict[str, Any]) -> None:
        """Validate, select, and write the epoch's checkpoints, history and state."""
        data, epoch = self.data, row["epoch"]
        is_best = True  # no validation split: the last epoch is the selected one
        if len(data.val_y):
            row |= self._validate()
            row["loss_decodes"] = LOSS_DECODES
            is_best = row["val_accuracy"] > self.best_val
        self.history.append(row)
        if is_best:
            self.best_val, self.best_epoch = row.get("val_accuracy", -1.0), epoch
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if self.info.is_main:
            self._write_epoch(epoch, is_best)
        if self.tb is not None:
            self.tb.epoch(row)
            names = sized_class_names(self.task.class_names, self.model.config.num_classes)
            self.tb.figures(self.model, data.val_x, data.val_y, epoch, names)
        val_acc = f"{100 * row['val_accuracy']:.2f}%" if "val_accuracy" in row else "n/a"
        log.info(
            "epoch %d: loss %.4f, train accuracy %.2f%%, val accuracy %s, %.0f images/s",
            epoch, row["train_loss"], 100 * row["train_accuracy"], val_acc,
            row["train_images_per_second"],
        )  # fmt: skip

    def _validate(self) -> dict[str, float]:
        """Validation loss and accuracy. Data-parallel, each rank evaluates its share of the
        split and the sums are all-reduced (on the training device, as the backend needs),
        so every rank has the same figures (and the same selected epoch) as one process
        would, to float rounding of the loss."""
        x, y, info = self.data.val_x, self.data.val_y, self.info
        if not info.enabled:
            val = self._evaluate(x, y, "validation")
            return {"val_loss": val["loss"], "val_accuracy": val["accuracy"]}
        sizes = [len(part) for part in torch.arange(len(y)).tensor_split(info.world_size)]
        n, start = sizes[info.rank], sum(sizes[: info.rank])
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)  # correct, loss
        if n:  # a rank may have none of a split smaller than the world
            val = self._evaluate(x[start : start + n], y[start : start + n], "validation")
            sums += torch.tensor(
                [val["accuracy"] * n, val["loss"] * n], dtype=torch.float64, device=self.device
            )
        dist.all_reduce(sums)
        return {"val_loss": sums[1].item() / len(y), "val_accuracy": round(sums[0].item()) / len(y)}

    def _evaluate(self, x: Tensor, y: Targets, desc: str) -> dict[str, float]:
        """Loss, accuracy and error of the model on ``x``, ``y`` (views, not copies)."""
        return evaluate(
            self.model, x, y, batch_size=500, device=self.device, progress=self.progress,
            desc=desc, precision=self.cfg.precision,
        )  # fmt: skip

    def _write_epoch(self, epoch: int, is_best: bool) -> None:
        path, name = self.run.path, self.cfg.model
        save_checkpoint(path / LAST, self.model, name, epoch=epoch)
        if is_best:
            save_checkpoint(path / BEST, self.model, name, epoch=epoch)
        self.run.write_history(self.history)
        save_train_state(
            path, self.optim, self.gen, epoch=epoch, history=self.history,
            best_val=self.best_val, best_epoch=self.best_epoch,
        )  # fmt: skip

    def finish(self) -> dict[str, Any]:
        """Test the selected weights; write and return metrics.json."""
        cfg = self.cfg
        if self.tb is not None:
            self.tb.close()
        self.model.load_state_dict(self.best_state)
        x, y = self.task.load_test(limit=cfg.test_limit)
        test = self._evaluate(x, y, "test")
        seconds = sum(h["train_seconds"] for h in self.history)
        metrics = {
            "dataset": cfg.dataset,
            "model": cfg.model,
            "test_accuracy": test["accuracy"],
            "test_error": test["error"],
            "test_loss": test["loss"],
            "loss_decodes": LOSS_DECODES,
            "test_examples": len(y),
            "best_val_accuracy": self.best_val if self.best_val >= 0 else None,
            "best_epoch": self.best_epoch,
            "epochs": cfg.epochs,
            "train_examples": self.data.size,
            "train_images_per_second": round(self.data.size * len(self.history) / seconds, 2),
            "train_seconds": round(seconds, 1),
            "device": str(self.device),
            "world_size": self.info.world_size,
            "precision": cfg.precision,
            "compile": cfg.compile,
            **{k: v for k, v in environment().items() if k != "command"},
        }
        if self.info.is_main:
            self.run.write_metrics(metrics)
        return metrics


__all__ = ["Session", "train"]
