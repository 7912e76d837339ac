"""Native (C++) kernels, compiled on first use.

``csrc/em_routing.cpp`` (EM routing of convolutional matrix capsules, forward and backward;
the maths of one routing problem in ``csrc/em_problem.h``) is built with
:func:`torch.utils.cpp_extension.load` the first time it is needed, into PyTorch's extension
cache (``TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``), under a name that
changes with the sources and with this CPU's instruction sets (it is built with
``-march=native``). It needs a C++ compiler and ninja; where the build fails, a warning
says why once and the callers take their pure PyTorch path, which gives the same numbers.
``CAPSNET_NATIVE=0`` in the environment turns the native path off.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
from pathlib import Path
from types import ModuleType

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "em_routing.cpp"
FLAGS = ["-O3", "-march=native", "-ffast-math", "-fno-finite-math-only"]


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
    if shutil.which("ninja") is None:
        try:
            import ninja
        except ImportError:
            return
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


@functools.cache
def em_kernels() -> ModuleType | None:
    """The built EM routing kernels (``em_forward``, ``em_backward``), or None if the build
    failed (logged once)."""
    from torch.utils.cpp_extension import load

    headers = sorted(SOURCE.parent.glob("*.h"))  # what SOURCE includes: in the key too
    source = b"".join(path.read_bytes() for path in (SOURCE, *headers))
    key = hashlib.sha256(source + " ".join(FLAGS).encode() + _cpu_key().encode())
    name = f"capsnet_em_{key.hexdigest()[:16]}"
    _find_ninja()
    log.info("loading the native EM routing kernel %s (built on first use: about a minute)", name)
    try:
        return load(name, [str(SOURCE)], extra_cflags=FLAGS, verbose=False)
    except Exception as e:  # no compiler, no ninja, a failed build: the PyTorch path instead
        lines = str(e).splitlines() or [type(e).__name__]
        why = next((x for x in lines if "error:" in x), lines[0]).strip()  # the compiler's
        log.warning("native EM routing unavailable, using PyTorch's (slower): %s", why[:300])
        log.debug("the build's output:\n%s", e)
        return None


def em_native_applies(*tensors: torch.Tensor) -> bool:
    """Whether the native EM kernel can take these tensors: on the CPU, not being traced or
    compiled, and native kernels enabled (it is built here if need be)."""
    from capsnet.runtime import tracing

    if not enabled() or tracing() or torch.compiler.is_compiling():
        return False
    if any(t.device.type != "cpu" for t in tensors):
        return False
    return em_kernels() is not None
