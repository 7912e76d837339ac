"""The command line's argument parser: which options were given, and defaults in help.

:class:`Parser` leaves every option out of the parsed namespace until parsing ends, so
``args.given`` names the options given on the command line (``train --resume`` refuses
those that differ from the run); then the defaults are filled in. An option that sets a
config field (see :func:`field_args`) gets no default at all: the config's dataclass
supplies it, and help looks it up only when shown (importing the config may import
PyTorch; ``capsnet --help`` and argument errors do not).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib
from collections.abc import Sequence
from typing import Any


class HelpFormatter(argparse.HelpFormatter):
    """Help that ends with each option's default, unless its text mentions one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if text == argparse.SUPPRESS or "default" in text:
            return text
        default = _shown_default(action)
        if default is None or default is False or default == [] or default == ():
            return text
        if isinstance(default, list | tuple):
            default = " ".join(map(str, default))
        return f"{text} (default: {str(default).replace('%', '%%')})"


def _shown_default(action: argparse.Action) -> Any:
    source = getattr(action, "default_from", None)
    if source is None:
        return getattr(action, "shown_default", None)
    module, _, name = source[0].partition(":")
    cls = getattr(importlib.import_module(module), name)
    field = {f.name: f for f in dataclasses.fields(cls)}[source[1]]
    return None if field.default is dataclasses.MISSING else field.default


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose namespace records the options given (``given``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.option_dests: set[str] = set()  # before __init__ adds --help
        self.option_defaults: dict[str, Any] = {}
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        if action.option_strings and action.dest != argparse.SUPPRESS:
            self.option_dests.add(action.dest)
            if action.default is not argparse.SUPPRESS:
                self.option_defaults[action.dest] = action.shown_default = action.default
                action.default = argparse.SUPPRESS
        return action

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        namespace, extras = super().parse_known_args(args, namespace)
        given = {dest for dest in self.option_dests if hasattr(namespace, dest)}
        namespace.given = frozenset(getattr(namespace, "given", ())) | given
        for dest, value in self.option_defaults.items():
            if dest not in given:
                setattr(namespace, dest, copy.copy(value))
        return namespace, extras


def field_args(p: argparse.ArgumentParser, cls: str, spec: dict[str, tuple]) -> None:
    """``--name`` options for fields of the dataclass ``cls`` ("module:Class").

    ``spec`` maps a field to (type or None for a flag, help text, extra add_argument
    keywords as (name, value) pairs). The option's destination is the field's name and it
    has no default: absent unless given (see ``cli_commands._from_args``)."""
    for name, (kind, text, *extra) in spec.items():
        flag = "--" + name.replace("_", "-")
        if kind is None:  # a boolean flag
            action = p.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=text)
        else:
            keywords = {"type": kind, "default": argparse.SUPPRESS, **dict(extra)}
            action = p.add_argument(flag, help=text, **keywords)
        action.default_from = (cls, name)


__all__ = ["HelpFormatter", "Parser", "field_args"]
