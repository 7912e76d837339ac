"""What the trainer needs of a progress display; drawing one is the CLI's business."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class Progress(Protocol):
    """What the trainer needs of a progress bar (``tqdm`` fits)."""

    def update(self, n: int = 1) -> Any: ...
    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, **kwargs: Any) -> Any: ...
    def close(self) -> Any: ...


ProgressFactory = Callable[..., Progress]  # called as factory(total=..., desc=...)


class NoProgress:
    """A progress display that shows nothing (the library's default)."""

    def __init__(self, **_: Any) -> None: ...
    def update(self, n: int = 1) -> None: ...
    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, **kwargs: Any) -> None: ...
    def close(self) -> None: ...


__all__ = ["NoProgress", "Progress", "ProgressFactory"]
