"""Snapshot retention: the face crop of each decision, kept for ``snapshots.retention_hours`` and then deleted.

Off by default (``snapshots.enabled``): a kept crop is a face image of everyone who walked past a camera, enrolled or
not — README "Operator console" states the trade-off. When on, ``SnapshotSink`` (a non-critical sink placed after
the audit log and the MQTT publisher, so a slow disk never delays a door) writes ``<event_id>.jpg`` — the JPEG of
``Decision.face_crop`` — into a folder created 0700, each file 0600. ``purge`` (called from the service loop, off the
decision path) deletes crops older than the retention. The operator console reads the same folder through
``snapshot_path`` to show a decision's face and to enrol a correctly recognised unknown from it.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

import cv2

if TYPE_CHECKING:
    from facegate.config import Config
    from facegate.runtime.events import SignedEvent

log = logging.getLogger(__name__)

#: event_id as the emitter makes it (uuid4); anything else never becomes a file name.
_EVENT_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
#: How often the service loop purges old crops (s).
PURGE_EVERY_S = 60.0


def snapshots_folder(config: Config, state: Path) -> Path:
    """``snapshots.path``, else ``snapshots/`` in the state folder ``state``."""
    return Path(config.snapshots.path) if config.snapshots.path else state / "snapshots"


def snapshot_path(folder: Path, event_id: str) -> Path | None:
    """The crop file of ``event_id`` in ``folder``, or None when ``event_id`` is not a uuid (never a path made from
    untrusted text)."""
    return folder / f"{event_id}.jpg" if _EVENT_ID.match(event_id or "") else None




class SnapshotSink:
    """Sink writing each decision's face crop; ``purge_if_due`` deletes old ones. ``folder`` is created 0700."""

    name = "snapshots"
    critical = False

    def __init__(self, folder: str | os.PathLike[str], retention_hours: float = 24.0, jpeg_quality: int = 90,
                 clock=time.time) -> None:
        self.folder = Path(folder)
        self.retention_s = retention_hours * 3600.0
        self.quality = int(jpeg_quality)
        self._clock = clock
        self._last_purge = 0.0
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.folder, 0o700)  # an existing folder keeps no wider bits

    @classmethod
    def from_config(cls, config: Config, state: Path) -> SnapshotSink | None:
        """The sink of ``config.snapshots`` (None when off)."""
        s = config.snapshots
        if not s.enabled:
            return None
        sink = cls(snapshots_folder(config, state), s.retention_hours, s.jpeg_quality)
        log.warning("event=snapshots_enabled folder=%s retention_hours=%g note=face_images_of_every_decision_kept",
                    sink.folder, s.retention_hours)
        return sink

    def emit(self, event: SignedEvent) -> None:
        crop = event.decision.face_crop
        path = snapshot_path(self.folder, str(event.payload.get("event_id")))
        if crop is None or path is None:
            return
        ok, jpeg = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            log.warning("event=snapshot_encode_failed event_id=%s", event.payload.get("event_id"))
            return
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, jpeg.tobytes())
        finally:
            os.close(fd)

    def purge_if_due(self, every_s: float = PURGE_EVERY_S) -> int:
        """``purge`` at most once per ``every_s`` seconds; returns the number deleted."""
        now = self._clock()
        if now - self._last_purge < every_s:
            return 0
        self._last_purge = now
        return self.purge(now)

    def purge(self, now: float | None = None) -> int:
        """Delete crops whose file is older than the retention (by modification time). Returns how many."""
        cutoff = (self._clock() if now is None else now) - self.retention_s
        deleted = 0
        try:
            entries = list(os.scandir(self.folder))
        except OSError as exc:
            log.error("event=snapshot_purge_failed folder=%s error=%r", self.folder, exc.strerror)
            return 0
        for entry in entries:
            if not entry.name.endswith(".jpg"):
                continue
            try:
                if entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    deleted += 1
            except FileNotFoundError:
                continue  # the console or another purge removed it
            except OSError as exc:
                log.error("event=snapshot_purge_failed file=%s error=%r", entry.path, exc.strerror)
        if deleted:
            log.info("event=snapshots_purged deleted=%d retention_hours=%g", deleted, self.retention_s / 3600)
        return deleted
