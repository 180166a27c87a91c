"""A look into a gallery without touching it: its pack binding and template count, read from ``gallery.db`` through
SQLite's read-only mode, for ``facegate config check`` (which must not create, migrate, chmod or lock anything —
``Store`` does all of those when it opens a gallery, as a writer must)."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path
from urllib.parse import quote

from facegate.errors import GalleryError
from facegate.gallery.binding import PackBinding
from facegate.gallery.store import DB_NAME, read_binding


def peek(folder: str | Path) -> tuple[PackBinding | None, int] | None:
    """(the pack the gallery in ``folder`` is bound to or None when unbound, its number of templates), or None when
    there is no ``gallery.db`` there. Raises ``GalleryError`` naming the file when it is not a regular file, cannot be
    opened read-only, or is not a facegate gallery (no ``meta``/``templates`` tables, corrupt meta rows)."""
    path = Path(folder) / DB_NAME
    try:
        st = os.stat(path)  # follows a link, as SQLite would; a loop or a name too long is an OSError
    except (FileNotFoundError, NotADirectoryError):  # no gallery there (a bad folder is config check's creatable)
        return None
    except OSError as exc:
        raise GalleryError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise GalleryError(f"{path}: not a regular file (a gallery database is one SQLite file)")
    # Without a -wal file every committed row is in the main file: immutable=1 reads it and creates nothing (mode=ro
    # alone would still create -wal/-shm beside a WAL database). With one, a writer may hold rows not yet
    # checkpointed: read through it (mode=ro), which only uses the files that are already there.
    wal = Path(str(path) + "-wal").exists()
    try:
        db = sqlite3.connect(f"file:{quote(str(path.resolve()))}?{'mode=ro' if wal else 'immutable=1'}", uri=True,
                             timeout=5.0)
    except sqlite3.Error as exc:
        raise GalleryError(f"{path}: cannot be opened read-only ({exc})") from None
    try:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        templates = int(db.execute("SELECT COUNT(*) FROM templates").fetchone()[0])
    except (sqlite3.Error, ValueError, TypeError) as exc:
        raise GalleryError(f"{path}: not a facegate gallery, or damaged ({exc})") from None
    finally:
        db.close()
    return read_binding(meta.get, lambda: templates, path), templates
