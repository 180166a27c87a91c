"""SQLite records of the gallery: the source of truth (the hnswlib index is derived from it).

Tables (``gallery.db`` in the gallery folder):

* ``meta(key, value)``: ``schema``, ``gallery_id`` (random hex, ties an index file to this database), ``pack``,
  ``dim``, ``metric``, ``generation`` (incremented by every transaction that changes templates);
* ``identities(id, name UNIQUE, groups JSON list, created_at, updated_at)`` — times UTC RFC 3339;
* ``templates(id, identity_id, embedding BLOB float32 little-endian, pack, metric, image_sha256, quality JSON,
  created_at)``. Template ids come from ``AUTOINCREMENT`` and are never reused, so they can be hnswlib labels and a
  deleted label can never come back as someone else.

The database runs in WAL mode with ``synchronous=FULL`` (a committed enrolment survives power loss) and
``secure_delete=ON`` (deleted rows are overwritten with zeros; ``vacuum()`` then rewrites the file so no page of an
erased person remains). SQLite's own journal makes every transaction atomic, so a killed writer leaves either the
old or the new state (https://www.sqlite.org/atomiccommit.html). One connection is shared by the threads of a
process behind a lock; other processes may open the same file (``busy_timeout`` waits for their writes).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from facegate import fileio
from facegate.errors import GalleryError
from facegate.fileio import folder_lock
from facegate.gallery.binding import LEGACY_DEFAULT, LEGACY_RENAMED, PackBinding, mismatch_message
from facegate.gallery.validate import group_problem

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DB_NAME = "gallery.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS identities (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    groups TEXT NOT NULL DEFAULT '[]',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS templates (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    identity_id INTEGER NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
    embedding BLOB NOT NULL,
    pack TEXT NOT NULL,
    metric TEXT NOT NULL,
    image_sha256 TEXT,
    quality TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS templates_identity ON templates(identity_id);
"""

#: One template per (identity, source image): two concurrent enrolments of the same photo cannot both land.
#: Partial (``WHERE image_sha256 IS NOT NULL``) because imported templates may have no known source image.
_UNIQUE_INDEX = "templates_identity_image"
_UNIQUE_SQL = (f"CREATE UNIQUE INDEX IF NOT EXISTS {_UNIQUE_INDEX} ON templates(identity_id, image_sha256) "
               "WHERE image_sha256 IS NOT NULL")
#: Private files: face templates are biometric data (GDPR art. 9), readable by the owner only whatever the umask.
DIR_MODE = fileio.PRIVATE_DIR_MODE
FILE_MODE = fileio.PRIVATE_FILE_MODE
_RESTORE = "restore the gallery from an export (`facegate gallery import FILE --gallery NEW_DIR`)"


def read_binding(meta: Callable[[str], str | None], templates: Callable[[], int], where: Path) -> PackBinding | None:
    """A gallery's pack binding from its meta rows (``meta(key)``; ``templates()`` its template count, asked only
    when no pack is named), or None for a gallery that has never held a template. Raises ``GalleryError`` naming
    ``where`` when the rows are corrupt. Shared by ``Store`` and the read-only ``peek``."""
    name = meta("pack")
    if name is None:
        if templates():
            raise GalleryError(f"{where}: the gallery holds templates but its meta table names no pack "
                               f"(pack, embedding size, metric lost); {_RESTORE}")
        return None
    dim = meta("dim")
    if dim is None or not dim.isdigit():
        raise GalleryError(f"{where}: meta dim {dim!r} is not an embedding size; {_RESTORE}")
    return PackBinding(name, int(dim), str(meta("metric")))


def private_dir(folder: Path) -> None:
    """Create ``folder`` (and missing parents) 0700 whatever the umask and tighten an existing one to 0700
    (``fileio.private_dir``; raises OSError)."""
    fileio.private_dir(folder, tighten_existing=True)


def private_file(path: Path) -> None:
    """Make an existing file 0600 (no-op when it is already); a file that has vanished is ignored."""
    fileio.tighten(path, FILE_MODE)


def utc_now() -> str:
    """Current UTC time as RFC 3339 with milliseconds, e.g. ``2026-11-30T12:00:00.000Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class Identity:
    """One enrolled person; ``templates`` is the number of stored templates."""

    id: int
    name: str
    groups: list[str]
    created_at: str
    updated_at: str
    templates: int = 0
    template_info: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "groups": self.groups,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "templates": self.templates,
        }
        if self.template_info:
            out["template_info"] = self.template_info
        return out


class Store:
    """The gallery's SQLite database (see the module docstring). Thread-safe; every write is one transaction."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / DB_NAME
        self._lock = threading.RLock()
        try:
            private_dir(self.folder)
            self._refuse_lost_database()
            # Create the file 0600 before SQLite does (it would use the umask); -wal/-shm inherit its mode.
            with contextlib.suppress(FileExistsError):
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
            private_file(self.path)
            with folder_lock(self.folder, ".open.lock"):
                self._open_database()
            for suffix in ("-wal", "-shm"):
                private_file(self.folder / (DB_NAME + suffix))
            self.check()
        except BaseException as exc:
            self._open_failed(exc)

    def _open_database(self) -> None:
        """Connect, set WAL and create or check the schema. Called under an inter-process lock: two processes
        creating one gallery at once could otherwise both try to switch it to WAL, and SQLite answers that with an
        immediate "database is locked" that no busy timeout waits out."""
        self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.execute("PRAGMA foreign_keys=ON")
        with self.transaction() as cur:
            # executescript() would COMMIT behind our back; run the statements one by one instead.
            for statement in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
                cur.execute(statement)
            if self._meta(cur, "gallery_id") is None:
                stored = cur.execute("SELECT COUNT(*) FROM templates").fetchone()[0]
                if stored:  # the meta table was lost; its pack binding cannot be guessed
                    raise GalleryError(
                        f"{self.folder}: the gallery database holds {stored} templates but its meta table "
                        f"(pack, embedding size, metric) is missing or empty; {_RESTORE}")
                self._set_meta(cur, "schema", str(SCHEMA_VERSION))
                self._set_meta(cur, "gallery_id", secrets.token_hex(8))
                self._set_meta(cur, "generation", "0")
            schema = self._meta(cur, "schema")
            if schema != str(SCHEMA_VERSION):
                raise GalleryError(f"{self.path}: gallery schema {schema} is not {SCHEMA_VERSION}; "
                                   "export it with the facegate version that wrote it and import it again")
            self._migrate_unique(cur)

    def _open_failed(self, exc: BaseException) -> None:
        """Close what was opened and turn SQLite/OS errors into a ``GalleryError`` naming the file."""
        db = getattr(self, "_db", None)
        if db is not None:
            db.close()
        if isinstance(exc, sqlite3.DatabaseError):
            raise GalleryError(f"{self.path}: cannot open the gallery database ({exc}); "
                               "restore it from an export or choose another --gallery folder") from None
        if isinstance(exc, OSError):
            raise GalleryError(f"{self.folder}: cannot open or create the gallery folder "
                               f"({exc.strerror or exc})") from None
        raise exc

    def _refuse_lost_database(self) -> None:
        """Refuse a folder whose index files survive but whose ``gallery.db`` is missing or 0 bytes (a crash or a
        full disk): re-creating an empty gallery there would silently drop every enrolled person."""
        try:
            size: int | None = self.path.stat().st_size
        except FileNotFoundError:
            size = None
        if size:
            return
        leftovers = sorted(p.name for p in self.folder.iterdir()
                           if p.name == "index.json" or (p.name.startswith("index-") and p.name.endswith(".hnsw")))
        if leftovers:
            state = "is missing" if size is None else "is empty (0 bytes)"
            raise GalleryError(
                f"{self.folder}: {DB_NAME} {state} but this folder held a gallery ({', '.join(leftovers[:3])}); "
                f"refusing to start an empty gallery in its place — {_RESTORE}, restore the folder from a backup, "
                "or give --gallery a new folder")

    def _migrate_unique(self, cur: sqlite3.Cursor) -> None:
        """Create the (identity, image sha256) UNIQUE index on galleries written before it existed, first
        deleting duplicate rows (keeping the oldest template of each pair) that concurrent enrolments left."""
        if cur.execute("SELECT 1 FROM sqlite_master WHERE type='index' AND name=?", (_UNIQUE_INDEX,)).fetchone():
            return
        cur.execute("DELETE FROM templates WHERE image_sha256 IS NOT NULL AND id NOT IN "
                    "(SELECT MIN(id) FROM templates WHERE image_sha256 IS NOT NULL "
                    "GROUP BY identity_id, image_sha256)")
        if cur.rowcount > 0:
            log.warning("gallery_duplicates_removed folder=%s templates=%d", self.folder, cur.rowcount)
            self._bump(cur)
        cur.execute(_UNIQUE_SQL)

    def check(self, batch: int = 50_000) -> None:
        """Verify every record the search depends on; raise ``GalleryError`` naming the gallery, the identity and
        the template, and how to recover, for the first defect found. Fail closed: a corrupt template must not
        be searched (a NaN distance compares false against every threshold) nor silently skipped.

        Checks: meta ``dim``/``generation`` are integers and ``metric`` is known; every embedding blob is exactly
        dim × 4 bytes and holds finite float32 values; every identity's groups are a JSON list of valid groups.
        Cost: one pass over the blobs, measured 0.40 s for 200,000 128-d templates (≈ 2 s per million) on the
        shared 2-core development machine."""
        with self._lock:
            db = self._db
            for row_id, name, groups in db.execute("SELECT id, name, groups FROM identities"):
                self._parse_groups(groups, name, row_id)
            generation = self._meta(db.cursor(), "generation")
            if generation is None or not generation.isdigit():
                raise GalleryError(f"{self.folder}: meta generation {generation!r} is not a number; {_RESTORE}")
            binding = self.binding()
            if binding is None:
                return
            size = binding.dim * 4
            bad = db.execute("SELECT t.id, i.name, length(t.embedding) FROM templates t "
                             "LEFT JOIN identities i ON i.id = t.identity_id "
                             "WHERE typeof(t.embedding) != 'blob' OR length(t.embedding) != ? LIMIT 1",
                             (size,)).fetchone()
            if bad:
                raise GalleryError(
                    f"{self.folder}: template {bad[0]} of identity {bad[1]!r} is {bad[2]} bytes, but the gallery's "
                    f"pack {binding.describe()} needs {size} bytes (meta dim and stored templates disagree); "
                    f"{self._repair_hint(bad[0])}")
            cursor = db.execute("SELECT id, embedding FROM templates ORDER BY id")
            while rows := cursor.fetchmany(batch):
                vecs = np.frombuffer(b"".join(r[1] for r in rows), "<f4").reshape(len(rows), binding.dim)
                finite = np.isfinite(vecs).all(axis=1)
                if not finite.all():
                    tid = int(rows[int(np.argmin(finite))][0])
                    who = db.execute("SELECT i.name FROM templates t LEFT JOIN identities i ON i.id = t.identity_id "
                                     "WHERE t.id=?", (tid,)).fetchone()
                    raise GalleryError(
                        f"{self.folder}: template {tid} of identity {who[0] if who else None!r} holds NaN or "
                        f"infinite values (corrupt data); the gallery refuses to open so that no search runs "
                        f"against it — {self._repair_hint(tid)}")

    def _repair_hint(self, template_id: int) -> str:
        return (f"{_RESTORE}, or delete that template (`sqlite3 {self.path} "
                f"\"DELETE FROM templates WHERE id={template_id}\"`) and re-enrol the person")

    def _parse_groups(self, raw: object, name: object, identity_id: int) -> list[str]:
        try:
            groups = json.loads(raw) if isinstance(raw, str) else None
        except json.JSONDecodeError:
            groups = None
        if not isinstance(groups, list) or any(group_problem(g) for g in groups):
            raise GalleryError(f"{self.folder}: identity {identity_id} ({name!r}) has corrupt groups {raw!r} "
                               f"(not a JSON list of group names); {_RESTORE}, or set them with sqlite3: "
                               f"UPDATE identities SET groups='[]' WHERE id={identity_id}")
        return groups

    def _parse_quality(self, raw: object) -> Any:
        try:
            return json.loads(raw) if isinstance(raw, str) else None
        except json.JSONDecodeError:
            return {"corrupt": str(raw)[:200]}  # display only: quality records never affect a decision

    # -- plumbing ---------------------------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Cursor]:
        """One ``BEGIN IMMEDIATE`` … ``COMMIT`` (rolled back on any exception, a failed COMMIT included), holding
        the process lock. A write the disk cannot take (full, quota, I/O error) raises ``GalleryError`` naming the
        database: the transaction left nothing behind."""
        with self._lock:
            cur = self._db.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE")
                try:
                    yield cur
                    cur.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back by itself already
                        cur.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                self._raise_if_write_failed(exc)
                raise

    def _raise_if_write_failed(self, exc: sqlite3.Error) -> None:
        """``GalleryError`` for SQLite's "database or disk is full" (SQLITE_FULL) and I/O errors (SQLITE_IOERR);
        returns for any other error."""
        code = (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF
        if code == sqlite3.SQLITE_FULL or "disk is full" in str(exc):
            raise GalleryError(f"{self.path}: the disk is full ({exc}); this change was not stored (the gallery is "
                               "as before it); free space and run the command again") from None
        if code == sqlite3.SQLITE_IOERR:
            raise GalleryError(f"{self.path}: cannot write the gallery database ({exc}); this change was not "
                               "stored; check the disk and run the command again") from None

    @staticmethod
    def _meta(cur: sqlite3.Cursor, key: str) -> str | None:
        row = cur.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else row[0]

    @staticmethod
    def _set_meta(cur: sqlite3.Cursor, key: str, value: str) -> None:
        cur.execute("INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                    (key, value))

    @staticmethod
    def _bump(cur: sqlite3.Cursor) -> int:
        cur.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key='generation'")
        return int(cur.execute("SELECT value FROM meta WHERE key='generation'").fetchone()[0])

    def meta(self, key: str) -> str | None:
        with self._lock:
            return self._meta(self._db.cursor(), key)

    @property
    def gallery_id(self) -> str:
        return str(self.meta("gallery_id"))

    @property
    def generation(self) -> int:
        return int(self.meta("generation") or 0)

    def close(self) -> None:
        with self._lock:
            # Another process may hold the database; its own close checkpoints then.
            with contextlib.suppress(sqlite3.DatabaseError):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()

    # -- pack binding -----------------------------------------------------------------------------------------
    def binding(self) -> PackBinding | None:
        """The bound pack, or None for a gallery that has never held a template (``GalleryError`` when the
        meta rows are corrupt)."""
        return read_binding(self.meta, lambda: self.counts()[1], self.folder)

    def bind(self, pack: PackBinding) -> PackBinding:
        """Bind an unbound gallery to ``pack``; raise ``GalleryError`` (``mismatch_message``) if it is bound to a
        different pack. A gallery of the old built-in pack (``LEGACY_DEFAULT``) opened with the ``dlib`` pack is
        renamed to it (same templates)."""
        with self.transaction() as cur:
            if self._bind_in(cur, pack):
                return pack
            if pack == LEGACY_RENAMED and self._meta(cur, "pack") == LEGACY_DEFAULT.name and \
                    self._meta(cur, "dim") == str(LEGACY_DEFAULT.dim) and \
                    self._meta(cur, "metric") == LEGACY_DEFAULT.metric:
                self._set_meta(cur, "pack", pack.name)
                log.warning("gallery_pack_renamed folder=%s from=%s to=%s note=same_templates", self.folder,
                            LEGACY_DEFAULT.name, pack.name)
                return pack
        bound = self.binding()
        assert bound is not None
        if bound != pack:
            raise GalleryError(mismatch_message(self.folder, bound, pack))
        return bound

    def _bind_in(self, cur: sqlite3.Cursor, pack: PackBinding) -> bool:
        """Inside a transaction: bind an unbound gallery to ``pack``; True when it was unbound."""
        if self._meta(cur, "pack") is not None:
            return False
        self._set_meta(cur, "pack", pack.name)
        self._set_meta(cur, "dim", str(pack.dim))
        self._set_meta(cur, "metric", pack.metric)
        return True

    # -- identities -------------------------------------------------------------------------------------------
    def _identity(self, row: tuple) -> Identity:
        return Identity(row[0], row[1], self._parse_groups(row[2], row[1], row[0]), row[3], row[4], int(row[5]))

    _IDENTITY_SELECT = ("SELECT i.id, i.name, i.groups, i.created_at, i.updated_at, "
                        "(SELECT COUNT(*) FROM templates t WHERE t.identity_id = i.id) FROM identities i")

    def identities(self) -> list[Identity]:
        with self._lock:
            rows = self._db.execute(self._IDENTITY_SELECT + " ORDER BY i.name").fetchall()
        return [self._identity(r) for r in rows]

    def identity(self, name_or_id: str | int) -> Identity:
        """Look an identity up by name (or numeric id); raise ``GalleryError`` naming it when absent."""
        with self._lock:
            row = self._db.execute(self._IDENTITY_SELECT + " WHERE i.name = ?", (str(name_or_id),)).fetchone()
            if row is None and str(name_or_id).isdigit():
                row = self._db.execute(self._IDENTITY_SELECT + " WHERE i.id = ?", (int(name_or_id),)).fetchone()
            if row is None:
                raise GalleryError(f"no identity {name_or_id!r} in the gallery {self.folder}; "
                                   "see `facegate gallery list`")
            ident = self._identity(row)
            ident.template_info = [
                {"id": t, "image_sha256": sha, "quality": self._parse_quality(q), "created_at": c}
                for t, sha, q, c in self._db.execute(
                    "SELECT id, image_sha256, quality, created_at FROM templates WHERE identity_id=? ORDER BY id",
                    (ident.id,),
                )
            ]
        return ident

    def names(self, identity_ids: list[int]) -> dict[int, tuple[str, list[str]]]:
        """Map identity ids to (name, groups) for the ids that exist."""
        if not identity_ids:
            return {}
        with self._lock:
            marks = ",".join("?" * len(identity_ids))
            rows = self._db.execute(f"SELECT id, name, groups FROM identities WHERE id IN ({marks})",
                                    list(identity_ids)).fetchall()
        return {r[0]: (r[1], self._parse_groups(r[2], r[1], r[0])) for r in rows}

    # -- templates --------------------------------------------------------------------------------------------
    def add(
        self,
        name: str,
        embeddings: np.ndarray,
        pack: PackBinding,
        groups: list[str] | None = None,
        image_sha256: list[str | None] | None = None,
        quality: list[dict[str, Any]] | None = None,
    ) -> tuple[int, np.ndarray, int]:
        """Add templates (N×D float32) to identity ``name`` (created if new; ``groups`` are merged in).

        A template is skipped (its id is -1) when the identity already holds one from the same source image
        (sha256; enforced by a UNIQUE index, so concurrent writers cannot both add it) or with the identical
        embedding. Returns (identity id, template ids N int64 with -1 for skipped ones, new generation).
        One transaction: all or nothing.
        """
        with self.transaction() as cur:
            identity_id, ids = self._add_in(cur, name, embeddings, pack, groups, image_sha256, quality, utc_now())
            generation = self._bump(cur)
        return identity_id, ids, generation

    def add_many(self, pack: PackBinding, records: list[dict[str, Any]]) -> tuple[int, int, int]:
        """Bind to ``pack`` if unbound and add every record (``name``, ``embeddings`` N×D, ``groups``,
        ``image_sha256``, ``quality`` as for ``add``) in ONE transaction: a failure adds nothing.
        Returns (templates added, templates skipped as already present, new generation)."""
        added = skipped = 0
        now = utc_now()
        with self.transaction() as cur:
            self._bind_in(cur, pack)
            for rec in records:
                _, ids = self._add_in(cur, rec["name"], rec["embeddings"], pack, rec.get("groups"),
                                      rec.get("image_sha256"), rec.get("quality"), now)
                added += int((ids >= 0).sum())
                skipped += int((ids < 0).sum())
            generation = self._bump(cur)
        return added, skipped, generation

    def _add_in(self, cur: sqlite3.Cursor, name: str, embeddings: np.ndarray, pack: PackBinding,
                groups: list[str] | None, image_sha256: list[str | None] | None,
                quality: list[dict[str, Any]] | None, now: str) -> tuple[int, np.ndarray]:
        n = len(embeddings)
        shas = image_sha256 or [None] * n
        quals = quality or [{}] * n
        if len(shas) != n or len(quals) != n:
            raise ValueError("Store.add: image_sha256 and quality need one entry per embedding")
        row = cur.execute("SELECT id, groups FROM identities WHERE name=?", (name,)).fetchone()
        if row is None:
            cur.execute("INSERT INTO identities(name, groups, created_at, updated_at) VALUES(?,?,?,?)",
                        (name, json.dumps(sorted(set(groups or []))), now, now))
            identity_id = int(cur.lastrowid or 0)
        else:
            identity_id = int(row[0])
            merged = sorted(set(self._parse_groups(row[1], name, identity_id)) | set(groups or []))
            cur.execute("UPDATE identities SET groups=?, updated_at=? WHERE id=?",
                        (json.dumps(merged), now, identity_id))
        ids = np.full(n, -1, np.int64)
        for i in range(n):
            blob = np.ascontiguousarray(embeddings[i], dtype="<f4").tobytes()
            if cur.execute("SELECT 1 FROM templates WHERE identity_id=? AND embedding=?",
                           (identity_id, blob)).fetchone():
                continue
            cur.execute(
                "INSERT INTO templates(identity_id, embedding, pack, metric, image_sha256, quality, created_at) "
                "VALUES(?,?,?,?,?,?,?) "
                "ON CONFLICT(identity_id, image_sha256) WHERE image_sha256 IS NOT NULL DO NOTHING",
                (identity_id, blob, pack.name, pack.metric, shas[i], json.dumps(quals[i]), now),
            )
            if cur.rowcount == 1:
                ids[i] = int(cur.lastrowid or 0)
        return identity_id, ids

    def set_groups(self, name: str, groups: list[str]) -> None:
        ident = self.identity(name)
        with self.transaction() as cur:
            cur.execute("UPDATE identities SET groups=?, updated_at=? WHERE id=?",
                        (json.dumps(sorted(set(groups))), utc_now(), ident.id))
            self._bump(cur)  # the index's name/group labels must be reloaded

    def rename(self, name_or_id: str | int, new_name: str) -> None:
        """Give an identity another name (validated by the caller); ``GalleryError`` when the name is taken."""
        ident = self.identity(name_or_id)
        try:
            with self.transaction() as cur:
                cur.execute("UPDATE identities SET name=?, updated_at=? WHERE id=?", (new_name, utc_now(), ident.id))
                self._bump(cur)  # the index's name labels must be reloaded
        except sqlite3.IntegrityError:
            raise GalleryError(f"an identity named {new_name!r} already exists; choose another name") from None

    def remove(self, name_or_id: str | int) -> tuple[Identity, np.ndarray, int]:
        """Delete an identity and its templates. Returns (the identity, its template ids, new generation)."""
        ident = self.identity(name_or_id)
        with self.transaction() as cur:
            ids = np.array([r[0] for r in cur.execute("SELECT id FROM templates WHERE identity_id=?", (ident.id,))],
                           np.int64)
            cur.execute("DELETE FROM templates WHERE identity_id=?", (ident.id,))
            cur.execute("DELETE FROM identities WHERE id=?", (ident.id,))
            generation = self._bump(cur)
        return ident, ids, generation

    def template_ids(self) -> tuple[np.ndarray, np.ndarray]:
        """All (template ids, identity ids), both int64 N, ordered by template id."""
        with self._lock:
            rows = self._db.execute("SELECT id, identity_id FROM templates ORDER BY id").fetchall()
        arr = np.array(rows, np.int64).reshape(-1, 2)
        return arr[:, 0].copy(), arr[:, 1].copy()

    def embeddings(self, template_ids: np.ndarray | None = None, batch: int = 50_000) -> Iterator[tuple]:
        """Yield (template ids int64 B, identity ids int64 B, embeddings B×D float32) in batches, by template id."""
        with self._lock:
            binding = self.binding()
            dim = binding.dim if binding else 0
            if template_ids is None:
                cursor = self._db.execute("SELECT id, identity_id, embedding FROM templates ORDER BY id")
                rows_iter: Iterator[list] = iter(lambda: cursor.fetchmany(batch), [])
            else:
                wanted = [int(t) for t in template_ids]
                rows_iter = iter(
                    self._db.execute(
                        f"SELECT id, identity_id, embedding FROM templates WHERE id IN ({','.join('?' * len(chunk))})"
                        " ORDER BY id",
                        chunk,
                    ).fetchall()
                    for chunk in (wanted[i : i + 900] for i in range(0, len(wanted), 900))
                )
            for rows in rows_iter:
                if not rows:
                    continue
                tids = np.array([r[0] for r in rows], np.int64)
                iids = np.array([r[1] for r in rows], np.int64)
                blobs = [r[2] for r in rows]
                if any(not isinstance(b, bytes) or len(b) != dim * 4 for b in blobs) or dim == 0:
                    self.check()  # raises the GalleryError naming the template
                vecs = np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(rows), dim)
                if not np.isfinite(vecs).all():  # written by another process after this one opened
                    self.check()
                yield tids, iids, vecs.astype(np.float32)

    def export_rows(self) -> Iterator[dict[str, Any]]:
        """Every identity with its templates (embedding as a list of floats) for a portable export."""
        for ident in self.identities():
            with self._lock:
                rows = self._db.execute(
                    "SELECT embedding, image_sha256, quality, created_at FROM templates WHERE identity_id=? "
                    "ORDER BY id", (ident.id,)).fetchall()
            yield {
                "name": ident.name,
                "groups": ident.groups,
                "created_at": ident.created_at,
                "updated_at": ident.updated_at,
                "templates": [
                    {"embedding": np.frombuffer(e, "<f4").astype(float).tolist(), "image_sha256": sha,
                     "quality": self._parse_quality(q), "created_at": c}
                    for e, sha, q, c in rows
                ],
            }

    def counts(self) -> tuple[int, int]:
        """(identities, templates)."""
        with self._lock:
            return (self._db.execute("SELECT COUNT(*) FROM identities").fetchone()[0],
                    self._db.execute("SELECT COUNT(*) FROM templates").fetchone()[0])

    def vacuum(self) -> None:
        """Rewrite the database file without free pages and truncate the WAL (erasure: no deleted row remains)."""
        with self._lock:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._db.execute("VACUUM")  # needs free space of about the database's size
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.OperationalError as exc:
                self._raise_if_write_failed(exc)
                raise
