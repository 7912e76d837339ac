"""Values read from JSON checked against a dataclass's field types, so that a hand-edited
or foreign file gives one clear error instead of a TypeError deep inside the code."""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from typing import Any

from capsnet.errors import ConfigError

_JSON_NAMES = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:  # a bool is no number here, although Python's bool is an int
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:  # an integer is a number too, as in JSON
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (dict, Mapping):
        return isinstance(value, dict)
    if origin in (tuple, list):
        return isinstance(value, list | tuple)
    return True  # anything else is left to the dataclass's own checks


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if typing.get_origin(hint) in (dict, Mapping):
        return "an object"
    if typing.get_origin(hint) in (tuple, list):
        return "a list"
    return _JSON_NAMES.get(hint, str(hint))


def check_field_types(cls: type, values: Mapping[str, Any]) -> None:
    """ConfigError naming the first of ``values`` whose type does not fit the field of
    the dataclass ``cls`` of that name (unknown names are not checked)."""
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        if name in hints and not _matches(value, hints[name]):
            raise ConfigError(f"{name} must be {_describe(hints[name])}, found {value!r}")


__all__ = ["check_field_types"]
