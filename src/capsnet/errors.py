"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class CapsNetError(Exception):
    """Base class for errors caused by bad input (files, names, shapes), not by bugs."""


class DataError(CapsNetError):
    """A dataset file is missing, unreadable or malformed."""


class CheckpointError(CapsNetError):
    """A run directory or checkpoint is missing, corrupt or does not match its config."""


class ConfigError(CapsNetError):
    """An unknown name or an invalid setting."""
