"""Door event payloads: building them from decisions, HMAC signing and verification, the signing key file.

Payload (a JSON object, every key always present; times RFC 3339 UTC with microseconds and a ``Z``):

``event_id`` (uuid4 string), ``type`` ("grant" | "deny" | "unknown"), ``person_id`` and ``person_name`` (null for
unknown), ``score`` and ``margin`` (rounded to 6 decimals; margin null when the gallery had no second identity),
``frames_used``, ``camera``, ``door``, ``track_id``, ``reason`` (deny reason or null), ``captured_at``,
``decided_at``, ``expires_at`` (grants: ``decided_at`` + the grant TTL; null for deny/unknown, which open nothing),
``version`` (1), and ``signature``.

Signature: HMAC-SHA256 (RFC 2104, ``hmac``/``hashlib``) with the key file's bytes over the canonical payload:
the object without ``signature``, serialised as UTF-8 JSON with sorted keys, separators ``(",", ":")`` and
non-ASCII characters kept as UTF-8 (``ensure_ascii=False``); lowercase hex. A controller verifies by parsing the
message, removing ``signature``, re-serialising the same way and comparing in constant time, then checks that
``type`` is grant, ``expires_at`` is in the future and ``event_id`` was not seen before (replay).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import stat
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facegate.errors import ConfigError
from facegate.runtime.audit import audit_record

if TYPE_CHECKING:
    from facegate.runtime.audit import AuditLog
    from facegate.runtime.decision import Decision
    from facegate.runtime.mqtt import EventPublisher

log = logging.getLogger(__name__)

PAYLOAD_VERSION = 1
MIN_KEY_BYTES = 32  # RFC 2104 §3: keys shorter than the hash output (32 bytes for SHA-256) weaken the MAC


def rfc3339(when: datetime) -> str:
    """Aware datetime → 'YYYY-MM-DDTHH:MM:SS.ffffffZ' in UTC. Raises ValueError for a naive datetime."""
    if when.tzinfo is None:
        raise ValueError("rfc3339 needs a timezone-aware datetime")
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_rfc3339(text: str) -> datetime:
    """Inverse of ``rfc3339`` (accepts any RFC 3339 offset) → aware datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


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


def canonical_bytes(payload: dict[str, Any]) -> bytes:
    """UTF-8 JSON of ``payload`` without ``signature``: sorted keys, no spaces, non-ASCII kept."""
    body = {k: v for k, v in payload.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def sign_payload(payload: dict[str, Any], key: bytes) -> dict[str, Any]:
    """A copy of ``payload`` with ``signature`` = hex HMAC-SHA256(key, canonical_bytes(payload))."""
    signed = dict(payload)
    signed["signature"] = hmac.new(key, canonical_bytes(payload), hashlib.sha256).hexdigest()
    return signed


def verify_payload(payload: dict[str, Any], key: bytes) -> bool:
    """True when ``payload['signature']`` is the HMAC of the rest (``hmac.compare_digest``, constant time)."""
    sig = payload.get("signature")
    if not isinstance(sig, str):
        return False
    try:
        expected = hmac.new(key, canonical_bytes(payload), hashlib.sha256).hexdigest()
    except (TypeError, ValueError):
        return False
    return hmac.compare_digest(expected, sig)


def encode_payload(payload: dict[str, Any]) -> bytes:
    """Wire form of a (signed) payload: the same canonical JSON, signature included."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def load_signing_key(path: str | os.PathLike[str]) -> bytes:
    """The HMAC key: the file's bytes with surrounding whitespace stripped (e.g. ``openssl rand -hex 32 > key``).

    Raises ``ConfigError`` naming the file when it is missing, unreadable, empty, or readable/writable by others
    (mode must deny "other": ``chmod 600`` or ``640``). Keys under 32 bytes are accepted with a warning.
    """
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ConfigError(f"signing key {p}: file not found; create one with "
                          f"'umask 077; openssl rand -hex 32 > {p}'") from None
    except OSError as exc:
        raise ConfigError(f"signing key {p}: cannot stat ({exc.strerror})") from exc
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"signing key {p}: not a regular file")
    if st.st_mode & (stat.S_IROTH | stat.S_IWOTH):
        raise ConfigError(f"signing key {p}: readable or writable by other users (mode {stat.filemode(st.st_mode)}); "
                          f"run 'chmod 600 {p}'")
    try:
        key = p.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"signing key {p}: cannot read ({exc.strerror}); check the service user's access") from exc
    if not key:
        raise ConfigError(f"signing key {p}: file is empty; write a secret into it ('openssl rand -hex 32')")
    if len(key) < MIN_KEY_BYTES:
        log.warning("event=weak_signing_key path=%s bytes=%d recommended=%d", p, len(key), MIN_KEY_BYTES)
    return key


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
