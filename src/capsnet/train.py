"""Compatibility: the trainer now lives in :mod:`capsnet.training`."""

from capsnet.training import *  # noqa: F403
from capsnet.training import __all__  # noqa: F401
