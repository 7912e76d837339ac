"""Where and how tensors run: device choice, mixed precision, and torchrun's process group."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from capsnet.errors import ConfigError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
AUTO = "auto"  # resolved by resolve_precision before any work
PRECISION_CHOICES = (*PRECISIONS, AUTO)


def tracing() -> bool:
    """Whether ``torch.jit.trace`` or ``torch.onnx.export`` is recording this call: paths
    with a Python-side shortcut (a cache, a loop over blocks) must then run the one plain,
    traceable way."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16); without it
    bf16 autocast was measured 20× slower than fp32 on these machines."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` → ``bf16`` where the device has native bf16 (a CUDA GPU that supports it, a
    CPU with AVX512-BF16/AMX), else ``fp32``; other precisions unchanged."""
    if precision != AUTO:
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA if available, else CPU; ``cuda`` fails clearly without a GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device '{name}'") from None
    if device.type not in ("cpu", "cuda"):  # e.g. mps, xpu: capsnet runs on neither
        raise ConfigError(f"unsupported device '{name}'; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} requested but CUDA is not available")
    return device


def check_precision(precision: str) -> None:
    if precision not in PRECISION_CHOICES:
        choices = ", ".join(PRECISION_CHOICES)
        raise ConfigError(f"unknown precision '{precision}'; choose from: {choices}")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for bf16/fp16, a no-op for fp32. Routing still accumulates in fp32."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A loss scaler for fp16 (gradients would underflow otherwise); disabled otherwise."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def distributed_from_env() -> Distributed:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK environment variables."""
    env = os.environ
    return Distributed(
        int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))
    )


@contextlib.contextmanager
def process_group(device: torch.device, info: Distributed) -> Iterator[torch.device]:
    """Join torchrun's process group (NCCL on CUDA, gloo on CPU) for the duration.

    Yields the device this rank uses (``cuda:LOCAL_RANK`` on GPUs), to which the NCCL group
    is bound (the device of its barrier, which PyTorch otherwise guesses with a warning).
    """
    if not info.enabled:
        yield device
        return
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    try:
        yield device
    finally:
        dist.destroy_process_group()
