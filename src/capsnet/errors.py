"""User-facing errors: the CLI prints their message as one line and exits non-zero."""

import difflib
from collections.abc import Iterable


class CapsNetError(Exception):
    """Base class for errors caused by bad input (files, names, shapes), not by bugs."""


class DataError(CapsNetError):
    """A dataset file is missing, unreadable or malformed."""


class CheckpointError(CapsNetError):
    """A run directory or checkpoint is missing, corrupt or does not match its config."""


class ConfigError(CapsNetError):
    """An unknown name or an invalid setting."""


class TrainingDiverged(ConfigError):
    """The training loss of an epoch is not finite (inf or nan)."""

    def __init__(self, epoch: int, loss: float):
        super().__init__(f"training diverged at epoch {epoch} (loss {loss})")
        self.epoch, self.loss = epoch, loss


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean X?)`` naming the choice closest to a mistyped ``name`` (difflib's
    ratio ≥ 0.6), or "" when none is that close."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]}?)" if close else ""
