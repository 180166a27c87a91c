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
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from facegate.errors import GalleryError

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


def utc_now() -> str:
    """Current UTC time as RFC 3339 with milliseconds, e.g. ``2026-11-30T12:00:00.000Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass(frozen=True)
class PackBinding:
    """The model pack a gallery is bound to: templates from another pack are not comparable."""

    name: str
    dim: int
    metric: str  # "euclidean" | "cosine"

    def __post_init__(self) -> None:
        if self.metric not in ("euclidean", "cosine"):
            raise GalleryError(f"pack {self.name!r}: metric {self.metric!r} is not 'euclidean' or 'cosine'")
        if self.dim <= 0:
            raise GalleryError(f"pack {self.name!r}: embedding size {self.dim} must be positive")

    def describe(self) -> str:
        return f"{self.name} ({self.dim}-d, {self.metric})"


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
            self.folder.mkdir(parents=True, exist_ok=True)
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
                    self._set_meta(cur, "schema", str(SCHEMA_VERSION))
                    self._set_meta(cur, "gallery_id", secrets.token_hex(8))
                    self._set_meta(cur, "generation", "0")
            schema = self.meta("schema")
            if schema != str(SCHEMA_VERSION):
                raise GalleryError(f"{self.path}: gallery schema {schema} is not {SCHEMA_VERSION}; "
                                   "export it with the facegate version that wrote it and import it again")
        except sqlite3.DatabaseError as exc:
            raise GalleryError(f"{self.path}: cannot open the gallery database ({exc}); "
                               "restore it from an export or choose another --gallery folder") from None
        except OSError as exc:
            raise GalleryError(f"{self.folder}: cannot create the gallery folder ({exc.strerror})") from None

    # -- plumbing ---------------------------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Cursor]:
        """One ``BEGIN IMMEDIATE`` … ``COMMIT`` (rolled back on any exception), holding the process lock."""
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

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
        """The bound pack, or None for a gallery that has never held a template."""
        name = self.meta("pack")
        if name is None:
            return None
        return PackBinding(name, int(self.meta("dim") or 0), str(self.meta("metric")))

    def bind(self, pack: PackBinding) -> PackBinding:
        """Bind an unbound gallery to ``pack``; raise ``GalleryError`` if it is bound to a different pack."""
        with self.transaction() as cur:
            name = self._meta(cur, "pack")
            if name is None:
                self._set_meta(cur, "pack", pack.name)
                self._set_meta(cur, "dim", str(pack.dim))
                self._set_meta(cur, "metric", pack.metric)
                return pack
        bound = self.binding()
        assert bound is not None
        if bound != pack:
            raise GalleryError(
                f"{self.folder}: this gallery holds templates of pack {bound.describe()}, not {pack.describe()}; "
                "templates of different packs cannot be compared — use another --gallery folder or the same pack"
            )
        return bound

    # -- identities -------------------------------------------------------------------------------------------
    @staticmethod
    def _identity(row: tuple) -> Identity:
        return Identity(row[0], row[1], json.loads(row[2]), row[3], row[4], int(row[5]))

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
                {"id": t, "image_sha256": sha, "quality": json.loads(q), "created_at": c}
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
        return {r[0]: (r[1], json.loads(r[2])) for r in rows}

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

        Returns (identity id, template ids N int64, new generation). One transaction: all or nothing.
        """
        n = len(embeddings)
        shas = image_sha256 or [None] * n
        quals = quality or [{}] * n
        if len(shas) != n or len(quals) != n:
            raise ValueError("Store.add: image_sha256 and quality need one entry per embedding")
        now = utc_now()
        with self.transaction() as cur:
            row = cur.execute("SELECT id, groups FROM identities WHERE name=?", (name,)).fetchone()
            if row is None:
                cur.execute("INSERT INTO identities(name, groups, created_at, updated_at) VALUES(?,?,?,?)",
                            (name, json.dumps(sorted(set(groups or []))), now, now))
                identity_id = int(cur.lastrowid or 0)
            else:
                identity_id = int(row[0])
                merged = sorted(set(json.loads(row[1])) | set(groups or []))
                cur.execute("UPDATE identities SET groups=?, updated_at=? WHERE id=?",
                            (json.dumps(merged), now, identity_id))
            ids = np.empty(n, np.int64)
            for i in range(n):
                blob = np.ascontiguousarray(embeddings[i], dtype="<f4").tobytes()
                cur.execute(
                    "INSERT INTO templates(identity_id, embedding, pack, metric, image_sha256, quality, created_at) "
                    "VALUES(?,?,?,?,?,?,?)",
                    (identity_id, blob, pack.name, pack.metric, shas[i], json.dumps(quals[i]), now),
                )
                ids[i] = int(cur.lastrowid or 0)
            generation = self._bump(cur)
        return identity_id, ids, generation

    def set_groups(self, name: str, groups: list[str]) -> None:
        ident = self.identity(name)
        with self.transaction() as cur:
            cur.execute("UPDATE identities SET groups=?, updated_at=? WHERE id=?",
                        (json.dumps(sorted(set(groups))), utc_now(), ident.id))
            self._bump(cur)  # the index's name/group labels must be reloaded

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
                vecs = np.frombuffer(b"".join(r[2] for r in rows), dtype="<f4").reshape(len(rows), dim)
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
                     "quality": json.loads(q), "created_at": c}
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
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.execute("VACUUM")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
