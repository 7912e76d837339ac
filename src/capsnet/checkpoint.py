"""Files of a run: atomic writes, JSON, and safetensors checkpoints (never pickle).

Checkpoints written by older versions are migrated on read (see ``RENAMED``)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from capsnet.errors import CapsNetError, CheckpointError, ConfigError
from capsnet.models import create_model
from capsnet.models.config import migrate_config

BEST, LAST = "best.safetensors", "last.safetensors"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``, so readers never see half a file.

    The file gets the permissions of a plain ``open(path, "w")`` (0666 less the umask),
    not the 0600 of a temporary file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def check_writable_dir(directory: Path) -> None:
    """ConfigError, before any work, unless ``directory`` exists or can be made and a file
    can be written in it. Leaves nothing behind (directories it made are removed)."""
    made = [p for p in (directory, *directory.parents) if not p.exists()]  # deepest first
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".capsnet-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"{directory}: cannot write there ({e.strerror or e})") from None
    finally:
        for p in made:
            if p.is_dir() and not any(p.iterdir()):
                p.rmdir()


@contextlib.contextmanager
def exclusive_lock(directory: Path, name: str, holder: str) -> Iterator[None]:
    """Hold an exclusive, non-blocking ``flock`` on ``directory/name`` (made with the
    directory if need be): CheckpointError "``directory``: ``holder`` …" at once if another
    process holds it. The lock ends with the process at the latest; on leaving, the file is
    removed if it is all the directory holds, and the directory too if this made it. Where
    ``fcntl`` is missing (Windows) nothing is locked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    made = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / name, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise CheckpointError(
                f"{directory}: {holder} (it holds {name}); wait for it to end or stop it"
            ) from None
        try:
            yield
        finally:
            if [p.name for p in directory.iterdir()] == [name]:
                (directory / name).unlink()
                if made:
                    directory.rmdir()


def check_new_file(path: Path, overwrite: bool = False) -> None:
    """ConfigError, before any work, unless ``path`` can be written: its directory exists
    and is writable, and the file does not exist (or ``overwrite``)."""
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory")
    if path.exists() and not overwrite:
        raise ConfigError(f"{path}: exists; use --overwrite or another name")
    if not path.parent.is_dir():
        what = "is not a directory" if path.parent.exists() else "does not exist"
        raise ConfigError(f"{path}: {path.parent} {what}")
    check_writable_dir(path.parent)


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n"))


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


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
