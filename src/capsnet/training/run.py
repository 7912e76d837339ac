"""A finished (or running) run as the tools use it: its files (:class:`RunDir`) with its
model, its task and its class names resolved, the task once per :class:`Run`.

Everything here is read through :class:`RunDir` and built by the layers below: the model
by :func:`capsnet.models.checkpoint.load_checkpoint`, the task by
:func:`capsnet.data.tasks.get_task`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from capsnet import _deprecated
from capsnet.data.custom import saved_policy
from capsnet.data.images import ImagePolicy
from capsnet.data.sources import DATASETS, find_dataset
from capsnet.data.task import Task, sized_class_names
from capsnet.data.tasks import get_task, task_class_names
from capsnet.errors import CapsNetError, CheckpointError
from capsnet.models.checkpoint import load_checkpoint
from capsnet.models.contract import Classifier, require
from capsnet.targets import Targets
from capsnet.training import rundir
from capsnet.training.pretrained import verified_path
from capsnet.training.rundir import CONFIG, RunDir


class Run(RunDir):
    """A run directory, checkpoint or shipped model (see :class:`RunDir`) and what it
    holds: :meth:`load_model`, :meth:`task`, :meth:`test_set`, :meth:`class_names_for` and
    :attr:`image_policy`. The run's own task is resolved once and kept."""

    def __init__(self, path: str | Path, *, names: bool = True) -> None:
        super().__init__(path, names=names)
        self._task: Task | None = None

    @classmethod
    def of(cls, run: RunDir) -> Run:
        """``run`` itself if it is a Run, else a Run of the same path."""
        if isinstance(run, Run):
            return run
        new = cls.__new__(cls)
        new.__dict__.update(vars(run))
        new._task = None
        return new

    def load_model(
        self,
        device: str | torch.device = "cpu",
        *,
        overrides: Mapping[str, Any] | None = None,
    ) -> nn.Module:
        """The run's model in eval mode; ConfigError unless it meets the contract,
        CheckpointError unless it is the model config.json describes. ``overrides``
        replace fields of the saved model config before the weights load: only fields
        that leave every weight's name and shape as saved (e.g. ``input_norm``,
        ``routing_iterations``), else ConfigError (see
        :func:`capsnet.models.checkpoint.load_checkpoint`)."""
        model = load_checkpoint(self.checkpoint, device, overrides=overrides)
        require(model, "capsnet", Classifier)
        self._check_model(model, skip=set(overrides or ()))
        return model

    def _check_model(self, model: nn.Module, skip: set[str]) -> None:
        """CheckpointError unless the checkpoint holds the model config.json describes
        (the fields in ``skip``, overridden, aside)."""
        saved = self.config.get("model")
        if not isinstance(saved, dict):
            return
        ckpt, name = self.checkpoint, getattr(model, "name", None)
        if saved.get("name") not in (None, name):
            raise CheckpointError(f"{ckpt}: holds a {name}, {CONFIG} says {saved['name']}")
        own = json.loads(json.dumps(model.config.to_dict()))  # tuples as lists, like the file
        theirs = saved.get("config") if isinstance(saved.get("config"), dict) else {}
        for key in sorted((set(own) & set(theirs)) - skip):
            if own[key] != theirs[key]:
                raise CheckpointError(
                    f"{ckpt}: holds another model than {CONFIG} says ({key} {own[key]} "
                    f"in the checkpoint, {theirs[key]} in {CONFIG})"
                )

    @property
    def image_policy(self) -> ImagePolicy | None:
        """The resize rule and normalisation new images get (folder:, npz:, …), or None."""
        try:
            return saved_policy(self.data)
        except TypeError as e:
            raise CheckpointError(f"{self.path / CONFIG}: bad data.image_policy ({e})") from None

    def set_task(self, task: Task) -> None:
        """Keep ``task`` as the run's own (training's, resolved already)."""
        self._task = task

    def task(self, dataset: str | None = None, options: Mapping[str, Any] | None = None) -> Task:
        """The run's own task with its saved options and data directory (kept: resolved
        once), ``options`` overriding them (a new Task); or another task ``dataset`` with
        ``options`` and the run's data directory. CheckpointError if the run has no
        config.json and no ``dataset`` is given."""
        own = dataset in (None, self.dataset)
        name = self.dataset if own else dataset
        if name is None:
            raise CheckpointError(f"{self.path}: no {CONFIG}, so the run's dataset is unknown")
        if own and not options:
            if self._task is None:
                self._task = get_task(name, self.dataset_options, self.data_dir)
            return self._task
        merged = {**self.dataset_options, **(options or {})} if own else dict(options or {})
        return get_task(name, merged, self.data_dir)

    def class_names_for(
        self, num_classes: int, dataset: str | Task | None = None
    ) -> tuple[str, ...]:
        """Names for a model of ``num_classes`` classes: those training saved, else the
        task's (or those of ``dataset``, a name or a Task), else "0", "1", … (when unknown
        or not ``num_classes`` of them)."""
        if isinstance(dataset, Task):
            return sized_class_names(dataset.class_names, num_classes)
        if dataset in (None, self.dataset):
            saved = self.data.get("class_names")
            if isinstance(saved, list) and len(saved) == num_classes:
                return tuple(map(str, saved))
        if (dataset or self.dataset) is None:
            return sized_class_names((), num_classes)
        try:
            return sized_class_names(self.task(dataset).class_names, num_classes)
        except CapsNetError:
            return sized_class_names((), num_classes)

    def test_set(
        self,
        data_dir: str | Path | None = None,
        limit: int | None = None,
        download: bool = True,
        dataset: str | None = None,
    ) -> tuple[Tensor, Targets]:
        """The run's own test set (its task, with its options), uint8 images (N, C, H, W),
        from ``data_dir``, else where the run found its data; or the test set of another
        task ``dataset`` (with its default options). ``download=False``: DataError rather
        than a download when the task's raw source is not found."""
        task = self.task(dataset)
        if not download and task.source in DATASETS:
            find_dataset(task.source, data_dir or self.data_dir, download=False)
        return task.load_test(limit=limit, data_dir=data_dir)


def load_run(
    path: str | Path,
    device: str | torch.device = "cpu",
    *,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[nn.Module, Any]:
    """Load a trained model (eval mode) and its config from a run directory or checkpoint;
    ``overrides`` replace fields of its saved config that keep the weights as they are
    (see :meth:`Run.load_model`), and the config returned has them."""
    model = Run(path).load_model(device, overrides=overrides)
    return model, model.config


def load_pretrained(
    name: str,
    device: str | torch.device = "cpu",
    *,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[nn.Module, Any]:
    """A shipped model (see :mod:`capsnet.training.pretrained`) in eval mode, float32
    whatever its stored dtype, and its config; its weights' sha256 is checked first.
    ``overrides`` as for :func:`load_run`."""
    return load_run(verified_path(name), device, overrides=overrides)


def _moved_method(old: str, new: str) -> Any:
    """RunDir's old method ``old``, kept one release: it warns, then runs Run's ``new``."""

    def method(self: RunDir, *args: Any, **kwargs: Any) -> Any:
        _deprecated.warn(f"RunDir.{old}", f"Run.{new}")
        return getattr(Run.of(self), new)(*args, **kwargs)

    method.__doc__ = f"Deprecated: use Run.{new}."
    return method


def _moved_policy(self: RunDir) -> ImagePolicy | None:
    """Deprecated: use Run.image_policy."""
    _deprecated.warn("RunDir.image_policy", "Run.image_policy")
    return Run.of(self).image_policy


# The names RunDir and capsnet.training.rundir had before the model and task moved here:
# set from this layer, the one that has them (rundir cannot import it); each warns.
RunDir.load_model = _moved_method("load_model", "load_model")  # type: ignore[attr-defined]
RunDir.test_set = _moved_method("test_set", "test_set")  # type: ignore[attr-defined]
RunDir.class_names = _moved_method("class_names", "class_names_for")  # type: ignore[attr-defined]
RunDir.image_policy = property(_moved_policy)  # type: ignore[attr-defined]
rundir.MOVED.update(
    {
        "class_names": ("capsnet.data.tasks.task_class_names", lambda: task_class_names),
        "load_run": ("capsnet.training.run.load_run", lambda: load_run),
        "load_pretrained": ("capsnet.training.run.load_pretrained", lambda: load_pretrained),
    }
)

__all__ = ["Run", "load_pretrained", "load_run"]
