"""A model's weights as safetensors checkpoints (never pickle), its name and config riding
along as metadata.

Checkpoints written by older versions are migrated on read (see ``RENAMED``)."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from capsnet.errors import CapsNetError, CheckpointError, ConfigError
from capsnet.files import atomic_write
from capsnet.models.config import migrate_config
from capsnet.models.registry import create_model, model_config

BEST, LAST = "best.safetensors", "last.safetensors"
log = logging.getLogger(__name__)


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


def load_checkpoint(
    path: str | Path,
    device: str | torch.device = "cpu",
    *,
    overrides: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Rebuild the model stored in a checkpoint file, in eval mode.

    ``overrides`` replace fields of the saved model config before the weights load, if
    the weights keep their names and shapes (see :func:`overridden_model`); each is
    logged once with its saved value."""
    path = Path(path)
    tensors, metadata = _read_safetensors(path)
    tensors = _migrate(tensors)
    if "model" not in metadata or "config" not in metadata:
        raise CheckpointError(f"{path}: not a capsnet checkpoint (no model name/config)")
    name = metadata["model"]
    with _config_errors(path):
        saved = migrate_config(json.loads(metadata["config"]))
        model_config(name, **saved)  # the saved config's own errors name the file
    model = overridden_model(path, name, saved, overrides, tensors) if overrides else None
    if model is None:
        with _config_errors(path):
            model = create_model(name, **saved)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise CheckpointError(
            f"{path}: weights do not match the model config ({' '.join(first[1:2]).strip()})"
        ) from None
    return model.to(device).eval()


@contextlib.contextmanager
def _config_errors(path: Path) -> Iterator[None]:
    """A bad model config in checkpoint ``path`` as a CheckpointError naming the file."""
    try:
        yield
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: invalid model config ({e})") from None
    except CapsNetError as e:
        raise CheckpointError(f"{path}: {e}") from None


def overridden_model(
    path: Path,
    name: str,
    saved: dict[str, Any],
    overrides: Mapping[str, Any],
    tensors: Mapping[str, torch.Tensor],
) -> nn.Module | None:
    """The model ``name`` built from its (valid) ``saved`` config with ``overrides``
    replacing fields, if its weights have the names and shapes of ``tensors``, those of
    checkpoint ``path``; None if the saved config alone does not fit them either (a
    checkpoint that is not the model its config says: the caller's error).

    ConfigError for a field the config lacks, a value of the wrong type or an invalid
    config, and for overrides that change a weight's name or shape, naming the fields
    that do so on their own (else all of them)."""
    try:
        model = create_model(name, **{**saved, **overrides})
    except (ValueError, TypeError) as e:  # the model's own checks beyond its config's
        raise ConfigError(f"model option {_said(overrides)}: {e}") from None
    difference = weight_difference(tensors, model.state_dict(), path.name, "the model")
    if difference is None:
        base = model_config(name, **saved)
        for key, value in overrides.items():
            log.info("model option %s=%r (saved: %r)", key, value, getattr(base, key))
        return model
    if weight_difference(tensors, create_model(name, **saved).state_dict()) is not None:
        return None
    culprits = [key for key in overrides if _changes_weights(name, saved, key, overrides[key])]
    given = _said({key: overrides[key] for key in culprits or overrides})
    raise ConfigError(
        f"model option {given}: changes the weights "
        f"({difference} with the option); only fields that keep every weight's name and "
        "shape can change when a model loads"
    )


def _said(overrides: Mapping[str, Any]) -> str:
    """``NAME=VALUE, …`` as the command line gives them (values as JSON)."""
    return ", ".join(f"{key}={json.dumps(value, default=str)}" for key, value in overrides.items())


def _changes_weights(name: str, saved: dict[str, Any], key: str, value: Any) -> bool:
    """Whether replacing the field ``key`` of the saved config alone changes a weight's
    name or shape (False if that config alone is invalid)."""
    try:
        alone = create_model(name, **{**saved, key: value}).state_dict()
    except (ConfigError, ValueError, TypeError):
        return False
    return weight_difference(create_model(name, **saved).state_dict(), alone) is not None


def weight_difference(
    ours: Mapping[str, torch.Tensor],
    theirs: Mapping[str, torch.Tensor],
    our_name: str = "one",
    their_name: str = "the other",
) -> str | None:
    """The first weight (in ``theirs``'s order, then ``ours``'s) that one side lacks or the
    two hold in different shapes, said in words; None if names and shapes all agree."""
    for key in [*theirs, *(k for k in ours if k not in theirs)]:
        if key not in ours:
            return f"{key} is not in {our_name}"
        if key not in theirs:
            return f"{key} is not in {their_name}"
        if ours[key].shape != theirs[key].shape:
            return (
                f"{key} is {tuple(ours[key].shape)} in {our_name}, "
                f"{tuple(theirs[key].shape)} in {their_name}"
            )
    return None


def weights_for(path: str | Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights of checkpoint ``path`` if they fit ``model`` (the same names and
    shapes), ready for ``model.load_state_dict``; CheckpointError naming the file if
    they are another model's."""
    path = Path(path)
    saved = load_checkpoint(path).state_dict()
    if difference := weight_difference(saved, model.state_dict(), "the file", "the run's model"):
        raise CheckpointError(f"{path}: weights of another model ({difference})")
    return saved
