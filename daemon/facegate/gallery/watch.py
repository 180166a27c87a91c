"""Which gallery is at a folder's path *now*, read without trusting a connection that is already open.

A process that keeps ``gallery.db`` open (the daemon) does not see the file being replaced: its SQLite connection
keeps reading the old inode (the folder swapped for another gallery, a backup restored by ``mv``), and a page
cache in WAL mode can keep answering after the file was overwritten in place. ``probe`` therefore looks at the
path itself: the file exists and is a regular file, its first 16 bytes are SQLite's header string (``SQLite format
3\\0``, https://www.sqlite.org/fileformat.html §1.3), and a fresh read-only connection can read its gallery id.
Cost: one ``stat``, one 16-byte read and one read-only connection, about a millisecond.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from facegate.errors import GalleryError
from facegate.gallery.store import DB_NAME

#: The first 16 bytes of every SQLite 3 database file.
SQLITE_HEADER = b"SQLite format 3\x00"
#: A read-only probe waits at most this long (s) for another process's lock.
PROBE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class GalleryFile:
    """The database file at a gallery path: its device and inode (which file it is) and the gallery id stored in
    it (which gallery it is; ``Store`` writes a random one when it creates a gallery)."""

    device: int
    inode: int
    gallery_id: str


def probe(folder: str | Path) -> GalleryFile:
    """What ``folder/gallery.db`` is now. Raises ``GalleryError`` with a short reason when it is missing, not a
    regular file, not an SQLite database (overwritten or corrupt), unreadable, or holds no gallery id."""
    path = Path(folder) / DB_NAME
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise GalleryError(f"{path} is not a regular file")
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        raise GalleryError(f"{path} is missing") from None
    except OSError as exc:
        raise GalleryError(f"{path} cannot be read ({exc.strerror or exc})") from None
    if head != SQLITE_HEADER:
        raise GalleryError(f"{path} is not an SQLite database (overwritten or corrupt)")
    try:
        db = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=PROBE_TIMEOUT_S)
    except sqlite3.Error as exc:
        raise GalleryError(f"{path} cannot be opened ({exc})") from None
    try:
        row = db.execute("SELECT value FROM meta WHERE key='gallery_id'").fetchone()
    except sqlite3.Error as exc:
        raise GalleryError(f"{path} cannot be read ({exc})") from None
    finally:
        db.close()
    if row is None or not isinstance(row[0], str) or not row[0]:
        raise GalleryError(f"{path} holds no gallery id (not a facegate gallery)")
    return GalleryFile(st.st_dev, st.st_ino, row[0])
