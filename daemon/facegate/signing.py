"""Event signatures and their canonical form, times on the wire, and the signing key file.

The bottom layer shared by the daemon (which signs), the door agent and README's verifier (which verify): it
imports nothing from the rest of facegate but ``errors``.

Canonical form (what is signed): the payload object without ``signature``, serialised as UTF-8 JSON with sorted
keys, separators ``(",", ":")``, non-ASCII characters kept as UTF-8 (``ensure_ascii=False``) and no NaN/Infinity.

Version 1 (``version: 1``): ``signature`` = lowercase hex HMAC-SHA256 (RFC 2104, ``hmac``/``hashlib``) with the
key file's bytes over the canonical form. A controller verifies by parsing the message, re-serialising it without
``signature`` the same way and comparing in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from facegate.errors import ConfigError

log = logging.getLogger(__name__)

MIN_KEY_BYTES = 32  # RFC 2104 §3: keys shorter than the hash output (32 bytes for SHA-256) weaken the MAC


def rfc3339(when: datetime) -> str:
    """Aware datetime → 'YYYY-MM-DDTHH:MM:SS.ffffffZ' in UTC. Raises ValueError for a naive datetime."""
    if when.tzinfo is None:
        raise ValueError("rfc3339 needs a timezone-aware datetime")
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_rfc3339(text: str) -> datetime:
    """Inverse of ``rfc3339`` (accepts any RFC 3339 offset) → aware datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


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
