"""A model's weights as safetensors checkpoints (never pickle), its name and config riding
along as metadata.

Checkpoints written by older versions are migrated on read (see ``RENAMED``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from capsnet.errors import CapsNetError, CheckpointError
from capsnet.files import atomic_write
from capsnet.models import create_model
from capsnet.models.config import migrate_config

BEST, LAST = "best.safetensors", "last.safetensors"


def save_checkpoint(path: Path, model: nn.Module, model_name: str, **meta: Any) -> None:
    """Weights as safetensors; the model name and config ride along as metadata."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "model": model_name,
        "config": json.dumps(model.config.to_dict()),
        **{k: json.dumps(v) for k, v in meta.items()},
    }
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata=metadata))


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a safetensors file; CheckpointError if it cannot be read
    or a floating-point tensor holds NaN or infinity (the weights of a diverged model)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{path}: {name} holds NaN or infinite values")
    return tensors, metadata


# Renamed weights: old name (its last dotted part) → new name.
RENAMED = {"log_prior": "coupling_bias"}  # self-attention routing's bias after the softmax


def _migrate(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    def new(key: str) -> str:
        head, _, last = key.rpartition(".")
        return f"{head}.{RENAMED[last]}" if last in RENAMED else key

    return {new(k): v for k, v in tensors.items()}


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model stored in a checkpoint file, in eval mode."""
    path = Path(path)
    tensors, metadata = _read_safetensors(path)
    tensors = _migrate(tensors)
    if "model" not in metadata or "config" not in metadata:
        raise CheckpointError(f"{path}: not a capsnet checkpoint (no model name/config)")
    try:
        model = create_model(metadata["model"], **migrate_config(json.loads(metadata["config"])))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: invalid model config ({e})") from None
    except CapsNetError as e:
        raise CheckpointError(f"{path}: {e}") from None
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise CheckpointError(
            f"{path}: weights do not match the model config ({' '.join(first[1:2]).strip()})"
        ) from None
    return model.to(device).eval()


def weights_for(path: str | Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights of checkpoint ``path`` if they fit ``model`` (the same names and
    shapes), ready for ``model.load_state_dict``; CheckpointError naming the file if
    they are another model's."""
    path = Path(path)
    saved, own = load_checkpoint(path).state_dict(), model.state_dict()
    for name in [*own, *(name for name in saved if name not in own)]:  # the model's order
        if name not in saved or name not in own:
            where = "missing from the file" if name not in saved else "not in the run's model"
            raise CheckpointError(f"{path}: weights of another model ({name} {where})")
        if saved[name].shape != own[name].shape:
            raise CheckpointError(
                f"{path}: weights of another model ({name} is {tuple(saved[name].shape)}, "
                f"the run's model has {tuple(own[name].shape)})"
            )
    return saved
