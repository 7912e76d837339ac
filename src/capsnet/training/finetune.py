"""Fine-tuning (``TrainConfig.init``): a new run whose model starts as another's, the
model of a run directory, a checkpoint file or a shipped model (whatever ``capsnet
evaluate RUN`` takes): the same model name, config and weights; the optimiser, the
learning-rate schedule and the epochs start afresh. ``TrainConfig.model_overrides`` then
change the init model's config as it loads: only fields that keep every weight's name and
shape (:func:`capsnet.models.checkpoint.load_checkpoint`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from torch import nn

from capsnet.errors import ConfigError
from capsnet.models.checkpoint import LAST, load_checkpoint
from capsnet.training.config import DATA_FIELDS, TrainConfig
from capsnet.training.run import Run
from capsnet.training.step import build_model, data_fields

log = logging.getLogger(__name__)


def init_model(init: str, overrides: Mapping[str, Any] | None = None) -> nn.Module:
    """The model of ``init`` (a run directory, checkpoint file or pretrained name) on the
    CPU in train mode, ``overrides`` replacing fields of its config as it loads (see
    :meth:`Run.load_model`); CheckpointError naming ``init`` if it cannot be loaded."""
    return Run(init).load_model(overrides=overrides).train()


def starting_model(cfg: TrainConfig, run: Run, resuming: bool) -> nn.Module | None:
    """The model a run of ``cfg`` in ``run`` starts from, read before any data: None
    without ``cfg.init`` (training builds a new one); when ``resuming`` a run that finished
    an epoch, its own last checkpoint (the init model's config; the resume restores its
    weights, the init's are not read again); else the init model with
    ``cfg.model_overrides``, logged; ConfigError unless its name is ``cfg.model``."""
    if cfg.init is None:
        return None
    if resuming:
        return load_checkpoint(run.path / LAST).train()
    model = init_model(cfg.init, cfg.model_overrides)
    if model.name != cfg.model:
        raise ConfigError(
            f"init {cfg.init} holds a {model.name}, not the model {cfg.model} asked for; "
            "leave --model out to fine-tune the init model"
        )
    log.info("initialised from %s", cfg.init)
    return model


def model_for_data(
    cfg: TrainConfig, start: nn.Module | None, image_shape: tuple[int, ...], num_classes: int
) -> nn.Module:
    """The model a run of ``cfg`` trains on images (C, H, W) of ``num_classes`` classes:
    ``start`` (:func:`starting_model`'s) if it takes them, else ConfigError naming
    ``cfg.init`` and what differs; without one, a new model (:func:`build_model`)."""
    if start is None:
        return build_model(cfg, image_shape, num_classes)
    own = json.loads(json.dumps({k: getattr(start.config, k) for k in DATA_FIELDS}))
    given = json.loads(json.dumps(data_fields(image_shape, num_classes)))  # lists, like own
    if wrong := [k for k in DATA_FIELDS if own[k] != given[k]]:
        said = "; ".join(f"{k} {own[k]} in the model, {given[k]} in the data" for k in wrong)
        raise ConfigError(f"init {cfg.init}: its model does not take {cfg.dataset} ({said})")
    return start


__all__ = ["init_model", "model_for_data", "starting_model"]
