"""Facts about where and with what a run happened, recorded in every run directory."""

from __future__ import annotations

import datetime
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from capsnet import __version__
from capsnet.runtime import cpu_has_native_bf16


def git_commit() -> str | None:
    """The commit of the capsnet checkout, if it is one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--verify", "-q", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_features() -> str:
    """The vector instructions PyTorch uses here (``AVX512``, ``AVX2``, …), plus ``+bf16``
    when the CPU computes bfloat16 natively: the two change CPU speeds several-fold."""
    features = torch.backends.cpu.get_cpu_capability()
    return features + ("+bf16" if cpu_has_native_bf16() else "")


def environment() -> dict[str, Any]:
    """Where and with what a run happened: recorded in every run directory."""
    return {
        "capsnet_version": __version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "commit": git_commit(),
        "device_name": device_name(),
        "cpu_features": cpu_features(),
        "cpu_threads": torch.get_num_threads(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv,
    }


__all__ = ["cpu_features", "device_name", "environment", "git_commit"]
