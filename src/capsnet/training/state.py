"""The training state a run resumes from: optimiser and RNG state, pickle-free."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from capsnet.errors import CheckpointError
from capsnet.files import atomic_write, read_json, write_json

STATE_TENSORS, STATE_JSON = "train_state.safetensors", "train_state.json"
_META = {  # what train_state.json holds: key → its JSON type
    "epoch": int,
    "history": list,
    "best_val": (int, float),
    "best_epoch": int,
    "param_groups": list,
    "optim_scalars": dict,
}


def save_train_state(
    run: Path, optim: torch.optim.Optimizer, gen: torch.Generator, **meta: Any
) -> None:
    """Optimiser tensors and RNG states as safetensors; scalars and ``meta`` as JSON."""
    sd = optim.state_dict()
    tensors = {"rng.generator": gen.get_state(), "rng.torch": torch.get_rng_state()}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, state in sd["state"].items():
        for k, v in state.items():
            if isinstance(v, Tensor):
                tensors[f"optim.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[k] = v
    atomic_write(run / STATE_TENSORS, lambda p: save_file(tensors, str(p)))
    write_json(
        run / STATE_JSON,
        {**meta, "param_groups": sd["param_groups"], "optim_scalars": scalars},
    )


def read_state_meta(run: Path) -> dict[str, Any]:
    """train_state.json of ``run``: the epoch reached, history, selection and optimiser
    scalars; CheckpointError naming the file unless it has that shape."""
    path = run / STATE_JSON
    meta = read_json(path)
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: not a training state (an object expected)")
    for key, kind in _META.items():
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise CheckpointError(f"{path}: not a training state ('{key}' missing or wrong)")
    history = meta["history"]
    if len(history) != meta["epoch"] or not all(isinstance(row, dict) for row in history):
        raise CheckpointError(f"{path}: epoch {meta['epoch']} does not match its history")
    return meta


def load_train_state(
    run: Path, optim: torch.optim.Optimizer, gen: torch.Generator
) -> dict[str, Any]:
    """Restore what :func:`save_train_state` saved; returns its ``meta``."""
    meta = read_state_meta(run)
    try:
        tensors = load_file(str(run / STATE_TENSORS))
    except Exception as e:  # safetensors raises several types for a corrupt file
        raise CheckpointError(f"{run / STATE_TENSORS}: unreadable ({e})") from None
    state: dict[int, dict[str, Any]] = {}
    for key, t in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = t
    for pid, scalars in meta["optim_scalars"].items():
        state.setdefault(int(pid), {}).update(scalars)
    try:
        optim.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        gen.set_state(tensors["rng.generator"])
        torch.set_rng_state(tensors["rng.torch"])
    except (KeyError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{run}: training state does not match the model ({e})") from None
    _check_shapes(run / STATE_TENSORS, optim)
    return meta


def _check_shapes(path: Path, optim: torch.optim.Optimizer) -> None:
    """CheckpointError unless every per-parameter tensor of the restored optimiser state
    (Adam's moments) has its parameter's shape: not another model's state."""
    for param, state in optim.state.items():
        for name, value in state.items():
            if isinstance(value, Tensor) and value.dim() and value.shape != param.shape:
                raise CheckpointError(
                    f"{path}: another model's training state ({name} of shape "
                    f"{tuple(value.shape)} for a parameter of shape {tuple(param.shape)})"
                )


__all__ = ["STATE_JSON", "STATE_TENSORS", "load_train_state", "read_state_meta", "save_train_state"]
