"""File helpers shared by every part of facegate: durable writes, private files and folders, bounded reads.

* Durable: ``write_atomic`` (temporary file, fsync, rename, folder fsync), ``fsync_dir``, ``folder_lock``.
* Private: every file or folder facegate creates that holds a key, a template, an audit record, a replay cache or
  an evaluation embedding is made with ``private_dir`` / ``open_private`` / ``create_new_file``: 0700 folders and
  0600 files *whatever the umask* (``mkdir`` and ``open`` filter their mode through the umask, so each new one is
  ``chmod``-ed to the exact mode; a umask of 000 must not make a state folder world-writable, one of 0277 must not
  make a key unreadable by its owner).
* Bounded: input files are opened with ``open_regular`` (devices, FIFOs, sockets and folders are refused *before*
  any read, and opening a FIFO does not block) and read with ``read_limited`` / ``read_lines_limited``, which stop
  at a stated size: ``/dev/zero``, a FIFO or a 20 GB file given by mistake ends in an ``InputRefusedError`` naming the
  file, never in an exhausted memory or a hang.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

#: Mode of every private folder facegate creates (owner only).
PRIVATE_DIR_MODE = 0o700
#: Mode of every private file facegate creates (owner read/write only).
PRIVATE_FILE_MODE = 0o600


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a regular file's bytes, read in chunks. Raises ``OSError`` as ``open`` does, and
    ``InputRefusedError`` for a device, FIFO or folder (``open_regular``: hashing /dev/zero would never end)."""
    digest = hashlib.sha256()
    with open_regular(path) as handle:
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


# ---------------------------------------------------------------------------------------------------------------
# Private files and folders


def tighten(path: str | Path, mode: int) -> None:
    """``chmod`` an existing ``path`` to ``mode`` unless it already has it. A path that vanished is ignored; one
    owned by another user (a folder shared with the daemon's account) is left as it is with a warning rather than
    refused."""
    try:
        if (os.stat(path).st_mode & 0o7777) != mode:
            os.chmod(path, mode)
    except FileNotFoundError:
        pass
    except PermissionError as exc:
        log.warning("event=permissions_not_tightened path=%s mode=%o error=%s", path, mode, exc.strerror)


def private_dir(folder: str | Path, *, tighten_existing: bool = False) -> Path:
    """Create ``folder`` and every missing parent, each exactly 0700 whatever the umask; returns it as a ``Path``.

    An existing folder keeps its mode unless ``tighten_existing`` (a folder facegate owns, such as a gallery: made
    0700, see ``tighten``). Parents that exist are never touched (``/var/lib`` stays as it is). Raises ``OSError``
    (``NotADirectoryError`` when a file is in the way, ``PermissionError`` …) for the caller to name the setting.
    """
    folder = Path(folder)
    missing: list[Path] = []
    probe = folder
    while not probe.is_dir():
        if probe.exists() or probe.is_symlink():
            raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(probe))
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for new in reversed(missing):
        try:
            os.mkdir(new, PRIVATE_DIR_MODE)
        except FileExistsError:  # made meanwhile by another process: not ours to change
            if not new.is_dir():
                raise
            continue
        os.chmod(new, PRIVATE_DIR_MODE)  # mkdir's mode went through the umask
    if tighten_existing and not missing:
        tighten(folder, PRIVATE_DIR_MODE)
    return folder


def open_private(path: str | Path, flags: int, *, tighten_existing: bool = False) -> int:
    """``os.open`` that creates ``path`` 0600 whatever the umask when it does not exist (missing parent folders are
    created 0700, ``private_dir``). ``flags`` are the access flags (``os.O_WRONLY | os.O_APPEND`` …; ``O_CREAT`` is
    added). An existing file keeps its mode (an administrator's ``chmod 640`` for a log-reading group is theirs to
    choose) unless ``tighten_existing``. Returns the descriptor; raises ``OSError`` (``InputRefusedError`` when a
    device, FIFO or folder is in the way: it is never opened for writing)."""
    path = Path(path)
    private_dir(path.parent)
    for _ in range(3):  # a file removed between the two opens below is simply created again
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE_MODE)
        except FileExistsError:
            try:  # O_NONBLOCK: a FIFO in the way must be refused, not wait for a reader
                fd = os.open(path, (flags & ~os.O_CREAT) | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
            except FileNotFoundError:
                continue
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # a FIFO opened for writing without a reader
                    raise InputRefusedError(path, "a FIFO (named pipe), not a regular file") from None
                raise
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                os.close(fd)
                raise InputRefusedError(path, f"{_kind(info.st_mode)}, not a regular file") from None
            os.set_blocking(fd, True)
            if tighten_existing:
                try:
                    os.fchmod(fd, PRIVATE_FILE_MODE)
                except PermissionError as exc:
                    log.warning("event=permissions_not_tightened path=%s mode=600 error=%s", path, exc.strerror)
            return fd
        try:
            os.fchmod(fd, PRIVATE_FILE_MODE)  # open's mode went through the umask
        except BaseException:
            os.close(fd)
            raise
        return fd
    raise FileNotFoundError(errno.ENOENT, "created and removed again while opening", str(path))


def create_private_file(path: str | Path) -> bool:
    """Create an empty ``path`` 0600 whatever the umask unless it exists (for a database that SQLite opens next:
    SQLite would create it with the umask's mode, and gives its ``-wal``/``-shm`` files the database's mode).
    Returns True when created. Raises ``OSError`` (``InputRefusedError`` when something else than a regular file
    is in the way: SQLite would block reading a FIFO)."""
    path = Path(path)
    private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    except FileExistsError:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise InputRefusedError(path, f"{_kind(info.st_mode)}, not a regular file") from None
        return False
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
    finally:
        os.close(fd)
    return True


def create_new_file(path: str | Path, data: bytes, mode: int = PRIVATE_FILE_MODE) -> None:
    """Create ``path`` (never overwrite: ``FileExistsError``), write ``data``, fsync, with exactly ``mode``
    whatever the umask (``fchmod`` before any byte is written). Raises ``OSError``; a failed write removes the
    partial file."""
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode & PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


# ---------------------------------------------------------------------------------------------------------------
# Bounded reads


class InputRefusedError(OSError):
    """A file refused before or while reading: not a regular file (a device, FIFO, socket or folder), a line or a
    file longer than the stated limit. ``str()`` is the reason alone (callers put the file's name and the setting
    in front); ``filename`` is the path."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(errno.EINVAL, reason, str(path))

    def __str__(self) -> str:
        return str(self.strerror)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def open_regular(path: str | Path) -> BinaryIO:
    """Open ``path`` for binary reading only when it is a regular file (symbolic links followed).

    Devices (``/dev/zero``), FIFOs, sockets and folders raise ``InputRefusedError`` before a single byte is read; the
    open itself uses ``O_NONBLOCK`` so that a FIFO without a writer cannot hang it (``O_NOCTTY``: a terminal given
    by mistake does not become the controlling one), and the type is checked again on the open descriptor so a
    path swapped in between is refused too. Other problems raise ``OSError`` as ``open`` does.
    """
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise InputRefusedError(path, f"{_kind(info.st_mode)}, not a regular file")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputRefusedError(path, f"{_kind(info.st_mode)}, not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _size_problem(size: int, limit: int, what: str) -> str:
    return f"{size:,} bytes, more than the {limit:,}-byte limit for {what}"


def read_limited(path: str | Path, limit: int, what: str = "this file") -> bytes:
    """The bytes of the regular file ``path`` (``open_regular``), read in chunks of at most 1 MiB, or
    ``InputRefusedError`` when it holds more than ``limit`` bytes: checked on its size before reading and again while
    reading (a file that grows meanwhile, or one of ``/proc`` whose size says 0). ``what`` names the kind of file in
    the message ("a config file")."""
    with open_regular(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > limit:
            raise InputRefusedError(path, _size_problem(size, limit, what))
        chunks: list[bytes] = []
        total = 0
        while block := handle.read(min(1 << 20, limit + 1 - total)):
            chunks.append(block)
            total += len(block)
            if total > limit:
                raise InputRefusedError(path, f"more than the {limit:,}-byte limit for {what}")
    return b"".join(chunks)


def read_lines_limited(handle: BinaryIO, path: str | Path, *, max_line: int, max_total: int,
                       what: str = "this file") -> Iterator[tuple[int, bytes]]:
    """(1-based line number, line without its newline) of an open binary file, read one line at a time: no line
    longer than ``max_line`` bytes and no more than ``max_total`` bytes in all are ever read (``InputRefusedError``
    naming the line or the total)."""
    total = 0
    number = 0
    while True:
        line = handle.readline(max_line + 1)
        if not line:
            return
        number += 1
        total += len(line)
        if total > max_total:
            raise InputRefusedError(path, f"more than the {max_total:,}-byte limit for {what}")
        body = line[:-1] if line.endswith(b"\n") else line
        if len(body) > max_line:
            raise InputRefusedError(path, f"line {number} is longer than the {max_line:,}-byte limit of one line of "
                               f"{what}")
        yield number, body
