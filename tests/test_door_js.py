"""examples/verify_event.js (Node.js, built-in crypto only) against payloads signed by facegate.signing: Ed25519
(version 2) and HMAC (version 1), with numbers that JavaScript would print differently from Python, non-ASCII
text, a tampered event, another door, a replay and malformed input."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from facegate.signing import encode_payload, generate_key_pair, load_private_key, rfc3339, sign_payload, sign_payload_v2

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "verify_event.js"


def run_node(args: list[str], lines: list[bytes]) -> list[dict]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("needs Node.js (the node command) to run examples/verify_event.js")
    done = subprocess.run([node, str(SCRIPT), *args], input=b"\n".join(lines) + b"\n", capture_output=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    return [json.loads(line) for line in done.stdout.decode().splitlines()]


def test_node_verifies_what_python_signed(tmp_path):
    pair = generate_key_pair(tmp_path, "signing")
    key = load_private_key(pair.private)
    hmac_file = tmp_path / "hmac.key"
    hmac_file.write_text("0123456789abcdef" * 4 + "\n")
    hmac_key = b"0123456789abcdef" * 4
    now = datetime.now(UTC)

    def event(**over) -> dict:
        body = {"event_id": over.pop("event_id"), "type": "grant", "person_id": 7, "person_name": "Zoë Ünal 李",
                "score": 0.000012, "margin": 1.0, "frames_used": 4, "camera": "cam1", "door": "front",
                "track_id": 3, "reason": None, "captured_at": rfc3339(now), "decided_at": rfc3339(now),
                "expires_at": rfc3339(now + timedelta(seconds=3)), "version": 1}
        body.update(over)
        return body

    v2 = encode_payload(sign_payload_v2(event(event_id="a"), key))
    assert b"1.2e-05" in v2 and b"1.0" in v2  # JSON.stringify would write 0.000012 and 1
    cases = [
        (v2, True, None),
        (v2, False, "replay"),
        (v2.replace(b'"door":"front"', b'"door":"back"'), False, "bad_signature"),
        (encode_payload(sign_payload_v2(event(event_id="b", door="back"), key)), False, "wrong_door"),
        (encode_payload(sign_payload_v2(event(event_id="c", type="deny"), key)), False, "not_grant"),
        (encode_payload(sign_payload_v2(event(event_id="d", expires_at=rfc3339(now - timedelta(seconds=1))), key)),
         False, "expired"),
        (encode_payload(sign_payload_v2(event(event_id="e"), key, kid="0" * 16)), False, "unknown_key"),
        (encode_payload(sign_payload(event(event_id="f"), hmac_key)), True, None),
        (encode_payload(sign_payload(event(event_id="g"), hmac_key)).replace(b'"score":1.2e-05', b'"score":0.9'),
         False, "bad_signature"),
        (encode_payload(sign_payload(event(event_id="h"), b"another key of 32 bytes or more..")), False,
         "bad_signature"),
        (b"[1,2]", False, "missing_key"),
        (b'{"signature":"00","version":2}', False, "bad_alg"),
    ]
    verdicts = run_node(["front", str(pair.public), str(hmac_file)], [c[0] for c in cases])
    assert len(verdicts) == len(cases)
    for (message, ok, reason), verdict in zip(cases, verdicts, strict=True):
        assert verdict == {"ok": ok, "reason": reason}, (message[:80], verdict)


def test_without_hmac_key_node_refuses_version_1(tmp_path):
    pair = generate_key_pair(tmp_path, "signing")
    now = datetime.now(UTC)
    v1 = encode_payload(sign_payload({"event_id": "x", "type": "grant", "door": "front", "decided_at": rfc3339(now),
                                      "expires_at": rfc3339(now + timedelta(seconds=2)), "version": 1}, b"k" * 32))
    assert run_node(["front", str(pair.public)], [v1]) == [{"ok": False, "reason": "hmac_not_allowed"}]
