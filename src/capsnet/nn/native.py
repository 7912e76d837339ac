"""Native (C++) kernels, built once per Python environment.

``csrc/em_routing.cpp`` (EM routing of convolutional matrix capsules, forward and backward;
the maths of one routing problem in ``csrc/em_problem.h``) and ``csrc/dynamic_routing.cpp``
(votes and dynamic routing of fully connected capsules, forward and backward) are each built
with :func:`torch.utils.cpp_extension.load` the first time they are needed (or ahead of that:
``capsnet build-kernels`` loads each of :data:`KERNELS`), in a directory of
:func:`kernels_dir` named by a hash of what the build depends on: the sources, the compiler
flags, this CPU's instruction sets (it is built with ``-march=native``), the PyTorch and
Python versions and the sources' path. Every later process of the environment finds that
build and loads it; an edited source, another PyTorch or another CPU builds anew beside it.
A warning says when a build starts (it takes about a minute); loading a built kernel says
nothing. It needs a C++ compiler and ninja; where the build fails, a warning says why once
and the callers take their pure PyTorch path, which gives the same numbers.
``CAPSNET_NATIVE=0`` in the environment turns the native path off.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import platform
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import torch

from capsnet.nn.em import MASS_EPS, MIN_VAR, STD_EPS
from capsnet.runtime import tracing

try:
    import ninja
except ImportError:  # no ninja package: PyTorch's builder needs one on PATH
    ninja = None
try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "em_routing.cpp"
DYNAMIC_SOURCE = SOURCE.parent / "dynamic_routing.cpp"
# EM routing's constants, from its Python maths (capsnet.nn.em) into csrc/em_problem.h as
# compile-time definitions: one source of truth, and constants the compiler folds as before
EM_CONSTANTS = [
    f"-DCAPSNET_EM_MIN_VAR={MIN_VAR!r}",
    f"-DCAPSNET_EM_MASS_EPS={MASS_EPS!r}",
    f"-DCAPSNET_EM_STD_EPS={STD_EPS!r}",
]
FLAGS = ["-O3", "-march=native", "-ffast-math", "-fno-finite-math-only", *EM_CONSTANTS]
# at::parallel_for is OpenMP in PyTorch's CPU builds and runs serially in code compiled
# without it; with it, an extension shares PyTorch's libgomp and its thread count
OPENMP = ["-fopenmp"]


def enabled() -> bool:
    """Whether ``CAPSNET_NATIVE`` allows native kernels (unset or anything but ``0``)."""
    return os.environ.get("CAPSNET_NATIVE", "1") != "0"


def _cpu_key() -> str:
    """This CPU's instruction-set flags (Linux), else its architecture: a build's key."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.machine()


def _find_ninja() -> None:
    """Put the ``ninja`` Python package's binary on PATH if no ninja is there (a virtual
    environment used without being activated): PyTorch's builder looks for it on PATH."""
    if shutil.which("ninja") is None and ninja is not None:
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def _build_name(stem: str, source: Path, text: bytes, flags: list[str]) -> str:
    """``stem`` and a hash of what the build depends on: the sources' ``text``, the compiler
    ``flags``, this CPU's instruction sets, the versions of PyTorch and Python the module is
    built against, and the sources' path. With the path in it, two checkouts (or a checkout
    and an installed copy) build in directories of their own instead of taking turns to
    rebuild one: PyTorch's build files name the source by its path."""
    parts = (text, " ".join(flags), _cpu_key(), torch.__version__, sys.version, str(source))
    key = hashlib.sha256(b"\0".join(p if isinstance(p, bytes) else p.encode() for p in parts))
    return f"{stem}_{key.hexdigest()[:16]}"


def kernels_dir() -> Path:
    """Where the kernels are built: ``var/cache/capsnet-kernels`` in this Python environment
    (``sys.prefix``, e.g. the virtual environment), or ``~/.cache/capsnet/kernels`` where
    that cannot be written (the system's Python run by a user)."""
    prefix = Path(sys.prefix)
    if os.access(prefix, os.W_OK):
        return prefix / "var" / "cache" / "capsnet-kernels"
    return Path.home() / ".cache" / "capsnet" / "kernels"


def _built(directory: Path, name: str) -> bool:
    """Whether ``directory`` holds the built module ``name`` (``name.so``; its name hashes its
    sources, so a module of that name is up to date)."""
    return any(directory.glob(f"{name}.*"))


@contextlib.contextmanager
def _one_builder(directory: Path) -> Iterator[None]:
    """Hold ``directory/capsnet.lock`` (a blocking ``flock``, which the OS lets go of when its
    holder dies) while a kernel is built or loaded there, so one process builds and the others
    wait. PyTorch's builder guards the directory with a ``lock`` file of its own, which a
    builder killed mid-build leaves behind and on which every later build would wait forever;
    whoever holds this lock knows no other build is under way, so such a file is stale and is
    removed. Where ``fcntl`` is missing (Windows) nothing is locked or removed."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "capsnet.lock", "a") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes or the process ends
            if (directory / "lock").exists():
                log.warning("removing %s, left by a build that was stopped", directory / "lock")
                (directory / "lock").unlink()
        yield


def _build(source: Path, stem: str, what: str) -> ModuleType | None:
    """The extension of ``source`` loaded from :func:`kernels_dir`, built there first if it is
    not (with a warning naming ``what`` and where), with OpenMP, or serial where the compiler
    has none (Apple's clang); None if neither builds, with one warning naming ``what`` and
    the compiler's first error."""
    from torch.utils.cpp_extension import load

    headers = sorted(source.parent.glob("*.h"))  # what a source may include: in the key too
    text = b"".join(path.read_bytes() for path in (source, *headers))
    _find_ninja()
    failure: Exception | None = None
    for openmp in (OPENMP, []):
        flags = FLAGS + openmp
        name = _build_name(stem, source, text, flags)
        directory = kernels_dir() / name
        if not _built(directory, name):
            log.warning("building the native %s kernel in %s (about a minute)", what, directory)
        try:
            with _one_builder(directory):
                return load(
                    name,
                    [str(source)],
                    extra_cflags=flags,
                    extra_ldflags=openmp,
                    build_directory=str(directory),
                    verbose=False,
                )
        except Exception as e:  # no compiler, no ninja, no OpenMP, a failed build
            failure = failure or e
    lines = str(failure).splitlines() or [type(failure).__name__]
    why = next((x for x in lines if "error:" in x), lines[0]).strip()  # the compiler's
    log.warning("native %s unavailable, using PyTorch's (slower): %s", what, why[:300])
    log.debug("the build's output:\n%s", failure)
    return None


@functools.cache
def em_kernels() -> ModuleType | None:
    """The built EM routing kernels (``em_forward``, ``em_backward``), or None if the build
    failed (logged once)."""
    return _build(SOURCE, "capsnet_em", "EM routing")


@functools.cache
def dynamic_kernels() -> ModuleType | None:
    """The built dynamic routing kernels (``dynamic_forward`` for inference;
    ``dynamic_forward_train`` and ``dynamic_backward`` for training), or None if the build
    failed (logged once)."""
    return _build(DYNAMIC_SOURCE, "capsnet_dynamic", "dynamic routing")


KERNELS: dict[str, Callable[[], ModuleType | None]] = {
    "EM routing": em_kernels,
    "dynamic routing": dynamic_kernels,
}


def _applies(kernels: Callable[[], ModuleType | None], tensors: tuple[torch.Tensor, ...]) -> bool:
    if not enabled() or tracing() or torch.compiler.is_compiling():
        return False
    if any(t.device.type != "cpu" for t in tensors):
        return False
    return kernels() is not None


def em_native_applies(*tensors: torch.Tensor) -> bool:
    """Whether the native EM kernel can take these tensors: on the CPU, not being traced or
    compiled, and native kernels enabled (it is built here if need be)."""
    return _applies(em_kernels, tensors)


def dynamic_native_applies(u: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the native dynamic routing kernel can take children ``u`` and ``weight``
    (I, J, D, K): as :func:`em_native_applies`, with ``weight`` float32 or float64, ``u`` of
    a floating dtype (converted to the weight's), and at most 64 parents J and child
    components K (the kernel's fixed buffers)."""
    if weight.dtype not in (torch.float32, torch.float64) or not u.is_floating_point():
        return False
    if weight.dim() != 4 or weight.shape[1] > 64 or weight.shape[3] > 64:
        return False
    return _applies(dynamic_kernels, (u, weight))
