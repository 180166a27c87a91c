"""``state.json``: what the running daemon is doing, rewritten about once a second for the operator console.

The console is another process (``facegate admin``); it reads this file instead of asking the daemon, so no web
request ever reaches the decision path. The service loop calls ``StateFile.tick`` (every 0.2 s; the file is written
when ``every_s`` has passed) and ``close`` at shutdown (``running: false``). Each write is a temporary file renamed
over the old one (readers see the old or the new file, never half of one), mode 0640, not fsync'd: after a crash
the file is simply old, and a reader treats a file older than ``admin.state_stale_s`` as a daemon that is down.

Contents (``daemon_state``; JSON object, times RFC 3339 UTC): ``version`` (1), ``written_at``, ``started_at``,
``pid``, ``running``, ``cameras`` (per id: ``CaptureStage.snapshot()`` plus ``door``), ``doors`` (id, cameras,
allowed_groups, schedule, cooldown_s, anti_passback, exit), ``pack`` (name, metric, threshold in force and its
source, the pack's operating point, execution providers), ``decision`` (k, n, margin), ``liveness``,
``inference`` (counters), ``decisions`` (``DecisionStats.summary()``), ``mqtt`` (null without a broker),
``gallery``, ``snapshots``, ``metrics`` (URL or null) and ``health`` (the ``Health`` registry's snapshot when the
stages carry one, else null).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from facegate.config import Config

log = logging.getLogger(__name__)

STATE_VERSION = 1
#: Seconds between writes.
WRITE_EVERY_S = 1.0


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class StateFile:
    """Writer of ``path`` (``state.json`` in the state folder). Not thread-safe: the service loop owns it."""

    def __init__(self, path: str | os.PathLike[str], every_s: float = WRITE_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.every_s = every_s
        self.started_at = _now()
        self._clock = clock
        self._last = -float("inf")
        self._failing = False

    @classmethod
    def from_config(cls, config: Config, state: Path) -> StateFile:
        """``state.json`` in the state folder ``state``."""
        return cls(state / "state.json")

    def tick(self, collect: Callable[[], dict[str, Any]]) -> bool:
        """Write ``collect()`` when ``every_s`` has passed since the last write; returns whether it wrote."""
        now = self._clock()
        if now - self._last < self.every_s:
            return False
        self._last = now
        return self.write(collect())

    def write(self, state: dict[str, Any]) -> bool:
        """Replace the file with ``state`` plus ``written_at``, ``started_at`` and ``pid``. A failure (full disk) is
        logged once per episode and returns False: the console then sees an old file, i.e. a daemon that is down."""
        body = {"version": STATE_VERSION, "written_at": _now(), "started_at": self.started_at, "pid": os.getpid(),
                **state}
        data = json.dumps(body, ensure_ascii=False, sort_keys=True, default=str).encode("utf-8")
        try:
            fd, tmp = tempfile.mkstemp(prefix=".state.", suffix=".tmp", dir=self.path.parent)
            try:
                os.fchmod(fd, 0o640)
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            if not self._failing:
                log.error("event=state_file_failed path=%s error=%r note=console_shows_daemon_down", self.path,
                          exc.strerror or str(exc))
            self._failing = True
            return False
        if self._failing:
            log.warning("event=state_file_recovered path=%s", self.path)
        self._failing = False
        return True

    def close(self, collect: Callable[[], dict[str, Any]] | None = None) -> None:
        """Last write at shutdown: ``running`` false (with ``collect()``'s other fields when given)."""
        try:
            state = collect() if collect is not None else {}
        except Exception:  # a half-stopped stage: say at least that the daemon stopped
            state = {}
        self.write({**state, "running": False})


def daemon_state(stages: Any, config: Config, *, running: bool = True) -> dict[str, Any]:
    """The ``state.json`` body (without the fields ``StateFile.write`` adds) of the service's ``Stages`` and the
    config in force (see the module docstring). ``stages`` is duck-typed: capture, inference, engine, gallery,
    stats, publisher, and optional ``metrics``, ``snapshots`` and ``health``."""
    engine = stages.engine
    cam_doors = dict(engine.camera_doors)
    cameras = {cid: {**snap, "door": cam_doors.get(cid)} for cid, snap in stages.capture.snapshot().items()}
    doors = []
    for d in config.doors:
        doors.append({
            "id": d.id, "cameras": sorted(c for c, door in cam_doors.items() if door == d.id),
            "allowed_groups": d.allowed_groups, "cooldown_s": d.cooldown_s, "anti_passback": d.anti_passback,
            "exit": d.exit,
            "schedule": None if d.schedule is None else {
                "timezone": d.schedule.timezone,
                "windows": [{"days": list(w.days), "start": w.start.isoformat(), "end": w.end.isoformat()}
                            for w in d.schedule.windows]},
        })
    pipeline = stages.inference.pipeline
    manifest = pipeline.manifest
    op = getattr(manifest, "operating_point", None)
    inf = stages.inference.stats
    pub = stages.publisher
    metrics = getattr(stages, "metrics", None)
    snaps = getattr(stages, "snapshots", None)
    health = getattr(stages, "health", None)
    return {
        "running": running,
        "cameras": cameras,
        "doors": doors,
        "pack": {
            "name": manifest.name, "metric": engine.scorer.metric, "threshold": engine.scorer.threshold,
            "threshold_source": engine.scorer.basis.source if engine.scorer.basis is not None else "injected",
            "threshold_basis": engine.scorer.basis.to_json() if engine.scorer.basis is not None else None,
            "operating_point": op.model_dump() if hasattr(op, "model_dump") else None,
            "providers": list(pipeline.providers),
        },
        "decision": {"k": engine.config.k, "n": engine.config.n, "margin": engine.margins.margin,
                     "lookalike_margin": engine.margins.lookalike},
        "liveness": {"enabled": engine.liveness is not None,
                     "threshold": engine.liveness.threshold if engine.liveness is not None else None},
        "inference": {"cycles": inf.cycles, "frames": inf.frames, "faces": inf.faces, "errors": inf.errors,
                      "last_cycle_ms": round(1000 * inf.last_cycle_s, 1)},
        "decisions": stages.stats.summary(),
        "mqtt": None if pub is None else {
            "host": pub.host, "port": pub.port, "connected": pub.connected.is_set(), "queued": pub.queued,
            "last_error": pub.last_error, **{k: int(v) for k, v in dict(pub.stats).items()}},
        "gallery": {"identities": stages.gallery.identities, "stale": stages.gallery.stale},
        "snapshots": {"enabled": snaps is not None,
                      "retention_hours": config.snapshots.retention_hours if snaps is not None else None},
        "metrics": None if metrics is None or metrics.url is None else {"url": metrics.url},
        "health": health.snapshot() if health is not None and hasattr(health, "snapshot") else None,
    }
