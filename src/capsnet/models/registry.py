"""The model registry: a name → a function building the model from config overrides."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from torch import nn

from capsnet.errors import ConfigError
from capsnet.typecheck import check_field_types

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register ``fn(**overrides) -> model`` as ``name``. A registered model
    meets :class:`capsnet.models.contract.Classifier`, and the tools need nothing else."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def check_model_name(name: str) -> None:
    """Raise ConfigError unless ``name`` is registered."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model '{name}'; choose from: {', '.join(list_models())}")


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered model; ``overrides`` replace fields of its default config."""
    check_model_name(name)
    model = _REGISTRY[name](**overrides)
    model.name = name  # what the tools call it in messages
    return model


def build(model_cls: Callable[[Any], nn.Module], base: Any, overrides: dict[str, Any]) -> Any:
    """``model_cls(base config with overrides)``; ConfigError for an unknown field or a
    value of the wrong type."""
    check_field_types(type(base), overrides)
    try:
        return model_cls(dataclasses.replace(base, **overrides))
    except TypeError as e:  # unknown field
        raise ConfigError(f"bad model override: {e}") from None


__all__ = ["build", "check_model_name", "create_model", "list_models", "register_model"]
