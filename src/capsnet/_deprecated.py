"""Old names kept for one release, each warning with a DeprecationWarning that names the new
one; nothing in capsnet uses them.

* Module paths of capsnet 0.1 before its layers were split into packages (:data:`MOVED`):
  importing one (``import capsnet.routing``, ``from capsnet.predict import predict``) gives
  a module whose every name is the new module's (the same objects).
* Names that moved or were renamed: a module's old global through :func:`module_getattr`,
  an old attribute of a class (:data:`RENAMED`) through :func:`renamed_attribute`.
* Options that became keyword-only in 0.2 (:func:`keyword_only`): a call that still passes
  them by position works.
"""

from __future__ import annotations

import functools
import importlib
import importlib.abc
import importlib.machinery
import inspect
import sys
import types
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

# old module → the module(s) now holding its names (the first that has a name wins)
MOVED: dict[str, tuple[str, ...]] = {
    **{
        f"capsnet.{m}": (f"capsnet.nn.{m}",)
        for m in ("dftconv", "em_conv", "layers", "losses", "native", "patchconv")
    },
    "capsnet.nn.em_routing": ("capsnet.nn.em",),  # renamed in 0.2: em_routing is the function
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
# Old module paths that no longer import: ``capsnet.em_routing`` is the function (``from
# capsnet import em_routing``); a module of that name would replace it as the package's
# attribute once imported. Importing one raises ModuleNotFoundError with this message.
GONE: dict[str, str] = {
    "capsnet.em_routing": "capsnet.em_routing is the function em_routing, not a module; "
    "the EM routing maths are in capsnet.nn.em",
}

# old qualified name → new one, of every class attribute renamed in 0.2 (tests/test_deprecated.py)
RENAMED: dict[str, str] = {
    "capsnet.models.capsnet.CapsNetOutput.lengths": "capsnet.models.capsnet.CapsNetOutput.scores",
    "capsnet.models.capsnet.CapsNetOutput.routing_weights": (
        "capsnet.models.capsnet.CapsNetOutput.coupling"
    ),
    "capsnet.models.capsnet.CapsuleModel.routing_grid": (
        "capsnet.models.capsnet.CapsuleModel.coupling_grid"
    ),
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
        if fullname in GONE:
            raise ModuleNotFoundError(GONE[fullname], name=fullname)
        targets = MOVED.get(fullname)
        if targets is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Alias(targets))


def warn(old: str, new: str, stacklevel: int = 3) -> None:
    """A DeprecationWarning: ``old`` goes in the next release, ``new`` replaces it
    (``stacklevel`` 3: the line calling the function that calls this)."""
    warnings.warn(
        f"{old} is deprecated and will be removed in the next release; use {new}",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


def module_getattr(module: str, old: Mapping[str, tuple[str, Callable[[], Any]]]):
    """A module ``__getattr__`` (PEP 562) lending ``module`` its old names: ``old`` maps each
    to (the new path, a function giving the object); reading one warns. Other names:
    AttributeError."""

    def getattr_(name: str) -> Any:
        if name not in old:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        new, get = old[name]
        warn(f"{module}.{name}", new)
        return get()

    return getattr_


def renamed_attribute(old: str) -> property:
    """A read-only property for the old attribute ``old`` (a key of :data:`RENAMED`) of a
    class: it warns and returns the new attribute."""
    new = RENAMED[old].rpartition(".")[2]

    def get(self: Any) -> Any:
        warn(old, RENAMED[old])
        return getattr(self, new)

    return property(get, doc=f"Deprecated: {new}.")


def keyword_only(keep: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator for a function whose parameters after the first ``keep`` positional ones
    (``self`` counts) became keyword-only: a call with more positional arguments warns and
    passes the extra ones as the keyword-only parameters, in their order of definition (one
    with more of them than there are such parameters, or naming one of those it gives by
    position, is passed on as it is, to fail with Python's TypeError)."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        kinds = inspect.signature(fn).parameters.values()
        names = [p.name for p in kinds if p.kind is inspect.Parameter.KEYWORD_ONLY]

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            if len(args) > keep:
                extra = args[keep:]
                if len(extra) > len(names) or set(names[: len(extra)]) & set(kwargs):
                    return fn(*args, **kwargs)  # the TypeError the call deserves
                given = ", ".join(names[: len(extra)])
                warnings.warn(
                    f"{fn.__qualname__}: passing {given} by position is deprecated and will "
                    "be an error in the next release; pass them by keyword",
                    DeprecationWarning,
                    stacklevel=2,
                )
                kwargs |= dict(zip(names, extra, strict=False))
                args = args[:keep]
            return fn(*args, **kwargs)

        return call

    return wrap


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
