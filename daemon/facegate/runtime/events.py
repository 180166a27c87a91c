"""Door event payloads built from decisions, and the emitter that hands each signed payload to the sinks.

Payload (a JSON object, every key always present; times RFC 3339 UTC with microseconds and a ``Z``):

``event_id`` (uuid4 string), ``type`` ("grant" | "deny" | "unknown"), ``person_id`` and ``person_name`` (null for
unknown), ``score`` and ``margin`` (rounded to 6 decimals; margin null when the gallery had no second identity),
``frames_used``, ``camera``, ``door``, ``track_id``, ``reason`` (deny reason or null), ``captured_at``,
``decided_at``, ``expires_at`` (grants: ``decided_at`` + the grant TTL; null for deny/unknown, which open nothing),
``version`` (1), and ``signature`` (``facegate.signing``: the canonical form and how a door verifies it).
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from facegate.errors import ConfigError
from facegate.runtime.audit import audit_record
from facegate.signing import rfc3339, sign_payload

if TYPE_CHECKING:
    from facegate.runtime.audit import AuditLog
    from facegate.runtime.decision import Decision
    from facegate.runtime.mqtt import EventPublisher

log = logging.getLogger(__name__)

PAYLOAD_VERSION = 1


def event_topic(prefix: str, door: str) -> str:
    """``<prefix>/<door>/event``: where a door's events go."""
    return f"{prefix.rstrip('/')}/{door}/event"


def status_topic(prefix: str) -> str:
    """``<prefix>/status``: retained "online"/"offline"."""
    return f"{prefix.rstrip('/')}/status"


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


def build_payload(decision: Decision, *, grant_ttl_s: float = 2.0, event_id: str | None = None) -> dict[str, Any]:
    """The unsigned payload of a ``Decision`` (see the module docstring); grants expire ``grant_ttl_s`` seconds
    after ``decided_at``."""
    expires = rfc3339(decision.decided_at + timedelta(seconds=grant_ttl_s)) if decision.type == "grant" else None
    ident = decision.identity_id
    return {
        "version": PAYLOAD_VERSION,
        "event_id": event_id or str(uuid.uuid4()),
        "type": decision.type,
        "person_id": ident if ident is None or isinstance(ident, int | str) else str(ident),
        "person_name": decision.identity_name,
        "score": _round(decision.score),
        "margin": _round(decision.margin),
        "frames_used": int(decision.frames_used),
        "camera": decision.camera,
        "door": decision.door,
        "track_id": int(decision.track_id),
        "reason": decision.reason,
        "captured_at": rfc3339(decision.captured_at),
        "decided_at": rfc3339(decision.decided_at),
        "expires_at": expires,
    }


class EventEmitter:
    """Decision → signed payload → audit log (fsync) → MQTT. Keyword-only constructor:

    * ``signing_key``: bytes from ``load_signing_key``;
    * ``audit``: an ``AuditLog`` or None; ``publisher``: an ``EventPublisher`` or None (no broker: logged only);
    * ``topic_prefix``: used for the audit record's topic when there is no publisher;
    * ``grant_ttl_s``: grant lifetime in seconds (default 2).

    ``emit`` returns the signed payload. When the audit write fails the event is NOT published (every published
    event must be in the audit log) and the ``OSError`` propagates.
    """

    def __init__(
        self,
        *,
        signing_key: bytes,
        audit: AuditLog | None,
        publisher: EventPublisher | None,
        topic_prefix: str = "facegate",
        grant_ttl_s: float = 2.0,
    ) -> None:
        if not signing_key:
            raise ConfigError("events: the signing key is empty")
        if grant_ttl_s <= 0:
            raise ConfigError(f"events: grant_ttl_s must be > 0 seconds, got {grant_ttl_s}")
        self.key = signing_key
        self.audit = audit
        self.publisher = publisher
        self.topic_prefix = publisher.topic_prefix if publisher is not None else topic_prefix
        self.grant_ttl_s = grant_ttl_s

    def emit(self, decision: Decision) -> dict[str, Any]:
        payload = sign_payload(build_payload(decision, grant_ttl_s=self.grant_ttl_s), self.key)
        topic = event_topic(self.topic_prefix, decision.door) if self.publisher is not None else None
        if self.audit is not None:
            self.audit.append(audit_record(payload, topic))
        if self.publisher is not None:
            self.publisher.publish_event(payload)
        return payload
