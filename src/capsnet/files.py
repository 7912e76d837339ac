"""Writing files safely: atomic writes, JSON, writability checks and a directory lock."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from capsnet.errors import CheckpointError, ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX (Windows): nothing is locked
    fcntl = None


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
    if fcntl is None:  # pragma: no cover - not POSIX
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
