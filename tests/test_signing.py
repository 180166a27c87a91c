"""Version-2 (Ed25519) signatures, key files and ``facegate keys`` (facegate/signing.py, commands/keys.py)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import generate_private_key

from facegate.errors import ConfigError
from facegate.signing import (
    canonical_bytes,
    encode_payload,
    generate_key_pair,
    key_id,
    load_private_key,
    load_public_key,
    sign_payload,
    sign_payload_v2,
    verify_signature,
)

sys.path.insert(0, str(Path(__file__).parent))
from cli_util import assert_user_error, run_cli  # noqa: E402

PAYLOAD = {"event_id": "4b0c2d1e-0000-4000-8000-000000000001", "type": "grant", "person_id": 42,
           "person_name": "Zoë Ünicode", "score": 0.000012, "margin": None, "door": "front", "camera": "cam1",
           "decided_at": "2026-06-03T07:42:18.412000Z", "expires_at": "2026-06-03T07:42:20.412000Z", "version": 1}


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_v2_signature_covers_version_alg_kid_and_every_field(key):
    signed = sign_payload_v2(PAYLOAD, key)
    kid = key_id(key.public_key())
    assert signed["version"] == 2 and signed["alg"] == "ed25519" and signed["kid"] == kid
    assert len(signed["signature"]) == 128 and signed["signature"] == signed["signature"].lower()
    keys = {kid: key.public_key()}
    assert verify_signature(signed, public_keys=keys) is None
    # the signature is Ed25519 over exactly the canonical bytes, checkable with the library directly
    key.public_key().verify(bytes.fromhex(signed["signature"]), canonical_bytes(signed))
    for field, other in [("door", "back"), ("type", "deny"), ("expires_at", "2027-01-01T00:00:00Z"),
                         ("person_name", "Zoe Unicode"), ("score", 0.5), ("version", 1), ("alg", "hmac"),
                         ("event_id", "x")]:
        tampered = dict(signed, **{field: other})
        assert verify_signature(tampered, public_keys=keys, hmac_key=b"k" * 32, allow_hmac=True) is not None, field
    assert verify_signature(dict(signed, kid="0" * 16), public_keys=keys) == "unknown_key"
    assert verify_signature({k: v for k, v in signed.items() if k != "signature"}, public_keys=keys) == "wrong_type"
    assert verify_signature(dict(signed, signature=signed["signature"].upper()), public_keys=keys) == "bad_signature"


def test_kid_is_sha256_of_the_raw_public_key(key):
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert key_id(key.public_key()) == hashlib.sha256(raw).hexdigest()[:16]


def test_v1_hmac_stays_available_but_only_when_allowed(key):
    v1 = sign_payload(PAYLOAD, b"s" * 32)
    assert verify_signature(v1, hmac_key=b"s" * 32, allow_hmac=True) is None
    assert verify_signature(v1, hmac_key=b"s" * 32, allow_hmac=False) == "hmac_not_allowed"
    assert verify_signature(v1, hmac_key=None, allow_hmac=True) == "hmac_not_allowed"
    assert verify_signature(v1, hmac_key=b"t" * 32, allow_hmac=True) == "bad_signature"
    # a v2 event relabelled as v1 does not pass the HMAC check, and the reverse fails the Ed25519 check
    v2 = sign_payload_v2(PAYLOAD, key)
    assert verify_signature(dict(v2, version=1), hmac_key=b"s" * 32, allow_hmac=True) == "bad_signature"
    assert verify_signature(dict(v1, version=2, alg="ed25519", kid=key_id(key.public_key())),
                            public_keys={key_id(key.public_key()): key.public_key()}) == "bad_signature"
    assert verify_signature(dict(v1, version=3), hmac_key=b"s" * 32, allow_hmac=True) == "unsupported_version"
    assert verify_signature(dict(v1, version=True), hmac_key=b"s" * 32, allow_hmac=True) == "unsupported_version"


def test_wire_form_round_trips_to_the_same_canonical_bytes(key):
    signed = sign_payload_v2(PAYLOAD, key)
    wire = encode_payload(signed)
    assert "Zoë".encode() in wire  # UTF-8, not \\u escapes
    assert canonical_bytes(json.loads(wire)) == canonical_bytes(signed)


@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_generate_key_pair_modes_whatever_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        pair = generate_key_pair(tmp_path / "keys", "door")
    finally:
        os.umask(old)
    assert stat.S_IMODE(pair.private.stat().st_mode) == 0o600
    assert stat.S_IMODE(pair.public.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    private = load_private_key(pair.private)
    assert key_id(load_public_key(pair.public)) == key_id(private.public_key()) == pair.kid
    # the files are the standard PEM forms (openssl and Node read them)
    assert pair.private.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert pair.public.read_text().startswith("-----BEGIN PUBLIC KEY-----")


def test_generate_never_overwrites(tmp_path):
    pair = generate_key_pair(tmp_path, "k")
    before = pair.private.read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        generate_key_pair(tmp_path, "k")
    assert pair.private.read_bytes() == before
    with pytest.raises(ConfigError, match="key name"):
        generate_key_pair(tmp_path, "../evil")


def test_key_loading_errors_name_the_file(tmp_path):
    pair = generate_key_pair(tmp_path, "k")
    with pytest.raises(ConfigError, match="file not found"):
        load_public_key(tmp_path / "missing.pub")
    with pytest.raises(ConfigError, match="PRIVATE key"):
        load_public_key(pair.private)
    os.chmod(pair.private, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_private_key(pair.private)
    with pytest.raises(ConfigError, match=r"this is a public key \(NAME.pub\); give the private half"):
        load_private_key(pair.public)  # mode 0644, as a .pub is: named as a public key, not "chmod 600"
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("not a key\n")
    with pytest.raises(ConfigError, match="not a PEM public key"):
        load_public_key(garbage)
    rsa = tmp_path / "rsa.pub"
    rsa.write_bytes(generate_private_key(65537, 2048).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(ConfigError, match="not an Ed25519 key"):
        load_public_key(rsa)


def test_cli_keys_generate_and_id(tmp_path):
    result = run_cli("keys", "generate", "--out", str(tmp_path / "k"), "--name", "signing-2026", timeout=60)
    assert result.code == 0, result.stderr
    out = result.json()
    assert out["alg"] == "ed25519" and len(out["kid"]) == 16
    assert Path(out["private_key"]).name == "signing-2026.key"
    for f in ("private_key", "public_key"):
        ident = run_cli("keys", "id", out[f], timeout=60)
        assert ident.code == 0 and ident.json()["kid"] == out["kid"]
    again = run_cli("keys", "generate", "--out", str(tmp_path / "k"), "--name", "signing-2026", timeout=60)
    assert_user_error(again, "already exists", code=2)
    missing = run_cli("keys", "id", str(tmp_path / "nope.pub"), timeout=60)
    assert_user_error(missing, "nope.pub", "file not found", code=2)
    assert "Example:" in run_cli("keys", "generate", "--help", timeout=60).stdout
