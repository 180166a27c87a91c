"""Append-only audit log: one JSON object per line, fsync'd before the caller goes on (i.e. before publishing).

Two kinds of record share the log: a decision (``{"logged_at", "topic", "event": <signed payload>}``, written by the
daemon) and an operator's action (``{"logged_at", "admin": {"action", "token", "target", ...}}``, written by the
operator console, a separate process). Readers tell them apart with ``is_decision`` / ``is_admin``. Both writers
append each record with one ``write()`` on an ``O_APPEND`` descriptor while holding an exclusive ``flock`` on the
file, so records of the two processes never interleave.

Opening an existing log appends to it. A crash can leave a torn last line (no newline); the writer never rewrites
it: on opening it appends a newline first so the next record starts on a line of its own, and ``read_audit`` skips
any line that is not a JSON object with a warning naming the file and line number.
"""

from __future__ import annotations

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

if TYPE_CHECKING:
    from facegate.config import Config
    from facegate.runtime.events import SignedEvent

log = logging.getLogger(__name__)


class AuditLog:
    """Writer for ``path`` (created with mode 0640, parent folders too). Thread-safe.

    Raises ``ConfigError`` when the file cannot be opened for appending; ``append`` raises ``OSError`` when the
    record cannot be written and synced (the caller must then not publish it). As the emitter's first sink
    (``emit``) it is critical: an event it cannot record goes no further.
    """

    name = "audit"
    critical = True

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as exc:
            raise ConfigError(f"audit log {self.path}: cannot open for appending ({exc.strerror}); "
                              "check the path and the service user's permissions") from exc
        fcntl.flock(self._fd, fcntl.LOCK_EX)  # another writer's record is never taken for a torn line
        try:
            size = os.fstat(self._fd).st_size
            if size:
                with open(self.path, "rb") as f:
                    f.seek(size - 1)
                    if f.read(1) != b"\n":
                        log.warning("event=audit_torn_line path=%s action=newline_appended", self.path)
                        os.write(self._fd, b"\n")
                        os.fsync(self._fd)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    @classmethod
    def from_config(cls, config: Config, state: Path) -> AuditLog:
        """The log at ``audit.path``, else ``audit.jsonl`` in the state folder ``state``."""
        audit = cls(config.audit.path or state / "audit.jsonl")
        log.info("event=audit_log path=%s", audit.path)
        return audit

    def emit(self, event: SignedEvent) -> None:
        """Sink: the event's audit record (``audit_record``), durable before the next sink runs."""
        self.append(audit_record(event.payload, event.topic))

    def append(self, record: dict[str, Any]) -> None:
        """Write ``record`` (JSON-serialisable dict) as one line and fsync it."""
        line = json.dumps(record, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str) + "\n"
        data = line.encode("utf-8")
        with self._lock:
            if self._fd < 0:
                raise OSError(f"audit log {self.path} is closed")
            fcntl.flock(self._fd, fcntl.LOCK_EX)  # the console appends to the same file from another process
            try:
                view = memoryview(data)
                while view:  # one write() on Linux for a regular file; the loop only guards a short write
                    written = os.write(self._fd, view)
                    view = view[written:]
                os.fsync(self._fd)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

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


def audit_record(payload: dict[str, Any], topic: str | None) -> dict[str, Any]:
    """The audit line for one event: the signed payload, its topic (None without a broker) and when it was logged."""
    return {"logged_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "topic": topic, "event": payload}
