"""What a training run needs besides the model's own config."""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from capsnet.data.tasks import check_dataset
from capsnet.errors import ConfigError
from capsnet.models import check_model_name
from capsnet.runtime import check_precision

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs besides the model's own config."""

    dataset: str = "mnist"  # a task of capsnet.data.tasks (folder:PATH, npz:PATH, …)
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
        if not 0 < self.lr < math.inf or not 0 < self.lr_decay <= 1:  # nan fails too
            raise ConfigError(
                f"lr must be finite and > 0, and lr_decay in (0, 1]; got {self.lr}, {self.lr_decay}"
            )
        if not 0 <= self.seed < 2**64:
            raise ConfigError(f"seed must be from 0 to 2**64 - 1, got {self.seed}")
        if self.val_size < 0 or self.max_shift < 0:
            raise ConfigError("val_size and max_shift must be ≥ 0")
        check_precision(self.precision)
        check_dataset(self.dataset, self.dataset_options, train=True)  # before loading data
        check_model_name(self.model)
        if self.tensorboard:
            from capsnet.tensorboard import check_available

            check_available()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """A saved config, migrated: fields added since take their defaults (a run saved
        before ``precision`` existed trained in fp32), unknown fields are dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        dropped = sorted(set(d) - known)
        if dropped:
            log.warning("ignoring unknown training setting(s): %s", ", ".join(dropped))
        return cls(**{k: v for k, v in d.items() if k in known})


__all__ = ["TrainConfig"]
