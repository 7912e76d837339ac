"""The types of the ``capsnet`` command line's arguments: each turns the text given into
its value or raises ``argparse.ArgumentTypeError`` with what is wrong (argparse prints it
as a one-line usage error, exit status 2)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def positive(text: str) -> int:
    value = integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value


def non_negative(text: str) -> int:
    value = integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be ≥ 0, got {value}")
    return value


def weight(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number ≥ 0, got {text}")
    return value


def path(text: str) -> Path:
    if not text:
        raise argparse.ArgumentTypeError("an empty path")
    return Path(text)


def seed(text: str) -> int:
    value = integer(text)
    if not 0 <= value < 2**64:
        raise argparse.ArgumentTypeError(f"must be from 0 to 2**64 - 1, got {value}")
    return value


def name_value(text: str) -> tuple[str, object]:
    """NAME=VALUE as (NAME, VALUE read as JSON, or the text itself where it is not JSON)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got '{text}'")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def strengths(text: str) -> tuple[str, tuple[float, ...]]:
    """NAME=S,S,... as (NAME, the strengths as floats)."""
    name, sep, values = text.partition("=")
    try:
        if not name or not sep:
            raise ValueError
        return name, tuple(float(v) for v in values.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=S,S,..., got '{text}'") from None


__all__ = [
    "integer",
    "name_value",
    "non_negative",
    "path",
    "positive",
    "seed",
    "strengths",
    "weight",
]
