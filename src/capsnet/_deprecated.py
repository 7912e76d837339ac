"""The module paths of capsnet 0.1 before its layers were split into packages, kept for one
release: importing one (``import capsnet.routing``, ``from capsnet.predict import predict``)
warns with a DeprecationWarning naming the new path and gives a module whose every name is
the new module's (the same objects). Nothing in capsnet imports them.

Names that moved or were renamed inside a module warn the same way: :func:`renamed` wraps a
function, :func:`module_getattr` gives a module the ``__getattr__`` that lends its old
names.
"""

from __future__ import annotations

import functools
import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

# old module → the module(s) now holding its names (the first that has a name wins)
MOVED: dict[str, tuple[str, ...]] = {
    **{
        f"capsnet.{m}": (f"capsnet.nn.{m}",)
        for m in ("dftconv", "em_conv", "em_routing", "layers", "losses", "native", "patchconv")
    },
    "capsnet.routing": ("capsnet.nn.routing",),
    **{
        f"capsnet.{m}": (f"capsnet.tools.{m}",)
        for m in ("bench", "experiments", "export", "generalisation", "predict")
    },
    "capsnet.robustness": (
        "capsnet.tools.robustness",
        "capsnet.tools.perturbations",
        "capsnet.data.geometry",  # elastic
    ),
    "capsnet.viz": ("capsnet.tools.viz", "capsnet.models.figures"),
    "capsnet.explore": ("capsnet.tools.explore",),
    "capsnet.explore.app": ("capsnet.tools.explore.app",),
    "capsnet.explore.server": ("capsnet.tools.explore.server",),
    "capsnet.metrics": ("capsnet.training.metrics",),
    "capsnet.tensorboard": ("capsnet.training.tensorboard",),
    "capsnet.pretrained": ("capsnet.training.pretrained", "capsnet.training.run"),
    "capsnet.checkpoint": ("capsnet.models.checkpoint", "capsnet.files"),
    "capsnet.cli_argparse": ("capsnet.cli.parser",),
    "capsnet.cli_commands": ("capsnet.cli.commands",),
    "capsnet.cli_progress": ("capsnet.cli.progress",),
    "capsnet.cli_resume": ("capsnet.cli.resume",),
}
_DUNDERS = ("__name__", "__spec__", "__loader__", "__file__", "__package__", "__path__")


class _Alias(importlib.abc.Loader):
    """Loads an old path as a new module that lends it every name of the modules it moved to."""

    def __init__(self, targets: Sequence[str]) -> None:
        self.targets = tuple(targets)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return types.ModuleType(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        warnings.warn(
            f"{module.__name__} is deprecated and will be removed in the next release; "
            f"import {self.targets[0]}",
            DeprecationWarning,
            stacklevel=2,  # the import statement (warnings skips the import system's frames)
        )
        new = [importlib.import_module(t) for t in self.targets]
        for m in reversed(new):  # the first module's names win
            names = {k: v for k, v in vars(m).items() if k not in _DUNDERS}
            module.__dict__.update(names)
        module.__doc__ = new[0].__doc__
        if hasattr(new[0], "__path__"):  # a package: its old submodules' paths resolve too
            module.__path__ = []

        def forward(name: str) -> object:
            for m in new:
                if hasattr(m, name):
                    return getattr(m, name)
            raise AttributeError(f"module {module.__name__!r} has no attribute {name!r}")

        module.__getattr__ = forward  # type: ignore[attr-defined]


class _Finder(importlib.abc.MetaPathFinder):
    """Finds the old paths (and only those) before the ordinary finders do."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        targets = MOVED.get(fullname)
        if targets is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Alias(targets))


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def warn(old: str, new: str, stacklevel: int = 3) -> None:
    """A DeprecationWarning: ``old`` goes in the next release, ``new`` replaces it
    (``stacklevel`` 3: the line calling the function that calls this)."""
    warnings.warn(
        f"{old} is deprecated and will be removed in the next release; use {new}",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


def renamed(func: F, old: str, new: str) -> F:
    """``func`` under its old name ``old``: each call warns (naming ``new``), then calls it."""

    @functools.wraps(func)
    def alias(*args: Any, **kwargs: Any) -> Any:
        warn(old, new)
        return func(*args, **kwargs)

    alias.__doc__ = f"Deprecated: use {new}."
    return alias  # type: ignore[return-value]


def module_getattr(module: str, old: Mapping[str, tuple[str, Callable[[], Any]]]):
    """A module ``__getattr__`` lending ``module`` its old names: ``old`` maps each to (the
    new path, a function giving the object); reading one warns. Other names: AttributeError."""

    def getattr_(name: str) -> Any:
        if name not in old:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        new, get = old[name]
        warn(f"{module}.{name}", new)
        return get()

    return getattr_
