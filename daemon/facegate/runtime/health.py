"""The daemon's health: which part of it is degraded now, why, since when and how often, in one thread-safe registry.

Parts report problems themselves (``problem``) and say when they are over (``clear``): the gallery
(``runtime/matching.py``: unreadable, corrupt or replaced), the audit log (``runtime/audit.py``: a record that
could not be made durable), inference (``runtime/inference.py``: a model that fails at run time), MQTT
(``runtime/mqtt.py``: broker away, client id taken over) and the cameras (``runtime/capture.py``). An *episode* is
the time from a part's first problem to its ``clear``. Logging is per episode, never per occurrence:

* ``event=degraded part=P reason=… effect=…`` when an episode starts (``effect`` says what the daemon does
  meanwhile, e.g. ``no_grants`` for the gallery);
* ``event=still_degraded part=P count=N for_s=…`` at most once per ``REMIND_S`` while it lasts;
* ``event=recovered part=P after_s=… count=N`` when it ends (``count``: occurrences in the episode, e.g. events
  the audit log could not record).

A part whose problem comes and goes with every frame (a model failing on some batches only, a disk with room for
some records) must not log a pair of lines per frame: its reporter clears with ``settle_s`` (``SETTLE_S``), and
the episode ends only once no problem was reported for that long, so a flapping part is one long episode whose
count grows.

``state`` is ``"ok"`` or ``"degraded"`` (any part with a problem); ``snapshot()`` is a JSON-able dict for the
MQTT ``<prefix>/health`` topic and future consumers (metrics, console, Home Assistant). ``subscribe(fn)`` calls
``fn()`` (no arguments: read ``snapshot()`` then) after every change of a part's state or reason, from the
reporting thread, outside the registry's lock; a failing listener is logged and never stops the reporter.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from facegate.signing import rfc3339

log = logging.getLogger(__name__)

#: While an episode lasts, one reminder line at most this often (s).
REMIND_S = 60.0
#: The parts every snapshot lists from the start (``decision:<camera>`` parts appear when they first report).
PARTS = ("gallery", "audit", "inference", "mqtt", "cameras")
#: What the daemon does while each known part is degraded (the ``effect`` of the ``degraded`` line; a part
#: ``name:detail`` takes the effect of ``name``).
EFFECTS: dict[str, str] = {
    "gallery": "no_grants_until_recovered",
    "audit": "events_not_published_until_recorded",
    "inference": "no_decisions",
    "mqtt": "events_queued_grants_expire",
    "cameras": "no_decisions_from_those_cameras",
    "decision": "no_decisions_from_that_camera",
    "threshold": "no_grants_until_the_goal_is_met",
}
#: How long (s) a flapping part must stay free of problems before its episode ends (reporters that clear after
#: every good frame or record pass it to ``clear``).
SETTLE_S = 2.0
#: Reasons are cut to this many characters (a status topic, not a traceback).
REASON_MAX = 300
#: A reason that changes within an episode (e.g. an error naming each batch's shape) is passed on to listeners at
#: most this often (s), so a flapping message cannot flood the status topic.
RENOTIFY_S = 5.0


@dataclass
class _Part:
    reason: str | None = None
    since: float | None = None  # monotonic s when the episode started
    since_wall: datetime | None = None
    count: int = 0  # occurrences in the current episode
    episodes: int = 0  # episodes since start
    reminded: float = 0.0
    notified: float = 0.0  # monotonic s listeners last heard of this part
    last_problem: float = 0.0  # monotonic s of the latest problem report

    @property
    def ok(self) -> bool:
        return self.reason is None


class Health:
    """Registry of part states (see the module docstring). ``parts``: the part names listed in every snapshot
    even before they report (others are added on first report); ``clock``: monotonic seconds (tests)."""

    def __init__(self, parts: tuple[str, ...] = PARTS, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._parts: dict[str, _Part] = {name: _Part() for name in parts}
        self._listeners: list[Callable[[], None]] = []

    # ---------------------------------------------------------------------------------------------- reporting
    def problem(self, part: str, reason: str, count: int = 1) -> None:
        """``part`` has a problem (``reason``: short, human-readable); ``count`` occurrences more. Starts an
        episode (one ``degraded`` line) when the part was ok; a new reason within an episode replaces the old
        one (listeners are told, at most every ``RENOTIFY_S``; nothing is logged)."""
        reason = " ".join(str(reason).split())[:REASON_MAX] or "unspecified"
        now = self._clock()
        with self._lock:
            p = self._parts.setdefault(part, _Part())
            started = p.ok
            changed = started or (p.reason != reason and now - p.notified >= RENOTIFY_S)
            if changed:
                p.notified = now
            if started:
                p.since, p.since_wall, p.count, p.reminded = now, datetime.now(UTC), 0, now
                p.episodes += 1
            p.reason = reason
            p.count += count
            p.last_problem = now
            remind = not started and now - p.reminded >= REMIND_S
            if remind:
                p.reminded = now
            since, total = p.since or now, p.count
        if started:
            effect = EFFECTS.get(part.split(":")[0], "see_reason")
            log.warning("event=degraded part=%s reason=%r effect=%s", part, reason, effect)
        elif remind:
            log.warning("event=still_degraded part=%s reason=%r count=%d for_s=%.0f", part, reason, total,
                        now - since)
        if changed:
            self._notify()

    def clear(self, part: str, settle_s: float = 0.0) -> bool:
        """``part`` works again: ends its episode (one ``recovered`` line), unless a problem was reported less than
        ``settle_s`` seconds ago (then the episode goes on; call again later). Returns True when an episode ended;
        a part that was ok stays silent."""
        now = self._clock()
        with self._lock:
            p = self._parts.get(part)
            if p is None or p.ok or now - p.last_problem < settle_s:
                return False
            after, count = now - (p.since or now), p.count
            p.reason, p.since, p.since_wall = None, None, None
        log.info("event=recovered part=%s after_s=%.2f count=%d", part, after, count)
        self._notify()
        return True

    # ---------------------------------------------------------------------------------------------- reading
    @property
    def state(self) -> str:
        """``"ok"`` when no part has a problem, else ``"degraded"``."""
        with self._lock:
            return "ok" if all(p.ok for p in self._parts.values()) else "degraded"

    def degraded(self, part: str) -> bool:
        """True while ``part`` is in an episode."""
        with self._lock:
            p = self._parts.get(part)
            return p is not None and not p.ok

    def failing_for(self, part: str) -> float:
        """Seconds ``part`` has been degraded (0 when ok)."""
        with self._lock:
            p = self._parts.get(part)
            return 0.0 if p is None or p.since is None else self._clock() - p.since

    def snapshot(self) -> dict[str, Any]:
        """``{"state": "ok"|"degraded", "at": RFC 3339 UTC, "parts": {name: {"state", "reason", "since",
        "count", "episodes"}}}``; ``reason``/``since`` are null for a part that is ok, ``count`` is the current
        episode's occurrences, ``episodes`` counts every episode since start."""
        with self._lock:
            parts = {
                name: {"state": "ok" if p.ok else "degraded", "reason": p.reason,
                       "since": rfc3339(p.since_wall) if p.since_wall else None,
                       "count": p.count if not p.ok else 0, "episodes": p.episodes}
                for name, p in sorted(self._parts.items())
            }
        state = "ok" if all(v["state"] == "ok" for v in parts.values()) else "degraded"
        return {"state": state, "at": rfc3339(datetime.now(UTC)), "parts": parts}

    # ---------------------------------------------------------------------------------------------- listeners
    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every change (see the module docstring)."""
        with self._lock:
            self._listeners.append(listener)

    def _notify(self) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for fn in listeners:
            try:
                fn()
            except Exception:  # a consumer's bug must not break the part that reports
                log.exception("event=health_listener_failed listener=%r", fn)
