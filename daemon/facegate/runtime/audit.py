"""Append-only audit log: one JSON object per line, fsync'd before the caller goes on (i.e. before publishing).

Durability first. ``append`` returns only once the complete line is written and ``fsync`` succeeded; otherwise it
raises ``AuditWriteError`` (an ``OSError``) and the emitter stops the event there: nothing is published or printed
that has no complete, durable audit line.

Two kinds of record share the log: a decision (``{"logged_at", "topic", "event": <signed payload>}``, written by the
daemon) and an operator's action (``{"logged_at", "admin": {"action", "token", "target", ...}}``, written by the
operator console, a separate process). Readers tell them apart with ``is_decision`` / ``is_admin``. Both processes
append through ``AuditLog``: each record with ``write()`` on an ``O_APPEND`` descriptor while holding an exclusive
``flock`` on the file, so records of the two processes never interleave.

Faults (a full or failing file system). A write can stop half-way (``ENOSPC`` after part of the line) or ``fsync``
can fail: the line is then *torn*. Before every record the writer (holding the lock) looks at the file's last byte:
after a torn line — its own, or the other process's — it truncates the file back to the end of the last complete
line (``ftruncate``); if that fails too it starts the record on a fresh line (a newline first). So a record
is never appended onto a partial line and every complete line stays parseable. The
daemon keeps deciding meanwhile and retries at every event; the episode is reported once through ``Health``
(part ``audit``: one ``degraded`` line, and a ``recovered`` line with the number of events that were not recorded,
hence not published), never as a traceback per decision. When space returns the next event is recorded: recovery
needs no restart.

Opening an existing log appends to it. A torn last line that a crash of an earlier process left is not rewritten
(its bytes may matter to an investigation): the first record starts on a fresh line after it. ``read_audit`` skips
any line that is not a JSON object with a warning naming the file and line number.

Rotation: ``reopen`` (SIGHUP, after logrotate renamed the file; ``systemd/facegate.logrotate``) opens ``path``
afresh, creating it when it was moved away; records written between the rename and the signal are in the renamed
file, complete. ``copytruncate`` must not be used: it loses what is written between its copy and its truncation.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facegate.errors import ConfigError
from facegate.fileio import open_private
from facegate.runtime.health import SETTLE_S, Health

if TYPE_CHECKING:
    from facegate.config import Config
    from facegate.runtime.events import SignedEvent

log = logging.getLogger(__name__)

class AuditWriteError(OSError):
    """A record could not be made durable (write or fsync failed); it was not recorded and must not be published."""


class AuditLog:
    """Writer for ``path`` (created 0600 whatever the umask, missing parent folders 0700: audit records name
    people, ``fileio.open_private``; an existing file keeps its mode). Thread-safe.

    Raises ``ConfigError`` when the file cannot be opened for appending; ``append`` raises ``AuditWriteError``
    when the record cannot be written and synced (the caller must then not publish it). ``health`` hears of each
    episode of failed records (part ``audit``; a private registry when None). As the emitter's first sink
    (``emit``) it is critical: an event it cannot record goes no further.
    """

    name = "audit"
    critical = True

    def __init__(self, path: str | os.PathLike[str], health: Health | None = None) -> None:
        self.path = Path(path)
        self.health = health if health is not None else Health()
        self._lock = threading.Lock()
        self._fd = self._open()
        self._found = os.fstat(self._fd).st_size  # bytes an earlier process left: a torn end there is kept

    def _open(self) -> int:
        """Open ``path`` for appending (0600 when created). Raises ``ConfigError`` naming it."""
        try:
            return open_private(self.path, os.O_RDWR | os.O_APPEND)  # read: the torn-line check looks at the end
        except OSError as exc:
            raise ConfigError(f"audit log {self.path}: cannot open for appending ({exc.strerror}); "
                              "check the path and the service user's permissions") from exc

    @classmethod
    def from_config(cls, config: Config, state: Path, health: Health | None = None) -> AuditLog:
        """The log at ``audit.path``, else ``audit.jsonl`` in the state folder ``state``."""
        audit = cls(config.audit.path or state / "audit.jsonl", health=health)
        log.info("event=audit_log path=%s", audit.path)
        return audit

    def emit(self, event: SignedEvent) -> None:
        """Sink: the event's audit record (``audit_record``), durable before the next sink runs."""
        self.append(audit_record(event.payload, event.topic))

    def append(self, record: dict[str, Any]) -> None:
        """Write ``record`` (JSON-serialisable dict) as one line and fsync it. Raises ``AuditWriteError`` when
        the line is not durable (the failure is reported to ``health`` once per episode)."""
        line = json.dumps(record, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str) + "\n"
        data = line.encode("utf-8")
        with self._lock:
            if self._fd < 0:
                raise AuditWriteError(errno.EBADF, f"audit log {self.path} is closed")
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX)  # the console appends to the same file from another process
                try:
                    self._repair()
                    self._write(data)
                finally:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
            except OSError as exc:
                self.health.problem("audit", f"{self.path}: {exc.strerror or exc}")  # one line per episode
                raise AuditWriteError(exc.errno or errno.EIO,
                                      f"audit log {self.path}: record not written ({exc.strerror or exc})") from None
        # its "recovered" line counts the records lost; a disk with room for some records only is one episode
        self.health.clear("audit", settle_s=SETTLE_S)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:  # one write() on Linux for a regular file; the loop only guards a short write
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)

    def _repair(self) -> None:
        """With the lock held: when the file does not end with a newline (a torn line), truncate it to the end of
        its last complete line, else start a fresh line. Raises ``OSError`` when neither works (the record is then
        not written either)."""
        size = os.fstat(self._fd).st_size
        if size == 0 or os.pread(self._fd, 1, size - 1) == b"\n":
            return
        end = _last_line_end(self._fd, size)
        if end < self._found:  # a crash's torn line from before this writer opened the file: kept as it is
            log.warning("event=audit_torn_line path=%s action=newline_appended note=left_by_an_earlier_process",
                        self.path)
            os.write(self._fd, b"\n")
            os.fsync(self._fd)
            self._found = 0
            return
        try:
            os.ftruncate(self._fd, end)
            os.fsync(self._fd)
            log.warning("event=audit_torn_line path=%s action=truncated bytes=%d", self.path, size - end)
        except OSError as exc:
            log.warning("event=audit_torn_line path=%s action=fresh_line truncate_error=%r", self.path, str(exc))
            os.write(self._fd, b"\n")  # the fragment then stands alone on its line (read_audit skips it)
            os.fsync(self._fd)

    def reopen(self) -> None:
        """Open ``path`` again (SIGHUP after a rotation); the old file is closed once the new one is open. When
        the new one cannot be opened the old one is kept and the problem logged."""
        try:
            fd = self._open()
        except ConfigError as exc:
            log.error("event=audit_reopen_failed error=%r note=still_writing_the_old_file", str(exc))
            return
        with self._lock:
            old, self._fd = self._fd, fd
            self._found = os.fstat(fd).st_size
        if old >= 0:
            os.close(old)
        log.info("event=audit_reopened path=%s", self.path)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
        if self.health.degraded("audit"):
            lost = self.health.snapshot()["parts"]["audit"]["count"]
            log.error("event=audit_records_lost count=%d path=%s note=closed_while_failing_not_published", lost,
                      self.path)

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _last_line_end(fd: int, size: int, chunk: int = 65536) -> int:
    """Offset just after the last newline before ``size`` (0 when there is none), read backwards in chunks."""
    end = size
    while end > 0:
        start = max(0, end - chunk)
        at = os.pread(fd, end - start, start).rfind(b"\n")
        if at >= 0:
            return start + at + 1
        end = start
    return 0


def iter_audit(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Records of an audit log in order; unreadable (torn) lines are skipped with a warning."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
            except (ValueError, UnicodeDecodeError) as exc:
                log.warning("event=audit_bad_line path=%s line=%d error=%s", path, number, exc)
                continue
            yield record


def read_audit(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All readable records of an audit log (see ``iter_audit``)."""
    return list(iter_audit(path))


def audit_record(payload: dict[str, Any], topic: str | None) -> dict[str, Any]:
    """The audit line for one event: the signed payload, its topic (None without a broker) and when it was logged."""
    return {"logged_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "topic": topic, "event": payload}


def is_decision(record: dict[str, Any]) -> bool:
    """True for a decision record (``{"logged_at", "topic", "event": {...}}``)."""
    return isinstance(record.get("event"), dict)


def is_admin(record: dict[str, Any]) -> bool:
    """True for an operator's action recorded by the console (``{"logged_at", "admin": {...}}``)."""
    return isinstance(record.get("admin"), dict)


def admin_record(action: str, token: str, target: Any = None, **details: Any) -> dict[str, Any]:
    """The audit line for one change made through the operator console: ``action`` (e.g. "identity.create"),
    ``token`` (the name of the API token that made it), ``target`` (what it changed) and any ``details``."""
    return {"logged_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "admin": {"action": action, "token": token, "target": target, **details}}
