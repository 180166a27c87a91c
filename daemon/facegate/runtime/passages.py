"""Confirmed passages: the door agents' reports that a door really opened after a grant, fed back to anti-passback.

A door agent (``facegate door`` with a door contact) publishes ``<prefix>/<door>/passage``:
``{"type": "passage", "door", "event_id", "granted_at", "opened_at"}``, signed (version 2, Ed25519) with the
agent's own key. One counts only when it is typed ``passage``, the signature verifies with that door's
``passage_public_key`` and its ``event_id`` is a grant this daemon itself issued, for that door, within ``KEEP_S``
seconds, once. The signature is needed: an exit door's passage clears the person's entry, so a forged passage for a
real exit grant nobody walked through would let that person in again (found by attacking the first, unsigned
version). Each door has its own key, never the daemon's event key (refused at start), so one door's agent cannot
confirm passages at another door, and the type keeps a republished grant event from passing for a passage.

``PassageTracker`` is a sink of the emitter (it remembers the grants it sees) and the handler of the passage
subscription; it calls ``AccessRules.record_passage`` for doors with ``anti_passback_confirmed``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from facegate.config_rules import passage_keys_problem
from facegate.errors import ConfigError
from facegate.signing import key_id, load_public_key, verify_signature

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

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
    """Sink + passage handler. ``door_keys``: door id → the Ed25519 public key its agent signs passages with (a door
    without one has every passage refused); ``clock``: monotonic seconds (tests inject)."""

    name = "passages"
    critical = False

    def __init__(self, rules: AccessRules, door_keys: Mapping[str, Ed25519PublicKey],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rules = rules
        self._keys = {door: {key_id(key): key} for door, key in door_keys.items()}
        self.clock = clock
        self._grants: OrderedDict[str, tuple[Any, str, float]] = OrderedDict()  # event_id → (person, door, mono)
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}

    @classmethod
    def from_config(cls, config: Config, rules: AccessRules, publisher: EventPublisher | None,
                    event_kid: str | None = None) -> PassageTracker | None:
        """A tracker subscribed to ``<prefix>/+/passage`` when a door has ``anti_passback_confirmed`` (the config
        requires a broker and the door's ``passage_public_key`` for it), else None. Raises ``ConfigError`` when a
        passage key does not load, is the daemon's own event key (``event_kid``: its signed grants would pass as
        passages) or is shared by two doors (one agent could confirm the other's)."""
        if publisher is None or not any(d.anti_passback_confirmed for d in config.doors):
            return None
        keys = {d.id: load_public_key(d.passage_public_key) for d in config.doors
                if d.anti_passback_confirmed and d.passage_public_key}
        if problem := passage_keys_problem({door: key_id(k) for door, k in keys.items()}, event_kid):
            raise ConfigError(problem)
        tracker = cls(rules, keys)
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
        if message.get("type") != "passage":
            return "not_passage"  # e.g. a signed grant event republished here: never a passage, whatever key
        parts = topic.split("/")
        if len(parts) < 2 or parts[-2] != message["door"]:
            return "wrong_door"  # the topic names the door whose agent published it
        if "signature" not in message:
            return "unsigned"
        if problem := verify_signature(message, public_keys=self._keys.get(message["door"], {})):
            return problem  # version 2 only: no HMAC key is given, so a version-1 form is hmac_not_allowed
        now = self.clock()
        with self._lock:
            grant = self._grants.get(message["event_id"])
            if grant is None:
                return "unknown_grant"
            person, door, at = grant
            if door != message["door"]:
                return "wrong_door"  # not consumed: another door's agent cannot cancel this grant's passage
            del self._grants[message["event_id"]]  # one passage per grant
        if now - at > KEEP_S:
            return "too_late"
        self.rules.record_passage(person, door, now)
        log.info("event=passage_confirmed door=%s person=%s event_id=%s", door, person, message["event_id"])
        return "confirmed"
