"""Confirmed passages: the door agents' reports that a door really opened after a grant, fed back to anti-passback.

A door agent (``facegate door`` with a door contact) publishes ``<prefix>/<door>/passage``:
``{"door", "event_id", "granted_at", "opened_at"}``. Passages are not signed, so one counts only when its
``event_id`` is a grant this daemon itself issued, for that door, within ``KEEP_S`` seconds: a forged or replayed
passage can at most cause an extra anti-passback denial, never an opening. (A broker ACL that lets only each door's
agent publish on its passage topic closes even that.)

``PassageTracker`` is a sink of the emitter (it remembers the grants it sees) and the handler of the passage
subscription; it calls ``AccessRules.record_passage`` for doors with ``anti_passback_confirmed``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from facegate.config import Config
    from facegate.runtime.events import SignedEvent
    from facegate.runtime.mqtt import EventPublisher
    from facegate.runtime.rules import AccessRules

log = logging.getLogger(__name__)

#: A passage is matched to a grant decided at most this long ago (s): a person walks through within seconds.
KEEP_S = 120.0
#: Grants remembered at most (oldest forgotten first): bounds memory whatever the traffic.
MAX_GRANTS = 10_000
#: A passage payload is a few hundred bytes; anything larger is not one.
MAX_PAYLOAD = 4096


class PassageTracker:
    """Sink + passage handler. ``clock``: monotonic seconds (tests inject)."""

    name = "passages"
    critical = False

    def __init__(self, rules: AccessRules, clock: Callable[[], float] = time.monotonic) -> None:
        self.rules = rules
        self.clock = clock
        self._grants: OrderedDict[str, tuple[Any, str, float]] = OrderedDict()  # event_id → (person, door, mono)
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}

    @classmethod
    def from_config(cls, config: Config, rules: AccessRules, publisher: EventPublisher | None) -> PassageTracker | None:
        """A tracker subscribed to ``<prefix>/+/passage`` when a door has ``anti_passback_confirmed`` (the config
        requires a broker for it), else None."""
        if publisher is None or not any(d.anti_passback_confirmed for d in config.doors):
            return None
        tracker = cls(rules)
        publisher.subscribe(f"{config.mqtt.topic_prefix.rstrip('/')}/+/passage", tracker.on_passage)
        return tracker

    def emit(self, event: SignedEvent) -> None:
        """Sink: remember each grant (its event id, person and door)."""
        d = event.decision
        if d.type != "grant":
            return
        with self._lock:
            self._grants[str(event.payload["event_id"])] = (d.identity_id, d.door, self.clock())
            while len(self._grants) > MAX_GRANTS:
                self._grants.popitem(last=False)

    def on_passage(self, topic: str, payload: bytes) -> None:
        """Handle one passage message (untrusted input: never raises; each refusal is counted and logged)."""
        reason = self._check(topic, payload)
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if reason != "confirmed":
            log.warning("event=passage_ignored topic=%s reason=%s", topic, reason)

    def _check(self, topic: str, payload: bytes) -> str:
        if len(payload) > MAX_PAYLOAD:
            return "too_large"
        try:
            message = json.loads(payload)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return "bad_json"
        if not isinstance(message, dict) or not isinstance(message.get("event_id"), str) \
                or not isinstance(message.get("door"), str):
            return "wrong_type"
        parts = topic.split("/")
        if len(parts) < 2 or parts[-2] != message["door"]:
            return "wrong_door"  # the topic names the door whose agent published it
        now = self.clock()
        with self._lock:
            grant = self._grants.pop(message["event_id"], None)  # one passage per grant
        if grant is None:
            return "unknown_grant"
        person, door, at = grant
        if door != message["door"]:
            return "wrong_door"
        if now - at > KEEP_S:
            return "too_late"
        self.rules.record_passage(person, door, now)
        log.info("event=passage_confirmed door=%s person=%s event_id=%s", door, person, message["event_id"])
        return "confirmed"
