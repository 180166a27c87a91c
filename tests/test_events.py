"""Event payloads and signatures, the signing key file, and the append-only audit log."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import shutil
import subprocess
from datetime import UTC, datetime, timedelta

import pytest

from facegate.errors import ConfigError
from facegate.runtime.audit import AuditLog, read_audit
from facegate.runtime.decision import Decision
from facegate.runtime.events import EventEmitter, SignedEvent, StdoutSink, build_payload, event_topic, status_topic
from facegate.signing import (
    HmacSigner,
    canonical_bytes,
    encode_payload,
    load_signing_key,
    parse_rfc3339,
    sign_payload,
    verify_payload,
)

KEY = b"0123456789abcdef0123456789abcdef-test-key"
DECIDED = datetime(2026, 6, 3, 12, 0, 0, 250000, tzinfo=UTC)


def decision(type_: str = "grant", **kw) -> Decision:
    base = dict(type=type_, camera="cam1", door="front", track_id=7, captured_at=DECIDED - timedelta(milliseconds=40),
                decided_at=DECIDED, identity_id="p-42", identity_name="José Núñez", score=0.31234567, margin=0.0612,
                frames_used=3)
    base.update(kw)
    return Decision(**base)


def test_grant_payload_fields_times_and_expiry():
    p = build_payload(decision(), grant_ttl_s=2.0)
    assert set(p) == {"version", "event_id", "type", "person_id", "person_name", "score", "margin", "frames_used",
                      "camera", "door", "track_id", "reason", "captured_at", "decided_at", "expires_at"}
    assert p["type"] == "grant" and p["person_id"] == "p-42" and p["person_name"] == "José Núñez"
    assert p["captured_at"] == "2026-06-03T12:00:00.210000Z"
    assert p["decided_at"] == "2026-06-03T12:00:00.250000Z"
    assert p["expires_at"] == "2026-06-03T12:00:02.250000Z"
    assert parse_rfc3339(p["expires_at"]) - parse_rfc3339(p["decided_at"]) == timedelta(seconds=2)
    assert p["score"] == 0.312346 and p["frames_used"] == 3 and p["track_id"] == 7
    assert len(p["event_id"]) == 36 and p["event_id"] != build_payload(decision())["event_id"]


def test_non_grants_do_not_expire_and_unknowns_carry_no_person():
    u = build_payload(decision("unknown", identity_id=None, identity_name=None, margin=None))
    assert u["expires_at"] is None and u["person_id"] is None and u["margin"] is None
    d = build_payload(decision("deny", reason="not_in_group"))
    assert d["expires_at"] is None and d["reason"] == "not_in_group"


def test_canonical_form_is_sorted_compact_utf8_without_signature():
    payload = {"b": 1, "a": "é", "signature": "x", "c": [1.5, None]}
    assert canonical_bytes(payload) == '{"a":"é","b":1,"c":[1.5,null]}'.encode()


def test_stdout_lines_are_the_wire_form_and_verify_as_they_stand():
    """New-user finding: stdout lines were pretty JSON, so a byte-level verifier (examples/verify_event.js) could not
    check them; now each line is byte for byte what MQTT carries."""
    import io

    signed = sign_payload(build_payload(decision()), KEY)
    out = io.StringIO()
    StdoutSink(out).emit(SignedEvent(signed, decision(), "facegate/front/event"))
    line = out.getvalue().removesuffix("\n").encode()
    assert line == encode_payload(signed) and verify_payload(json.loads(line), KEY)


def test_signature_is_hmac_sha256_of_the_canonical_form():
    p = sign_payload(build_payload(decision()), KEY)
    body = json.dumps({k: v for k, v in p.items() if k != "signature"}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")
    assert p["signature"] == hmac.new(KEY, body, hashlib.sha256).hexdigest()
    assert verify_payload(p, KEY)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command as an independent HMAC")
def test_signature_matches_openssl(tmp_path):
    p = sign_payload(build_payload(decision()), KEY)
    body = tmp_path / "body.json"
    body.write_bytes(canonical_bytes(p))
    out = subprocess.run(["openssl", "dgst", "-sha256", "-hmac", KEY.decode(), str(body)], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip().endswith(p["signature"])


def test_a_received_message_verifies_after_a_json_round_trip_and_tampering_fails():
    wire = json.dumps(sign_payload(build_payload(decision()), KEY), ensure_ascii=False, indent=2)
    received = json.loads(wire)
    assert verify_payload(received, KEY)
    for key, value in [("type", "deny"), ("person_id", "p-43"), ("expires_at", "2099-01-01T00:00:00.000000Z"),
                       ("score", 0.1), ("door", "back"), ("event_id", "00000000-0000-4000-8000-000000000000")]:
        forged = dict(received, **{key: value})
        assert not verify_payload(forged, KEY), key
    assert not verify_payload(received, KEY + b"x")
    assert not verify_payload({k: v for k, v in received.items() if k != "signature"}, KEY)
    assert not verify_payload(dict(received, signature=received["signature"].upper()), KEY)


def test_topics():
    assert event_topic("site/facegate/", "front") == "site/facegate/front/event"
    assert status_topic("facegate") == "facegate/status"


def write_key(path, data: bytes, mode: int):
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


def test_signing_key_file_checks(tmp_path, caplog):
    good = write_key(tmp_path / "key", b"  " + KEY + b"\n", 0o600)
    assert load_signing_key(good) == KEY
    assert load_signing_key(write_key(tmp_path / "key640", KEY, 0o640)) == KEY
    with pytest.raises(ConfigError, match="not found.*openssl rand"):
        load_signing_key(tmp_path / "missing")
    with pytest.raises(ConfigError, match="empty"):
        load_signing_key(write_key(tmp_path / "empty", b"\n \n", 0o600))
    with pytest.raises(ConfigError, match="readable or writable by other users.*chmod 600"):
        load_signing_key(write_key(tmp_path / "open", KEY, 0o644))
    with pytest.raises(ConfigError, match="not a regular file"):
        load_signing_key(tmp_path)
    with caplog.at_level(logging.WARNING):
        assert load_signing_key(write_key(tmp_path / "short", b"short", 0o600)) == b"short"
    assert "weak_signing_key" in caplog.text


def test_audit_appends_across_reopen_and_survives_a_torn_line(tmp_path, caplog):
    path = tmp_path / "sub" / "audit.jsonl"
    with AuditLog(path) as log:
        log.append({"n": 1, "name": "José"})
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)  # audit records name people: owner only
    with AuditLog(path) as log:
        log.append({"n": 2})
    assert [r["n"] for r in read_audit(path)] == [1, 2]
    # a crash mid-write leaves a torn last line; the reader skips it, the writer never rewrites it
    with open(path, "ab") as f:
        f.write(b'{"n": 3, "na')
    torn = path.read_bytes()
    with caplog.at_level(logging.WARNING):
        assert [r["n"] for r in read_audit(path)] == [1, 2]
    assert "audit_bad_line" in caplog.text and "line=3" in caplog.text
    with AuditLog(path) as log:
        log.append({"n": 4})
    assert path.read_bytes().startswith(torn)
    assert [r["n"] for r in read_audit(path)] == [1, 2, 4]


def test_audit_log_in_an_unwritable_place_is_a_config_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot open"):
        AuditLog(blocker / "audit.jsonl")


def test_emitter_without_broker_writes_signed_events_to_the_audit_log(tmp_path):
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        em = EventEmitter(signer=HmacSigner(KEY), sinks=[log], grant_ttl_s=1.5)
        sent = [em.emit(decision()), em.emit(decision("unknown", identity_id=None, identity_name=None))]
    records = read_audit(path)
    assert [r["event"] for r in records] == sent
    assert all(verify_payload(r["event"], KEY) and r["topic"] is None for r in records)
    assert sent[0]["expires_at"] == "2026-06-03T12:00:01.750000Z"
