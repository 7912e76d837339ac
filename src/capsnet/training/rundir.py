"""The run directory: one object that writes its files during training and reads them
afterwards. Resolving what the files describe (the model, the task, its test set and class
names) is the layer above: :class:`capsnet.training.run.Run`.

A run directory holds ``config.json`` (training config, model name and config,
environment), ``history.csv`` (one row per epoch), ``best.safetensors`` and
``last.safetensors`` (weights + model config), ``train_state.*`` (for resuming) and
``metrics.json`` (the test of the selected epoch). Every command that reads a run reads
it through :class:`RunDir` (or :class:`~capsnet.training.run.Run`); runs written by older
versions are migrated on read, and settings this version does not know are refused (naming
the version that made the run).
"""

from __future__ import annotations

import contextlib
import csv
import fnmatch
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from capsnet import _deprecated
from capsnet.errors import CheckpointError, ConfigError
from capsnet.files import atomic_write, check_writable_dir, exclusive_lock, read_json, write_json
from capsnet.models.checkpoint import BEST, LAST
from capsnet.training.config import TrainConfig, saved_train_config, written_by
from capsnet.training.pretrained import is_pretrained, verified_path
from capsnet.training.state import STATE_JSON, STATE_TENSORS, read_state_meta

CONFIG, HISTORY, METRICS = "config.json", "history.csv", "metrics.json"
AVERAGED = "averaged"  # config.json's record of a run made by averaging others' weights
RUN_FILES = (CONFIG, METRICS, HISTORY, BEST, LAST, STATE_TENSORS, STATE_JSON)
FIGURES = (  # every figure capsnet.tools.viz.save_figures may write (which depends on the model)
    *("training.png", "coupling.png", "multimnist.png", "reconstructions.png", "perturbation.png"),
)
# Everything else capsnet writes into a run directory: evaluate (eval*.json, classes*),
# figures, robustness --out RUN, and atomic_write's temporary files.
OUTPUTS = (
    *RUN_FILES,
    *FIGURES,
    *("eval.json", "eval-*.json", "classes.json", "classes.png", "classes-*.json"),
    *("classes-*.png", "robustness.json", "robustness.png", ".*.tmp"),
)
TENSORBOARD, EVENTS = "tensorboard", "events.out.tfevents.*"  # --tensorboard (a directory)
LOCK = ".lock"  # held by the process training into the run (RunDir.writing)


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "true/false"}
    return "null" if value is None else names.get(type(value), "a number")


def checked_config(path: Path, config: Any) -> dict[str, Any]:
    """``config`` (read from ``path``) if it has the shape of a run's config.json: an
    object whose ``train`` is an object, and ``model`` and ``data`` too if present."""
    if not isinstance(config, dict):
        raise CheckpointError(
            f"{path}: not a run's config (an object expected, found {_json_type(config)})"
        )
    if "train" not in config:
        raise CheckpointError(f"{path}: not a run's config (no training settings, 'train')")
    for key in ("train", "model", "data"):
        if key in config and not isinstance(config[key], dict):
            raise CheckpointError(
                f"{path}: '{key}' must be an object, found {_json_type(config[key])}"
            )
    return config


class RunDir:
    """A run directory (or one checkpoint file, whose directory is its parent), or the
    name of a shipped pretrained model (``capsnet.training.pretrained``; a path that exists wins).

    ``config`` is config.json as a dict ({} if absent), ``train`` the training config it
    holds (None if absent); ``dataset``, ``dataset_options`` and ``data_dir`` are the
    task the run was trained on, its settings and where its data was found.
    ``pretrained`` is the shipped model's name (its weights' sha256 checked), else None:
    tools write nothing into a pretrained model's directory, which is inside the package.
    ``names=False`` takes ``path`` as a path only (training's ``--out``), never as a name.
    """

    def __init__(self, path: str | Path, *, names: bool = True):
        path = Path(path)
        named = names and not path.exists() and is_pretrained(str(path))
        self.pretrained = str(path) if named else None
        if self.pretrained is not None:
            path = verified_path(self.pretrained)
        self.file = path if path.is_file() else None
        self.path = path.parent if self.file else path
        self._config: dict[str, Any] | None = None
        self._train: TrainConfig | None = None

    @property
    def name(self) -> str:
        """The pretrained model's name, else the path given (run directory or checkpoint)."""
        return self.pretrained or str(self.file or self.path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    # --- reading ----------------------------------------------------------------------

    @property
    def config(self) -> dict[str, Any]:
        """config.json, {} if there is none; CheckpointError if it is not a run's."""
        if self._config is None:
            path = self.path / CONFIG
            config = checked_config(path, read_json(path)) if path.exists() else {}
            train = config["train"] if config else None
            self._train = saved_train_config(path, train, written_by(config)) if config else None
            self._config = config
        return self._config

    @property
    def train(self) -> TrainConfig | None:
        """The training config of config.json (migrated), None if there is none."""
        return self._train if self.config else None

    @property
    def dataset(self) -> str | None:
        return self.train.dataset if self.train else None

    @property
    def dataset_options(self) -> dict[str, Any]:
        return dict(self.train.dataset_options) if self.train else {}

    @property
    def data_dir(self) -> str | None:
        return self.train.data_dir if self.train else None

    @property
    def checkpoint(self) -> Path:
        """The given checkpoint file, else the best (else last) checkpoint of the run."""
        if self.file is not None:
            return self.file
        if not self.path.exists():
            raise CheckpointError(
                f"{self.path}: no such run directory, checkpoint or pretrained model "
                "(`capsnet pretrained` lists those shipped)"
            )
        for name in (BEST, LAST):
            if (self.path / name).is_file():
                return self.path / name
        raise CheckpointError(f"{self.path}: not a run directory (no {BEST} or {LAST})")

    def require_run(self) -> None:
        """CheckpointError unless this is a run directory with its training config.json."""
        if self.file is not None or self.train is None:
            raise CheckpointError(f"{self.name}: not a run directory (no training {CONFIG})")

    @property
    def data(self) -> dict[str, Any]:
        """What training saved about its data (``class_names``, ``image_policy``), or {}."""
        data = self.config.get("data")
        return data if isinstance(data, dict) else {}

    def history(self) -> list[dict[str, str]]:
        try:
            with (self.path / HISTORY).open(newline="") as f:
                rows = list(csv.DictReader(f))
        except OSError as e:
            why = e.strerror or e
            raise CheckpointError(f"{self.path / HISTORY}: cannot read ({why})") from None
        if not rows:
            raise CheckpointError(f"{self.path / HISTORY}: no epochs recorded")
        return rows

    def metrics(self) -> dict[str, Any] | None:
        """``metrics.json`` (None if absent); CheckpointError unless it is an object whose
        ``test_accuracy``, ``test_error`` and ``best_epoch`` (what the tools read) are
        numbers where present."""
        path = self.path / METRICS
        if not path.is_file():
            return None
        metrics = read_json(path)
        if not isinstance(metrics, dict):
            kind = _json_type(metrics)
            raise CheckpointError(f"{path}: not a run's metrics (an object expected, found {kind})")
        for key in ("test_accuracy", "test_error", "best_epoch"):
            value = metrics.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise CheckpointError(f"{path}: '{key}' must be a number, found {value!r}")
        return metrics

    # --- writing (training) -----------------------------------------------------------

    def contents(self) -> tuple[list[Path], list[Path]]:
        """The directory's entries capsnet writes (``OUTPUTS``, ``tensorboard/`` holding
        only events files), and the others; sorted by name."""
        if not self.path.is_dir():
            return [], []
        ours, others = [], []
        for entry in sorted(self.path.iterdir()):
            if entry.name == LOCK:
                continue  # neither: it stays, so that the process holding it keeps it
            if entry.is_dir() and not entry.is_symlink():
                events = entry.name == TENSORBOARD and all(
                    p.is_file() and fnmatch.fnmatchcase(p.name, EVENTS) for p in entry.iterdir()
                )
                (ours if events else others).append(entry)
                continue
            mine = entry.is_file() and any(fnmatch.fnmatchcase(entry.name, o) for o in OUTPUTS)
            (ours if mine else others).append(entry)
        return ours, others

    def check_for_training(self, resume: bool, overwrite: bool) -> None:
        """CheckpointError unless a new run may start here (or, ``resume``, continue).
        ``overwrite`` replaces a run: refused if the directory also holds other files."""
        run = self.path
        if self.file is not None or (run.exists() and not run.is_dir()):
            given = self.file or run  # a file's parent is not the --out given
            raise CheckpointError(f"{given}: exists and is not a directory")
        ours, others = self.contents()
        if resume:
            if not (run / CONFIG).exists():  # a run stopped in its first epoch has no state
                raise CheckpointError(f"{run}: nothing to resume (no {CONFIG})")
        elif ours and not overwrite:
            raise CheckpointError(
                f"{run}: already holds a run ({ours[0].name}); use --resume, --overwrite "
                "or a new --out"
            )
        elif ours and others:
            names = ", ".join(p.name for p in others[:3]) + (", …" if len(others) > 3 else "")
            raise CheckpointError(
                f"{run}: --overwrite removes a run's files only, and it also holds others "
                f"({names}); move them away or use a new --out"
            )
        check_writable_dir(run)

    def writing(self) -> contextlib.AbstractContextManager[None]:
        """While training writes the run: an exclusive lock on ``LOCK`` in it
        (:func:`~capsnet.files.exclusive_lock`), so that a second training into the same
        directory stops at once instead of overwriting the first one's checkpoints."""
        return exclusive_lock(self.path, LOCK, "another process is training into this run")

    def clear(self) -> None:
        """Remove every file capsnet wrote here (see :meth:`contents`), nothing else."""
        for entry in self.contents()[0]:
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        self._config = self._train = None

    def epochs_done(self) -> int:
        """The epochs the run has finished (``train_state.json``); 0 without that file (a
        run stopped in its first epoch, which ``--resume`` trains from the start)."""
        return read_state_meta(self.path)["epoch"] if (self.path / STATE_JSON).exists() else 0

    def resume_config(self, epochs: int | None) -> TrainConfig:
        """The saved config ``train --resume`` continues (to ``epochs`` epochs, None: the
        run's own): an error, before any work, unless the run's files can be resumed so and
        there is something left to do (epochs to train, or the test of a finished run)."""
        if not self.config:
            raise CheckpointError(f"{self.path}: nothing to resume (no {CONFIG})")
        saved, done = self.train, self.epochs_done()
        epochs = saved.epochs if epochs is None else epochs
        if epochs < done:
            raise ConfigError(
                f"--epochs {epochs}: the run in {self.path} has done {done} epochs already; "
                f"resume it with --epochs {done} or more"
            )
        if epochs == done and (self.path / METRICS).exists():  # else its test is still to run
            raise ConfigError(
                f"{self.path}: the run is complete ({done} of {done} epochs, tested); "
                f"resume it with --epochs {done + 1} or more to train on"
            )
        return saved

    def write_config(self, config: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(self.path / CONFIG, config)
        self._config = self._train = None

    def record_resume(self, done: int, cfg: TrainConfig, env: dict[str, Any]) -> None:
        """Rewrite config.json for a resume after epoch ``done``: ``train`` takes the new
        ``epochs`` and ``device`` and ``resumes`` gains an entry (when, where, with what)."""
        config = dict(self.config)
        config["train"] = {**config["train"], "epochs": cfg.epochs, "device": cfg.device}
        config["resumes"] = [*config.get("resumes", []), {"after_epoch": done, **env}]
        self.write_config(config)

    def write_history(self, history: list[dict[str, Any]]) -> None:
        def write(p: Path) -> None:
            with p.open("w", newline="") as f:
                fields = dict.fromkeys(k for row in history for k in row)  # old rows: fewer
                w = csv.DictWriter(f, fieldnames=list(fields), restval="")
                w.writeheader()
                w.writerows(history)

        atomic_write(self.path / HISTORY, write)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        write_json(self.path / METRICS, metrics)


# Names that moved to capsnet.training.run (which fills this in: it is the layer above)
MOVED: dict[str, tuple[str, Callable[[], Any]]] = {}
__getattr__ = _deprecated.module_getattr(__name__, MOVED)

__all__ = ["AVERAGED", "CONFIG", "HISTORY", "METRICS", "RUN_FILES", "RunDir"]
