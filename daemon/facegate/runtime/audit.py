"""Append-only audit log: one JSON object per line, fsync'd before the caller goes on (i.e. before publishing).

Durability first. ``append`` returns only once the complete line is written and ``fsync`` succeeded; otherwise it
raises ``AuditWriteError`` (an ``OSError``) and the emitter stops the event there: nothing is published or printed
that has no complete, durable audit line.

Faults (a full or failing file system). A write can stop half-way (``ENOSPC`` after part of the line) or ``fsync``
can fail: the line is then *torn*. Before the next record the writer repairs it: it truncates the file back to the
end of the last durable line (``ftruncate``); if that fails too it starts the next record on a fresh line (a
newline first), so a record is never appended onto a partial line and every complete line stays parseable. The
daemon keeps deciding meanwhile and retries at every event; the episode is reported once through ``Health``
(part ``audit``: one ``degraded`` line, and a ``recovered`` line with the number of events that were not recorded,
hence not published), never as a traceback per decision. When space returns the next event is recorded: recovery
needs no restart.

Opening an existing log appends to it. A crash can leave a torn last line (no newline); on opening, the writer does
not rewrite what an earlier process wrote: it appends a newline first so the next record starts on a line of its
own, and ``read_audit`` skips any line that is not a JSON object with a warning naming the file and line number.

Rotation: ``reopen`` (SIGHUP, after logrotate renamed the file; ``systemd/facegate.logrotate``) opens ``path``
afresh, creating it when it was moved away; records written between the rename and the signal are in the renamed
file, complete. ``copytruncate`` must not be used: it loses what is written between its copy and its truncation.
"""

from __future__ import annotations

import contextlib
import errno
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
        self._fd, self._good = self._open()
        self._torn = False  # a write or fsync failed after the last durable line: repair before the next record

    def _open(self) -> tuple[int, int]:
        """Open ``path`` for appending (end of its last line ensured); returns (fd, size = end of the last line)."""
        try:
            fd = open_private(self.path, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            raise ConfigError(f"audit log {self.path}: cannot open for appending ({exc.strerror}); "
                              "check the path and the service user's permissions") from exc
        try:
            size = os.fstat(fd).st_size
            if size:
                with open(self.path, "rb") as f:
                    f.seek(size - 1)
                    last = f.read(1)
                if last != b"\n":
                    log.warning("event=audit_torn_line path=%s action=newline_appended", self.path)
                    os.write(fd, b"\n")
                    os.fsync(fd)
                    size += 1
        except OSError as exc:
            os.close(fd)
            raise ConfigError(f"audit log {self.path}: cannot repair its torn last line ({exc.strerror}); "
                              "free space on its file system or move the file away") from exc
        return fd, size

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
                if self._torn:
                    self._repair()
                self._write(data)
            except OSError as exc:
                self.health.problem("audit", f"{self.path}: {exc.strerror or exc}")  # one line per episode
                raise AuditWriteError(exc.errno or errno.EIO,
                                      f"audit log {self.path}: record not written ({exc.strerror or exc})") from None
            self._good = os.fstat(self._fd).st_size
        # its "recovered" line counts the records lost; a disk with room for some records only is one episode
        self.health.clear("audit", settle_s=SETTLE_S)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            os.fsync(self._fd)
        except OSError:
            self._torn = True  # part of the line (or all of it, not durable) may be in the file
            raise

    def _repair(self) -> None:
        """Remove a torn line: truncate to the last durable line, else start a fresh line. Raises ``OSError``
        when neither works (the record is then not written either)."""
        try:
            os.ftruncate(self._fd, self._good)
            os.fsync(self._fd)
        except OSError as exc:
            log.debug("event=audit_truncate_failed error=%s action=fresh_line", exc)
            os.write(self._fd, b"\n")  # a torn fragment then stands alone on its line (read_audit skips it)
            os.fsync(self._fd)
            self._good = os.fstat(self._fd).st_size
        self._torn = False

    def reopen(self) -> None:
        """Open ``path`` again (SIGHUP after a rotation); the old file is closed once the new one is open. When
        the new one cannot be opened the old one is kept and the problem logged."""
        try:
            fd, good = self._open()
        except ConfigError as exc:
            log.error("event=audit_reopen_failed error=%r note=still_writing_the_old_file", str(exc))
            return
        with self._lock:
            if self._torn and self._fd >= 0:
                with contextlib.suppress(OSError):  # leave the old file without a torn last line if it can be
                    self._repair()
            old, self._fd, self._good, self._torn = self._fd, fd, good, False
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
