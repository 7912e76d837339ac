"""What a training run needs besides the model's own config."""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capsnet import __version__
from capsnet.data.custom import absolute_path, absolute_task
from capsnet.data.tasks import check_dataset
from capsnet.data.transforms import Augmentation
from capsnet.errors import CheckpointError, ConfigError
from capsnet.models import check_learns_absence, check_model_options
from capsnet.names import LR_SCHEDULES
from capsnet.runtime import AUTO, check_precision
from capsnet.training.pretrained import is_pretrained
from capsnet.training.tensorboard import check_available
from capsnet.typecheck import check_field_types

log = logging.getLogger(__name__)

DATA_FIELDS = ("in_channels", "input_size", "num_classes")  # model fields the data sets


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs besides the model's own config."""

    dataset: str = "mnist"  # a task of capsnet.data.tasks (folder:PATH, npz:PATH, …)
    dataset_options: dict[str, Any] = field(default_factory=dict)  # see capsnet.data.tasks
    data_dir: str | None = None
    model: str = "capsnet-mnist"
    model_overrides: dict[str, Any] = field(default_factory=dict)  # with init: as it loads
    # fine-tuning: start from the model and weights of this run directory, checkpoint or
    # pretrained name (capsnet.training.finetune); model must be its model's name
    init: str | None = None
    epochs: int = 10
    batch_size: int = 100
    lr: float = 1e-3
    lr_decay: float = 0.96  # multiplies the learning rate after every epoch (exponential)
    lr_schedule: str = "exponential"  # or "cosine": lr · ½(1 + cos(π · t / epochs)), per step
    warmup_epochs: float = 0.0  # linear warm-up from ~0 over this many epochs, per step
    weight_decay: float = 0.0  # decoupled (AdamW) when > 0; the paper's Adam when 0
    max_shift: int = 2  # random translation augmentation, pixels (paper: 2)
    rotation: float = 0.0  # beyond the paper: random rotation in ± degrees
    scale: float = 0.0  # beyond the paper: random scaling by 1 ± scale
    elastic: float = 0.0  # beyond the paper: elastic distortion α, pixels (σ = 4)
    squeeze: float = 0.0  # beyond the paper: random horizontal squeeze by 1 − [0, squeeze]
    erase: int = 0  # beyond the paper: a random erase × erase square set to zero, pixels
    blur: float = 0.0  # beyond the paper: Gaussian blur, σ uniform in [0, blur] pixels
    # beyond the paper: each training example, with this probability, replaced by a blank
    # image labelled ABSENT, no class (capsnet.targets.blank_out): under the margin loss
    # every class capsule learns to stay short when nothing is there
    blank: float = 0.0
    train_limit: int | None = None
    val_size: int | None = None  # held out of the training split; None: tasks.default_val_size
    test_limit: int | None = None
    device: str = "auto"
    seed: int = 0
    # fp32 (the default: the same numbers on every machine), bf16 or fp16 (autocast; fp16
    # with a grad scaler), or auto: bf16 where the device computes it natively, else fp32
    precision: str = "fp32"
    compile: bool = False  # torch.compile the training forward
    tensorboard: bool = (
        False  # TensorBoard events in RUN_DIR/tensorboard (capsnet.training.tensorboard)
    )

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if not 0 < self.lr < math.inf or not 0 < self.lr_decay <= 1:  # nan fails too
            raise ConfigError(
                f"lr must be finite and > 0, and lr_decay in (0, 1]; got {self.lr}, {self.lr_decay}"
            )
        if not 0 <= self.seed < 2**64:
            raise ConfigError(f"seed must be from 0 to 2**64 - 1, got {self.seed}")
        if (self.val_size is not None and self.val_size < 0) or self.max_shift < 0:
            raise ConfigError("val_size and max_shift must be ≥ 0")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(
                f"unknown lr_schedule '{self.lr_schedule}'; choose from: {', '.join(LR_SCHEDULES)}"
            )
        if not (0 <= self.warmup_epochs < math.inf and 0 <= self.weight_decay < math.inf):
            raise ConfigError("warmup_epochs and weight_decay must be finite and ≥ 0")
        if self.warmup_epochs > self.epochs:
            raise ConfigError(
                f"warmup_epochs {self.warmup_epochs} is longer than the run ({self.epochs} epochs)"
            )
        self.augmentation()  # checks rotation, scale, elastic, squeeze, erase, blur
        if not 0 <= self.blank < 1:  # nan fails too
            raise ConfigError(f"blank is a probability in [0, 1), got {self.blank}")
        check_precision(self.precision)
        check_dataset(self.dataset, self.dataset_options, train=True)  # before loading data
        check_model_options(self.model, self.model_overrides)  # before loading data
        if self.blank:
            check_learns_absence(self.model)
        if clash := sorted(set(DATA_FIELDS) & set(self.model_overrides)):
            raise ConfigError(f"{', '.join(clash)}: set by the data, not a model option")
        if self.init == "":
            raise ConfigError("init must be a run directory, checkpoint or pretrained name")
        if self.tensorboard:
            check_available()

    def augmentation(self) -> Augmentation | None:
        """The augmentation beyond the paper's shifts (applied after them), or None."""
        extra = {
            "rotation": self.rotation,
            "scale": self.scale,
            "elastic": self.elastic,
            "squeeze": self.squeeze,
            "erase": self.erase,
            "blur": self.blur,
        }
        return Augmentation(max_shift=0, **extra) if any(extra.values()) else None

    def learning_rate(self, epoch: int, step: int = 0, steps: int = 1) -> float:
        """The learning rate of step ``step`` (from 0) of ``steps`` in ``epoch`` (from 1).

        With t = epoch − 1 + step / steps (epochs done before the step): ``exponential`` is
        lr · lr_decay^(epoch − 1), constant within an epoch; ``cosine`` is
        lr · ½(1 + cos(π t / epochs)). While t < warmup_epochs either is multiplied by
        (t + 1 / steps) / warmup_epochs: a linear warm-up whose first step is not 0.
        """
        t = epoch - 1 + step / steps
        if self.lr_schedule == "cosine":
            lr = self.lr * 0.5 * (1 + math.cos(math.pi * t / self.epochs))
        else:
            lr = self.lr * self.lr_decay ** (epoch - 1)
        if t < self.warmup_epochs:
            lr *= min(1.0, (t + 1 / steps) / self.warmup_epochs)
        return lr

    def with_absolute_paths(self) -> TrainConfig:
        """This config with the path of a ``folder:``/``npz:`` dataset, ``data_dir`` and
        ``init`` (unless a pretrained name, which names no existing path) made absolute
        against the current directory, as a new run saves them: the run then reads its
        data from any directory."""
        data_dir = None if self.data_dir is None else absolute_path(self.data_dir)
        init = self.init
        if init is not None and (Path(init).exists() or not is_pretrained(init)):
            init = absolute_path(init)
        dataset = absolute_task(self.dataset)
        return dataclasses.replace(self, dataset=dataset, data_dir=data_dir, init=init)

    def as_saved_by(self, saved: TrainConfig) -> TrainConfig:
        """This config as a run made from it saves it, that run's own choices taken from
        ``saved`` (a run's config): data paths absolute (:meth:`with_absolute_paths`), and
        the default ``val_size`` and ``precision`` auto as the run chose them. So it equals
        ``saved`` (the device and tuples-as-lists aside) if ``saved`` is a run of it."""
        chosen = {"val_size": saved.val_size} if self.val_size is None else {}
        if self.precision == AUTO:
            chosen["precision"] = saved.precision
        return dataclasses.replace(self.with_absolute_paths(), **chosen)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """A saved config, migrated: fields added since take their defaults (a run saved
        before ``precision`` existed trained in fp32); ConfigError for unknown fields."""
        if unknown := sorted(set(d) - {f.name for f in dataclasses.fields(cls)}):
            raise ConfigError(f"unknown training setting(s) {', '.join(unknown)}")
        return cls(**d)


def written_by(config: dict[str, Any]) -> str | None:
    """The capsnet version that made the run of ``config`` (its ``environment``), or None
    for a run that does not say."""
    env = config.get("environment")
    version = env.get("capsnet_version") if isinstance(env, dict) else None
    return version if isinstance(version, str) else None


def saved_train_config(path: Path, saved: dict[str, Any], version: str | None) -> TrainConfig:
    """The TrainConfig of config.json's ``train`` (``path``; the run made by capsnet
    ``version``): settings added since take their defaults; CheckpointError naming the
    file for a bad setting, or for one this capsnet does not know in a run that records
    its version (naming both versions), rather than a run that silently loses it. A run
    that records no version predates the recording: a setting it has that this capsnet
    lacks is one removed since, dropped with a warning."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown := sorted(set(saved) - known):
        if version is None:
            log.warning("%s: ignoring setting(s) removed since: %s", path, ", ".join(unknown))
            saved = {k: v for k, v in saved.items() if k in known}
        else:
            raise CheckpointError(
                f"{path}: training setting(s) {', '.join(unknown)} unknown to capsnet "
                f"{__version__}; the run was made by capsnet {version}"
            )
    try:
        check_field_types(TrainConfig, saved)
        return TrainConfig.from_dict(saved)
    except ConfigError as e:
        raise CheckpointError(f"{path}: bad training setting: {e}") from None


__all__ = ["TrainConfig", "saved_train_config", "written_by"]
