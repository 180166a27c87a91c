"""Durable file helpers shared by the model cache, the converters and the gallery."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks. Raises ``OSError`` as ``open`` does."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(folder: str | Path) -> None:
    """fsync a folder so that a rename inside it survives a power cut. Raises ``OSError`` when the folder cannot be
    opened or synced (the caller's durable write has then not been confirmed)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder, fsync, ``os.replace``, fsync the folder.

    A crash at any point leaves either the old file or the new one, never a half-written file. Raises ``OSError``
    (callers turn it into a ``FacegateError`` naming the file).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def folder_lock(folder: str | Path, name: str):
    """An exclusive advisory lock (``fcntl.flock``) on ``folder/name`` between processes, held for the ``with``
    block. The lock file is empty and created 0600; closing the descriptor releases the lock, even on SIGKILL."""
    import fcntl

    fd = os.open(Path(folder) / name, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
