"""The door's verifier: one MQTT message in, one ``Verdict`` out. Never raises, whatever the bytes.

``check_event`` opens (``Verdict.ok``) only when every check below holds, in this order; the first that fails is the
``reason`` (a short, stable word for counting and logging):

1. ``not_bytes``: the message is not bytes/str. ``too_large``: more than ``max_bytes`` (a real event is ~600 B).
2. ``bad_json``: not UTF-8 JSON (NaN/Infinity literals, nesting too deep and over-long numbers included);
   ``duplicate_key``: a key appears twice in one object (parsers disagree on which one wins);
   ``not_object``: the top level is not an object.
3. ``missing_key``: one of ``version``, ``event_id``, ``type``, ``door``, ``decided_at``, ``expires_at``,
   ``signature`` (and ``alg``, ``kid`` for version 2) is absent; ``wrong_type``: one of them has the wrong JSON type;
   ``bad_event_id``: an event id that is empty or longer than 128 characters.
4. The signature (``facegate.signing.verify_signature``): ``unsupported_version``, ``bad_alg``, ``unknown_key``,
   ``hmac_not_allowed`` (a version-1 HMAC event while the door requires Ed25519), ``bad_signature``.
   Nothing after this point is looked at before the message is known to come from the daemon.
5. ``wrong_door``: ``door`` is not this door's id (a grant for one door copied onto another door's topic).
6. ``not_grant``: ``type`` is not ``accept_type`` ("grant"; deny/unknown open nothing).
7. ``bad_time``: ``decided_at``/``expires_at`` not an RFC 3339 time with an offset; ``expired``: ``expires_at`` is
   not after ``now``; ``ttl_too_long``: ``expires_at`` more than ``max_ttl_s`` after ``decided_at``, or more than
   ``max_ttl_s + max_skew_s`` after ``now`` (a stolen key cannot mint long-lived grants);
   ``from_future``: ``decided_at`` later than ``now + max_skew_s`` (clocks must be NTP-synchronised).
8. ``replay``: the ``event_id`` was accepted before (``ReplayCache``, on disk); ``replay_cache_full``,
   ``replay_cache_error``: the cache cannot take it (refused: fail closed).

Only messages that passed 1–7 enter the replay memory, so forged or stale messages cannot fill it.
``internal_error`` is returned (and logged) if anything unexpected happens: still a refusal.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from facegate.door.replay import ReplayCache
from facegate.signing import key_id, load_public_key, load_signing_key, parse_rfc3339, verify_signature

log = logging.getLogger(__name__)

#: Every reason ``check_event`` can return, for counters and documentation.
REASONS = (
    "not_bytes", "too_large", "bad_json", "duplicate_key", "not_object", "missing_key", "wrong_type",
    "bad_event_id", "unsupported_version", "bad_alg", "unknown_key", "hmac_not_allowed", "bad_signature",
    "wrong_door", "not_grant", "bad_time", "expired", "ttl_too_long", "from_future", "replay",
    "replay_cache_full", "replay_cache_error", "internal_error",
)
DEFAULT_MAX_BYTES = 8192
MAX_EVENT_ID_CHARS = 128

_STR_KEYS = ("event_id", "type", "door", "decided_at", "signature")


@dataclass(frozen=True)
class Verdict:
    """The outcome for one message. ``ok`` True only for a grant that passed every check (``reason`` None);
    otherwise ``reason`` is one of ``REASONS``. ``event_id``, ``version``, ``kid`` are copied from the message when
    they had the right type (trust them only when ``authenticated``); ``expires_at`` is set for accepted grants."""

    ok: bool
    reason: str | None
    event_id: str | None = None
    authenticated: bool = False
    version: int | None = None
    kid: str | None = None
    expires_at: datetime | None = None


@dataclass(frozen=True)
class AcceptedKeys:
    """What a door trusts: ``public_keys`` (kid → Ed25519 public key; several during a rotation) for version-2
    events, and optionally the HMAC ``hmac_key`` for version-1 events, used only when ``allow_hmac``."""

    public_keys: Mapping[str, Ed25519PublicKey] = field(default_factory=dict)
    hmac_key: bytes | None = None
    allow_hmac: bool = False

    @classmethod
    def from_files(cls, public_key_files: Iterable[str | os.PathLike[str]] = (),
                   hmac_key_file: str | os.PathLike[str] | None = None, allow_hmac: bool = False) -> AcceptedKeys:
        """Load PEM public keys (``NAME.pub``) and the HMAC key file. Raises ``ConfigError`` naming a bad file."""
        keys: dict[str, Ed25519PublicKey] = {}
        for path in public_key_files:
            key = load_public_key(path)
            keys[key_id(key)] = key
        hmac_key = load_signing_key(hmac_key_file) if hmac_key_file is not None else None
        return cls(public_keys=keys, hmac_key=hmac_key, allow_hmac=allow_hmac and hmac_key is not None)


class _DuplicateKeyError(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKeyError(key)
        out[key] = value
    return out


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # "1e999" parses to inf, which has no canonical form
        raise ValueError(f"number out of range: {text[:20]}")
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_message(message: object, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[dict[str, Any] | None, str | None]:
    """Bytes → (object, None) or (None, reason) for steps 1–2 of the module docstring. Never raises."""
    if isinstance(message, str):
        message = message.encode("utf-8", "surrogatepass")
    if not isinstance(message, bytes | bytearray | memoryview):
        return None, "not_bytes"
    if len(message) > max_bytes:
        return None, "too_large"
    try:
        value = json.loads(bytes(message).decode("utf-8"), object_pairs_hook=_no_duplicates,
                           parse_constant=_reject_constant, parse_float=_finite)
    except _DuplicateKeyError:
        return None, "duplicate_key"
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None, "bad_json"
    if not isinstance(value, dict):
        return None, "not_object"
    return value, None


def _aware(text: str) -> datetime | None:
    try:
        when = parse_rfc3339(text)
    except (ValueError, OverflowError):
        return None
    return when if when.tzinfo is not None and when.utcoffset() is not None else None


def check_event(
    message: object,
    *,
    door: str,
    keys: AcceptedKeys,
    now: datetime,
    max_ttl_s: float,
    max_skew_s: float,
    replay: ReplayCache,
    max_bytes: int = DEFAULT_MAX_BYTES,
    accept_type: str = "grant",
) -> Verdict:
    """Verify one message for door ``door`` at time ``now`` (aware datetime, normally ``datetime.now(UTC)``).

    ``max_ttl_s``: the longest grant lifetime accepted (seconds); ``max_skew_s``: tolerated clock difference
    between daemon and door (seconds). The module docstring lists every check and reason. Never raises: any
    unexpected exception becomes ``Verdict(False, "internal_error")``.
    """
    try:
        return _check(message, door, keys, now, float(max_ttl_s), float(max_skew_s), replay, max_bytes, accept_type)
    except Exception:  # fail closed, never let one message kill the agent
        log.exception("event=verifier_internal_error")
        return Verdict(False, "internal_error")


def _check(message: object, door: str, keys: AcceptedKeys, now: datetime, max_ttl_s: float, max_skew_s: float,
           replay: ReplayCache, max_bytes: int, accept_type: str) -> Verdict:
    event, reason = parse_message(message, max_bytes)
    if event is None:
        return Verdict(False, reason)
    raw_id, raw_version, raw_kid = event.get("event_id"), event.get("version"), event.get("kid")
    partial = {
        "event_id": raw_id if isinstance(raw_id, str) else None,
        "version": raw_version if type(raw_version) is int else None,
        "kid": raw_kid if isinstance(raw_kid, str) else None,
    }
    required = ("version", *_STR_KEYS, "expires_at") + (("alg", "kid") if raw_version == 2 else ())
    if any(k not in event for k in required):
        return Verdict(False, "missing_key", **partial)
    if type(raw_version) is not int or any(not isinstance(event[k], str) for k in _STR_KEYS) or not (
            event["expires_at"] is None or isinstance(event["expires_at"], str)):
        return Verdict(False, "wrong_type", **partial)
    if not 0 < len(raw_id) <= MAX_EVENT_ID_CHARS:
        return Verdict(False, "bad_event_id", **partial)
    problem = verify_signature(event, public_keys=keys.public_keys, hmac_key=keys.hmac_key,
                               allow_hmac=keys.allow_hmac)
    if problem is not None:
        return Verdict(False, problem, **partial)
    partial["authenticated"] = True
    if event["door"] != door:
        return Verdict(False, "wrong_door", **partial)
    if event["type"] != accept_type:
        return Verdict(False, "not_grant", **partial)
    decided = _aware(event["decided_at"])
    expires = _aware(event["expires_at"]) if event["expires_at"] is not None else None
    if decided is None or expires is None:
        return Verdict(False, "bad_time", **partial)
    if expires <= now:
        return Verdict(False, "expired", **partial)
    if (expires - decided).total_seconds() > max_ttl_s or expires - now > timedelta(seconds=max_ttl_s + max_skew_s):
        return Verdict(False, "ttl_too_long", **partial)
    if decided > now + timedelta(seconds=max_skew_s):
        return Verdict(False, "from_future", **partial)
    try:
        seen = replay.check_and_remember(raw_id, expires.timestamp(), now.timestamp())
    except (sqlite3.Error, OSError) as exc:
        log.error("event=replay_cache_error error=%r", str(exc))
        return Verdict(False, "replay_cache_error", **partial)
    if seen is not None:
        return Verdict(False, seen, **partial)
    return Verdict(True, None, expires_at=expires, **partial)
