"""Event signatures and their canonical form, times on the wire, and the signing key file.

The bottom layer shared by the daemon (which signs), the door agent and README's verifier (which verify): it
imports nothing from the rest of facegate but ``errors`` and ``fileio`` (private key files, bounded reads).

Canonical form (what is signed): the payload object without ``signature``, serialised as UTF-8 JSON with sorted
keys, separators ``(",", ":")``, non-ASCII characters kept as UTF-8 (``ensure_ascii=False``) and no NaN/Infinity.

Version 1 (``version: 1``): ``signature`` = lowercase hex HMAC-SHA256 (RFC 2104, ``hmac``/``hashlib``) with the
key file's bytes over the canonical form. A controller verifies by parsing the message, re-serialising it without
``signature`` the same way and comparing in constant time. Every controller holding the key can also forge events.

Version 2 (``version: 2``, ``alg: "ed25519"``, ``kid``): ``signature`` = lowercase hex of the 64-byte Ed25519
signature (RFC 8032, the ``cryptography`` package) over the same canonical form, which includes ``version``, ``alg``
and ``kid``, so none of them can be changed without breaking the signature. The daemon holds the private key; a door
holds only public keys and cannot forge. ``kid`` (key id) = the first 16 hex characters of SHA-256 over the 32 raw
bytes of the public key (RFC 8032 §5.1.5 encoding): a door accepts a set of public keys and picks one by ``kid``, so
a new key can be rolled out to the doors before the daemon switches to it. Key files are PEM: the private key
PKCS#8 (``NAME.key``, mode 0600), the public key SubjectPublicKeyInfo (``NAME.pub``, mode 0644), the same formats
``openssl genpkey -algorithm ed25519`` writes and Node's ``crypto.createPublicKey`` reads.

``verify_signature`` is the one entry point that checks either version (the door agent's ``facegate.door.verify``
adds door, time and replay checks on top).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.exceptions import UnsupportedAlgorithm as UnsupportedAlgorithmError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from facegate.errors import ConfigError
from facegate.fileio import PRIVATE_FILE_MODE, create_new_file, open_regular, private_dir, read_limited

log = logging.getLogger(__name__)

#: ``alg`` of version-2 payloads.
ALG_ED25519 = "ed25519"
KID_HEX_CHARS = 16  # 64 bits of SHA-256: no collision among the handful of keys a site rotates through
MIN_KEY_BYTES = 32  # RFC 2104 §3: keys shorter than the hash output (32 bytes for SHA-256) weaken the MAC
#: Largest key file read (bytes): a PEM key or a hex secret is a few hundred bytes; a bigger file is the wrong one.
MAX_KEY_FILE_BYTES = 64 * 1024


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
        key = read_limited(p, MAX_KEY_FILE_BYTES, "a key file").strip()
    except OSError as exc:  # InputRefused (swapped for a FIFO, over 64 KiB) included
        raise ConfigError(f"signing key {p}: cannot read ({exc.strerror}); check the service user's access") \
            from None
    if not key:
        raise ConfigError(f"signing key {p}: file is empty; write a secret into it ('openssl rand -hex 32')")
    if len(key) < MIN_KEY_BYTES:
        log.warning("event=weak_signing_key path=%s bytes=%d recommended=%d", p, len(key), MIN_KEY_BYTES)
    return key


# ---------------------------------------------------------------------------------------------------------------
# Version 2: Ed25519


def key_id(public_key: Ed25519PublicKey) -> str:
    """The ``kid`` of a public key: first 16 lowercase hex characters of SHA-256 over its 32 raw bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:KID_HEX_CHARS]


def sign_payload_v2(payload: dict[str, Any], private_key: Ed25519PrivateKey, kid: str | None = None) -> dict[str, Any]:
    """A copy of ``payload`` with ``version`` 2, ``alg`` "ed25519", ``kid`` (default: ``key_id`` of the key's public
    half) and ``signature`` = hex Ed25519 signature of the canonical form (which covers version, alg and kid).

    Raises ``ValueError`` when the payload holds NaN/Infinity (no canonical form), ``TypeError`` for values JSON
    cannot carry.
    """
    signed = {k: v for k, v in payload.items() if k != "signature"}
    signed.update(version=2, alg=ALG_ED25519, kid=kid or key_id(private_key.public_key()))
    signed["signature"] = private_key.sign(canonical_bytes(signed)).hex()
    return signed


_HEX = frozenset("0123456789abcdef")


def _hex_bytes(text: str, n_bytes: int) -> bytes | None:
    """Lowercase hex of exactly ``n_bytes`` bytes → bytes; anything else → None (``bytes.fromhex`` alone would also
    take upper case and spaces, which the canonical signature never has)."""
    if len(text) != 2 * n_bytes or not _HEX.issuperset(text):
        return None
    return bytes.fromhex(text)


def verify_signature(
    payload: dict[str, Any],
    *,
    public_keys: Mapping[str, Ed25519PublicKey] | None = None,
    hmac_key: bytes | None = None,
    allow_hmac: bool = False,
) -> str | None:
    """Check the signature of a parsed payload of either version. Never raises.

    Returns None when it verifies, else the reason: ``unsupported_version``, ``bad_alg`` (v2 without
    ``alg: "ed25519"``), ``unknown_key`` (v2 ``kid`` not among ``public_keys``, a mapping kid → key),
    ``hmac_not_allowed`` (v1 while ``allow_hmac`` is False or no ``hmac_key`` is given), ``wrong_type`` (signature or
    kid not a string) or ``bad_signature``.
    """
    version = payload.get("version")
    signature = payload.get("signature")
    if type(version) is not int or version not in (1, 2):
        return "unsupported_version"
    if not isinstance(signature, str):
        return "wrong_type"
    try:
        if version == 1:
            if not allow_hmac or not hmac_key:
                return "hmac_not_allowed"
            return None if verify_payload(payload, hmac_key) else "bad_signature"
        if payload.get("alg") != ALG_ED25519:
            return "bad_alg"
        kid = payload.get("kid")
        if not isinstance(kid, str):
            return "wrong_type"
        key = (public_keys or {}).get(kid)
        if key is None:
            return "unknown_key"
        raw = _hex_bytes(signature, 64)
        if raw is None:
            return "bad_signature"
        key.verify(raw, canonical_bytes(payload))
        return None
    except InvalidSignature:
        return "bad_signature"
    except (TypeError, ValueError, RecursionError):  # a value with no canonical form (NaN, nesting) cannot verify
        return "bad_signature"


# ---------------------------------------------------------------------------------------------------------------
# Signers: what the daemon's emitter holds


class HmacSigner:
    """Signs payloads as version 1 (HMAC-SHA256 with a shared secret)."""

    version = 1
    algorithm = "hmac-sha256"

    def __init__(self, key: bytes) -> None:
        self.key = key

    def sign(self, payload: dict[str, Any]) -> dict[str, Any]:
        """A signed copy of ``payload`` (``version`` 1, ``signature``)."""
        return sign_payload({**payload, "version": 1}, self.key)


class Ed25519Signer:
    """Signs payloads as version 2 (Ed25519; ``kid`` names the public key the doors verify with)."""

    version = 2
    algorithm = ALG_ED25519

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self.private_key = private_key
        self.kid = key_id(private_key.public_key())

    def sign(self, payload: dict[str, Any]) -> dict[str, Any]:
        """A signed copy of ``payload`` (``version`` 2, ``alg``, ``kid``, ``signature``)."""
        return sign_payload_v2(payload, self.private_key, self.kid)


# ---------------------------------------------------------------------------------------------------------------
# Key files


@dataclass(frozen=True)
class KeyPairFiles:
    """Paths written by ``generate_key_pair`` and the public key's ``kid``."""

    private: Path
    public: Path
    kid: str


def generate_key_pair(folder: str | os.PathLike[str], name: str = "signing") -> KeyPairFiles:
    """Write a new Ed25519 key pair: ``folder/NAME.key`` (PKCS#8 PEM, 0600) and ``folder/NAME.pub`` (SPKI PEM,
    0644). The folder is created 0700 when missing. Never overwrites: raises ``ConfigError`` naming the file when
    either exists, or when the folder cannot be written."""
    out = Path(folder)
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"key name {name!r}: use letters, digits, '-' or '_' (no '/' and no leading '.')")
    priv_path, pub_path = out / f"{name}.key", out / f"{name}.pub"
    for p in (priv_path, pub_path):
        if p.exists():
            raise ConfigError(f"{p} already exists; pick another --name or move the old key away first")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        private_dir(out)  # a missing folder (and missing parents) 0700 whatever the umask
        create_new_file(priv_path, private_pem, PRIVATE_FILE_MODE)
        try:
            create_new_file(pub_path, public_pem, 0o644)
        except BaseException:  # no half pair (a full disk): the next run must not find a lone private key
            priv_path.unlink(missing_ok=True)
            raise
    except FileExistsError as exc:
        raise ConfigError(f"{exc.filename} already exists; pick another --name") from None
    except OSError as exc:
        raise ConfigError(f"cannot write the key pair into {out}: {exc.strerror or exc}") from exc
    return KeyPairFiles(priv_path, pub_path, key_id(key.public_key()))


def _looks_public(p: Path) -> bool:
    """The file starts like a PEM public key (a public key given where the private one belongs)."""
    try:
        with open_regular(p) as handle:
            return handle.read(64).lstrip().startswith(b"-----BEGIN PUBLIC KEY-----")
    except OSError:
        return False


def _read_key_file(p: Path, what: str, *, private: bool) -> bytes:
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ConfigError(f"{what} {p}: file not found; create a pair with 'facegate keys generate --out DIR'") \
            from None
    except OSError as exc:
        raise ConfigError(f"{what} {p}: cannot stat ({exc.strerror})") from exc
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{what} {p}: not a regular file")
    if private and st.st_size <= MAX_KEY_FILE_BYTES and _looks_public(p):  # say so before any mode advice
        raise ConfigError(f"{what} {p}: this is a public key (NAME.pub); give the private half (NAME.key) here")
    if private and st.st_mode & (stat.S_IROTH | stat.S_IWOTH):
        raise ConfigError(f"{what} {p}: readable or writable by other users (mode {stat.filemode(st.st_mode)}); "
                          f"run 'chmod 600 {p}'")
    if st.st_size > MAX_KEY_FILE_BYTES:  # a PEM key is a few hundred bytes; refuse to read a wrong, huge file
        raise ConfigError(f"{what} {p}: {st.st_size} bytes is not a PEM key file")
    try:
        return read_limited(p, MAX_KEY_FILE_BYTES, "a key file")
    except OSError as exc:  # InputRefused (swapped for a FIFO meanwhile) included
        raise ConfigError(f"{what} {p}: cannot read ({exc.strerror}); check the service user's access") from None


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PKCS#8 PEM file (``facegate keys generate`` or
    ``openssl genpkey -algorithm ed25519``). Raises ``ConfigError`` naming the file when it is missing, readable by
    other users, not PEM, encrypted, or not an Ed25519 key."""
    p = Path(path)
    data = _read_key_file(p, "private key", private=True)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithmError) as exc:
        raise ConfigError(f"private key {p}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"private key {p}: a {type(key).__name__}, not an Ed25519 key")
    return key


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """An Ed25519 public key from a SubjectPublicKeyInfo PEM file (``NAME.pub``). Raises ``ConfigError`` naming the
    file when it is missing, not PEM, or not an Ed25519 key (e.g. the private key given by mistake)."""
    p = Path(path)
    data = _read_key_file(p, "public key", private=False)
    if b"PRIVATE KEY" in data:
        raise ConfigError(f"public key {p}: this is a PRIVATE key; give the door the .pub file and keep the .key "
                          "file on the daemon only")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithmError) as exc:
        raise ConfigError(f"public key {p}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"public key {p}: a {type(key).__name__}, not an Ed25519 key")
    return key
