"""The console's view of the audit log: the decision log (paged, filtered) and the live stream, read from the one log
the daemon writes — never a second copy — plus the console's own admin records (``runtime/audit.py``).

``AuditIndex.refresh`` reads what was appended since the last call (complete lines only: a line still being written
is read next time) and keeps, per decision, a small row (its byte range in the file and the fields the filters
use); a page of results is then read back from the file by byte range. A log that shrank or was replaced (rotation)
is read again from its start. Reviews ("this was not X", admin action ``decision.review``) are kept per event_id
and attached to the decisions they concern. Memory: about 200 bytes per decision (a million decisions ≈ 200 MB).

Thread-safe (one lock); the console's follower task calls ``refresh`` a few times a second and hands the new records
to the live stream.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

log = logging.getLogger(__name__)

#: Longest record line read (bytes); a longer one is skipped as damaged.
MAX_LINE = 1 << 20
#: Bytes read at a time when catching up with the log.
CHUNK = 16 << 20


class Row(NamedTuple):
    """One decision of the log: ``seq`` (its position among decisions, from 0), byte ``offset``/``length`` of its
    line, and the filter fields."""

    seq: int
    offset: int
    length: int
    decided_at: str
    type: str
    door: str
    camera: str
    person_id: str
    person_name: str
    event_id: str


@dataclass(frozen=True)
class Query:
    """Decision-log filters; None = any. ``since``/``until`` aware datetimes (decided_at, until exclusive),
    ``person`` matches the person's id or name exactly; ``before`` a ``seq`` cursor from a previous page."""

    since: datetime | None = None
    until: datetime | None = None
    door: str | None = None
    camera: str | None = None
    type: str | None = None
    person: str | None = None
    before: int | None = None
    limit: int = 50


def _stamp(when: datetime) -> str:
    """The audit log's time format (``signing.rfc3339``), so that stamps compare as strings."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class AuditIndex:
    """Index of the audit log at ``path`` (which may not exist yet)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._reset(None)

    def _reset(self, ino: int | None) -> None:
        self._ino = ino
        self._offset = 0
        self.rows: list[Row] = []
        self._by_event: dict[str, int] = {}
        self.reviews: dict[str, list[dict[str, Any]]] = {}
        self.admin: list[dict[str, Any]] = []

    # ------------------------------------------------------------------------------------------------ reading
    def refresh(self) -> list[dict[str, Any]]:
        """Read the records appended since the last call; returns them (decisions and admin records, in order,
        each decision with ``seq``)."""
        with self._lock:
            try:
                st = self.path.stat()
            except FileNotFoundError:
                if self._ino is not None:
                    self._reset(None)
                return []
            if st.st_ino != self._ino or st.st_size < self._offset:
                self._reset(st.st_ino)  # rotated or truncated: read the new file from its start
            if st.st_size == self._offset:
                return []
            out: list[dict[str, Any]] = []
            with open(self.path, "rb") as f:
                while self._offset < st.st_size:
                    f.seek(self._offset)
                    data = f.read(min(CHUNK, st.st_size - self._offset))
                    end = data.rfind(b"\n") + 1  # complete lines only
                    if end == 0:
                        if len(data) < CHUNK:
                            break  # a line still being written: next time
                        end = len(data)  # a chunk without any newline: damage, skipped
                        log.warning("event=audit_bad_line path=%s offset=%d note=skipped", self.path, self._offset)
                    pos = 0
                    while pos < end:
                        nl = data.find(b"\n", pos, end)
                        nl = end if nl < 0 else nl
                        record = self._parse(data[pos:nl], self._offset + pos)
                        if record is not None:
                            out.append(self._add(record, self._offset + pos, nl - pos))
                        pos = nl + 1
                    self._offset += end
            return out

    def _parse(self, line: bytes, offset: int) -> dict[str, Any] | None:
        if not line.strip() or len(line) > MAX_LINE:
            return None
        try:
            record = json.loads(line.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            log.warning("event=audit_bad_line path=%s offset=%d note=skipped", self.path, offset)
            return None
        return record if isinstance(record, dict) else None

    def _add(self, record: dict[str, Any], offset: int, length: int) -> dict[str, Any]:
        event = record.get("event")
        admin = record.get("admin")
        if isinstance(event, dict):
            row = Row(len(self.rows), offset, length, str(event.get("decided_at") or ""), str(event.get("type")),
                      str(event.get("door")), str(event.get("camera")), _text(event.get("person_id")),
                      _text(event.get("person_name")), str(event.get("event_id")))
            self.rows.append(row)
            self._by_event[row.event_id] = row.seq
            return {**record, "seq": row.seq}
        if isinstance(admin, dict):
            entry = {"logged_at": record.get("logged_at"), **admin}
            self.admin.append(entry)
            if admin.get("action") == "decision.review":
                self.reviews.setdefault(str(admin.get("target")), []).append(entry)
        return record

    def _read(self, row: Row) -> dict[str, Any] | None:
        try:
            with open(self.path, "rb") as f:
                data = os.pread(f.fileno(), row.length, row.offset)
            record = json.loads(data.decode("utf-8"))
        except (OSError, ValueError, UnicodeDecodeError):
            return None
        return record if isinstance(record, dict) else None

    # ------------------------------------------------------------------------------------------------ queries
    def query(self, q: Query) -> tuple[list[dict[str, Any]], int | None]:
        """Decisions matching ``q``, newest first, at most ``q.limit``; returns (records each with ``seq`` and
        ``reviews``, the ``before`` cursor of the next page or None)."""
        self.refresh()
        since = _stamp(q.since) if q.since else None
        until = _stamp(q.until) if q.until else None
        with self._lock:
            rows = self.rows
            start = len(rows) if q.before is None else max(0, min(q.before, len(rows)))
            found: list[Row] = []
            next_cursor = None
            for i in range(start - 1, -1, -1):
                r = rows[i]
                if ((since and r.decided_at < since) or (until and r.decided_at >= until)
                        or (q.door and r.door != q.door) or (q.camera and r.camera != q.camera)
                        or (q.type and r.type != q.type)
                        or (q.person and q.person not in (r.person_id, r.person_name))):
                    continue
                if len(found) == q.limit:
                    next_cursor = found[-1].seq
                    break
                found.append(r)
            reviews = {r.event_id: list(self.reviews.get(r.event_id, [])) for r in found}
        out = []
        for r in found:
            record = self._read(r)
            if record is not None and isinstance(record.get("event"), dict):
                out.append({**record, "seq": r.seq, "reviews": reviews[r.event_id]})
        return out, next_cursor

    def decision(self, event_id: str) -> dict[str, Any] | None:
        """The decision record with ``event_id`` (with ``seq`` and ``reviews``), or None."""
        self.refresh()
        with self._lock:
            seq = self._by_event.get(event_id)
            row = self.rows[seq] if seq is not None else None
            reviews = list(self.reviews.get(event_id, []))
        record = self._read(row) if row is not None else None
        if record is None or not isinstance(record.get("event"), dict):
            return None
        return {**record, "seq": row.seq, "reviews": reviews}

    def last_by(self, field: str) -> dict[str, dict[str, Any]]:
        """The newest decision row per ``door`` or ``camera`` value, as a small dict (type, decided_at, person)."""
        self.refresh()
        out: dict[str, dict[str, Any]] = {}
        with self._lock:
            for r in reversed(self.rows):
                key = getattr(r, field)
                if key not in out:
                    out[key] = {"type": r.type, "decided_at": r.decided_at, "person_name": r.person_name or None,
                                "event_id": r.event_id}
        return out

    def admin_records(self, limit: int = 100) -> list[dict[str, Any]]:
        """The console's own actions, newest first."""
        self.refresh()
        with self._lock:
            return list(reversed(self.admin[-limit:]))


def _text(value: Any) -> str:
    return "" if value is None else str(value)
