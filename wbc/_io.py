"""Files that survive a kill: whole-file writes, and locks that die with their process.

A whole-file write leaves the previous complete file or the new one, never a part:
files are written beside their final name, synced, then renamed into place (Lightning's own writer stages
through the system temp folder, which is not atomic when that folder is on another file system).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` MLflow store URI (``sqlite:///rel.db`` or ``sqlite:////abs.db``); None
    for any other store."""
    prefix = "sqlite:///"
    return Path(uri[len(prefix):]) if uri.startswith(prefix) else None


def store_not_created(uri: str) -> bool:
    """True for a SQLite store URI whose database file is not there yet. Readers check it first: MLflow would make an
    empty database (and an experiment) on first contact."""
    database = sqlite_file(uri)
    return database is not None and not database.exists()


def atomic_write_bytes(path: str | os.PathLike, write) -> None:
    """Call ``write(handle)`` on a scratch file beside ``path``, then move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` as a whole-file write."""
    import torch

    atomic_write_bytes(path, lambda handle: torch.save(obj, handle))


@contextlib.contextmanager
def held_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created, with this process's id in it) until the block ends; the
    operating system drops it when the process dies, however it dies. Raises :class:`BlockingIOError` when
    another live process holds it."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def lock_holder(path: str | os.PathLike) -> int | None:
    """The id of the live process that holds :func:`held_lock` on ``path`` (0 when it cannot be read), or None."""
    import fcntl

    try:
        handle = open(path, "r")
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = handle.read().strip()
            return int(text) if text.isdigit() else 0
        fcntl.flock(handle, fcntl.LOCK_UN)
        return None
