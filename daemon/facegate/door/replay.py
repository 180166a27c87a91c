"""The replay cache: event ids a door has already acted on, on disk so that a restart does not forget them.

A grant is single-use. The door remembers the ``event_id`` of every grant it accepted, with the grant's
``expires_at``, in a small SQLite database (WAL, ``synchronous=FULL``: the id is durable before the relay moves, so
a crash right after opening cannot make the same grant usable twice). Entries are pruned once their grant has
expired by more than ``keep_after_expiry_s`` (the margin covers a door clock stepped back by NTP); an expired grant
is refused by its ``expires_at`` anyway. The size is bounded by ``max_entries``: when full, new grants are refused
(fail closed), which only a daemon issuing more grants per TTL window than that could cause.

Only authenticated grants enter (the verifier checks the signature first), so forged messages cannot fill it.
The database file (and SQLite's -wal/-shm files, which inherit its mode) is 0600 whatever the umask; a missing folder
is created 0700.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from pathlib import Path

from facegate.errors import ConfigError
from facegate.fileio import open_private

log = logging.getLogger(__name__)

DEFAULT_MAX_ENTRIES = 100_000


class ReplayCache:
    """``check_and_remember(event_id, expires_ts, now_ts)`` → None (new, now remembered), "replay" or
    "replay_cache_full". Times are POSIX seconds (UTC). ``path`` None keeps the ids in memory only (tests, README's
    snippet): a restart then forgets them. Thread-safe. Raises ``ConfigError`` at construction when the file cannot
    be created or is not a replay cache; ``sqlite3.Error`` / ``OSError`` from ``check_and_remember`` (disk full)
    are for the caller to turn into a refusal."""

    def __init__(self, path: str | os.PathLike[str] | None, *, max_entries: int = DEFAULT_MAX_ENTRIES,
                 keep_after_expiry_s: float = 300.0) -> None:
        if max_entries < 1:
            raise ConfigError(f"replay cache: max_entries must be ≥ 1, got {max_entries}")
        self.path = Path(path) if path is not None else None
        self.max_entries = int(max_entries)
        self.keep_after_expiry_s = float(keep_after_expiry_s)
        self._lock = threading.Lock()
        self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        if self.path is None:
            db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        else:
            p = self.path
            try:
                # 0600 whatever the umask, missing folders 0700; also tightens a file an older version or an admin
                # left readable
                os.close(open_private(p, os.O_RDWR, tighten_existing=True))
                db = sqlite3.connect(str(p), check_same_thread=False, isolation_level=None, timeout=5.0)
            except OSError as exc:
                raise ConfigError(f"replay cache {p}: cannot create ({exc.strerror or exc}); check "
                                  "replay_cache.path and the service user's access to its folder") from exc
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("CREATE TABLE IF NOT EXISTS seen (event_id TEXT PRIMARY KEY, expires REAL NOT NULL)")
            db.execute("CREATE INDEX IF NOT EXISTS seen_expires ON seen (expires)")
            db.execute("SELECT count(*) FROM seen").fetchone()
        except sqlite3.DatabaseError as exc:
            db.close()
            raise ConfigError(f"replay cache {self.path}: not a replay cache database ({exc}); move it away (grants "
                              "it remembered expire within the agent's max TTL, so wait that long before starting "
                              "without it)") from exc
        return db

    def check_and_remember(self, event_id: str, expires_ts: float, now_ts: float) -> str | None:
        """Atomically: prune, then "replay" when ``event_id`` is known, "replay_cache_full" when the cache holds
        ``max_entries`` live ids, else remember it (durably, before returning) and return None."""
        with self._lock:
            db = self._db
            db.execute("DELETE FROM seen WHERE expires < ?", (now_ts - self.keep_after_expiry_s,))
            if db.execute("SELECT 1 FROM seen WHERE event_id = ?", (event_id,)).fetchone():
                return "replay"
            if db.execute("SELECT count(*) FROM seen").fetchone()[0] >= self.max_entries:
                log.warning("event=replay_cache_full entries=%d path=%s", self.max_entries, self.path)
                return "replay_cache_full"
            db.execute("INSERT INTO seen (event_id, expires) VALUES (?, ?)", (event_id, float(expires_ts)))
            return None

    def __contains__(self, event_id: object) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM seen WHERE event_id = ?", (str(event_id),)).fetchone() is not None

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM seen").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
