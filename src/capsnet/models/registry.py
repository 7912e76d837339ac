"""The model registry: a name → a model class and the config whose fields overrides replace."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from torch import nn

from capsnet.errors import ConfigError, did_you_mean
from capsnet.typecheck import check_field_types

_REGISTRY: dict[str, tuple[Callable[[Any], nn.Module], Any]] = {}  # name -> (class, config)


def register_model(name: str, model_cls: Callable[[Any], nn.Module], base: Any) -> None:
    """Register ``name``: ``model_cls(config)`` with ``base``, a frozen config dataclass, as
    the defaults the overrides replace. A registered model meets
    :class:`capsnet.models.contract.Classifier`, and the tools need nothing else."""
    _REGISTRY[name] = (model_cls, base)


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def check_model_name(name: str) -> None:
    """Raise ConfigError unless ``name`` is registered."""
    if name not in _REGISTRY:
        raise ConfigError(
            f"unknown model '{name}'{did_you_mean(name, _REGISTRY)}; "
            f"choose from: {', '.join(list_models())}"
        )


def check_model_options(name: str, overrides: dict[str, Any]) -> None:
    """ConfigError unless ``name`` is registered and every override names a field of its
    config with a value of that field's type (cheap: nothing is built, no data needed)."""
    check_model_name(name)
    _check_overrides(type(_REGISTRY[name][1]), overrides)


def _check_overrides(cls: type, overrides: dict[str, Any]) -> None:
    fields = [f.name for f in dataclasses.fields(cls)]
    if unknown := sorted(set(overrides) - set(fields)):
        hint = did_you_mean(unknown[0], fields) if len(unknown) == 1 else ""
        raise ConfigError(
            f"bad model override: {cls.__name__} has no field {', '.join(map(repr, unknown))}"
            f"{hint}; its fields: {', '.join(fields)}"
        )
    check_field_types(cls, overrides)


def check_learns_absence(name: str) -> None:
    """ConfigError unless the model ``name`` can train on blank examples (training's
    ``blank``, whose label ``capsnet.targets.ABSENT`` names no class): its class says so
    with ``learns_absence = True`` (a loss that gives a blank image a target, such as the
    margin loss's all negatives)."""
    check_model_name(name)
    if not getattr(_REGISTRY[name][0], "learns_absence", False):
        raise ConfigError(
            f"{name} cannot train on blank examples (blank > 0): its loss needs a class "
            "for every image"
        )


def model_config(name: str, **overrides: Any) -> Any:
    """The config of a registered model, ``overrides`` replacing fields of its default one
    (ConfigError for an unknown model or field, a value of the wrong type or an invalid
    config); nothing is built."""
    check_model_options(name, overrides)
    return dataclasses.replace(_REGISTRY[name][1], **overrides)


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered model; ``overrides`` replace fields of its default config
    (ConfigError for an unknown model or field, or a value of the wrong type)."""
    config = model_config(name, **overrides)
    model = _REGISTRY[name][0](config)
    model.name = name  # what the tools call it in messages
    return model


__all__ = [
    "check_learns_absence",
    "check_model_name",
    "check_model_options",
    "create_model",
    "list_models",
    "model_config",
    "register_model",
]
