"""The door's verifier (facegate/door/verify.py) and replay cache (door/replay.py): every refusal reason, fuzzing
with Hypothesis (nothing raises, nothing but the untouched valid grant opens), persistence, and README's snippet."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from facegate.door.replay import ReplayCache
from facegate.door.verify import REASONS, AcceptedKeys, Verdict, check_event
from facegate.errors import ConfigError
from facegate.signing import encode_payload, generate_key_pair, key_id, rfc3339, sign_payload, sign_payload_v2

REPO = Path(__file__).resolve().parents[1]
NOW = datetime(2026, 6, 3, 7, 42, 19, tzinfo=UTC)
HMAC_KEY = b"h" * 32
PRIVATE = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()
KEYS = AcceptedKeys({key_id(PRIVATE.public_key()): PRIVATE.public_key()}, hmac_key=HMAC_KEY, allow_hmac=False)


def grant(**over) -> dict:
    body = {"event_id": "ev-1", "type": "grant", "person_id": 42, "person_name": "Lin", "score": 0.37,
            "margin": 0.1, "frames_used": 4, "camera": "cam1", "door": "front", "track_id": 3, "reason": None,
            "captured_at": rfc3339(NOW - timedelta(seconds=1.1)), "decided_at": rfc3339(NOW - timedelta(seconds=1)),
            "expires_at": rfc3339(NOW + timedelta(seconds=1)), "version": 1}
    body.update(over)
    return body


def signed(key: Ed25519PrivateKey = PRIVATE, **over) -> bytes:
    return encode_payload(sign_payload_v2(grant(**over), key))


def check(message, *, keys: AcceptedKeys = KEYS, replay: ReplayCache | None = None, now: datetime = NOW,
          door: str = "front") -> Verdict:
    return check_event(message, door=door, keys=keys, now=now, max_ttl_s=5, max_skew_s=2,
                       replay=replay if replay is not None else ReplayCache(None))


# ------------------------------------------------------------------------------------------------- reasons
def test_valid_grant_opens_once_then_is_a_replay():
    cache = ReplayCache(None)
    first = check(signed(), replay=cache)
    assert first.ok and first.reason is None and first.authenticated and first.version == 2
    assert first.kid == key_id(PRIVATE.public_key()) and first.expires_at == NOW + timedelta(seconds=1)
    again = check(signed(), replay=cache)
    assert not again.ok and again.reason == "replay"


@pytest.mark.parametrize(("message", "reason"), [
    (None, "not_bytes"),
    (12, "not_bytes"),
    (b"x" * 9000, "too_large"),
    (b"\xff\xfe", "bad_json"),
    (b"{", "bad_json"),
    (b'{"a": NaN}', "bad_json"),
    (b'{"a": 1e999}', "bad_json"),
    (b"[" * 4000 + b"]" * 4000, "bad_json"),
    (b'{"a": 1, "a": 2}', "duplicate_key"),
    (b"[]", "not_object"),
    (b"42", "not_object"),
    (b'"grant"', "not_object"),
    (b"null", "not_object"),
    (b"{}", "missing_key"),
])
def test_malformed_messages(message, reason):
    verdict = check(message)
    assert not verdict.ok and verdict.reason == reason and not verdict.authenticated


def _without(key: str) -> bytes:
    body = sign_payload_v2(grant(), PRIVATE)
    del body[key]
    return encode_payload(body)


@pytest.mark.parametrize(("message", "reason"), [
    (_without("door"), "missing_key"),
    (_without("kid"), "missing_key"),
    (_without("signature"), "missing_key"),
    (_without("expires_at"), "missing_key"),
    (signed(door=7), "wrong_type"),
    (signed(expires_at=12345), "wrong_type"),
    (signed(event_id=["a"]), "wrong_type"),
    (signed(event_id=""), "bad_event_id"),
    (signed(event_id="x" * 129), "bad_event_id"),
    (signed(key=OTHER), "unknown_key"),
    (encode_payload(sign_payload_v2(grant(), OTHER, kid=key_id(PRIVATE.public_key()))), "bad_signature"),
    (signed().replace(b'"door":"front"', b'"door":"back"'), "bad_signature"),
    (signed().replace(b'"ed25519"', b'"ed448"'), "bad_alg"),
    (encode_payload(sign_payload(grant(), HMAC_KEY)), "hmac_not_allowed"),
    (signed(door="back"), "wrong_door"),
    (signed(type="deny", expires_at=None), "not_grant"),
    (signed(type="unknown"), "not_grant"),
    (signed(expires_at=None), "bad_time"),
    (signed(expires_at="2026-06-03T07:42:20"), "bad_time"),  # naive: no offset
    (signed(decided_at="yesterday"), "bad_time"),
    (signed(expires_at=rfc3339(NOW)), "expired"),
    (signed(expires_at=rfc3339(NOW - timedelta(seconds=30))), "expired"),
    (signed(expires_at=rfc3339(NOW + timedelta(hours=1))), "ttl_too_long"),
    (signed(decided_at=rfc3339(NOW + timedelta(seconds=2)), expires_at=rfc3339(NOW + timedelta(seconds=8))),
     "ttl_too_long"),
    (signed(decided_at=rfc3339(NOW + timedelta(seconds=3)), expires_at=rfc3339(NOW + timedelta(seconds=4))),
     "from_future"),
])
def test_every_refusal_has_its_reason(message, reason):
    verdict = check(message)
    assert not verdict.ok and verdict.reason == reason, verdict
    assert verdict.reason in REASONS


def test_hmac_events_open_only_when_allowed_and_offsets_other_than_z_work():
    allowed = AcceptedKeys(hmac_key=HMAC_KEY, allow_hmac=True)
    body = grant(expires_at=(NOW + timedelta(seconds=1)).astimezone(
        __import__("datetime").timezone(timedelta(hours=2))).isoformat())
    assert check(encode_payload(sign_payload(body, HMAC_KEY)), keys=allowed).ok
    assert check(encode_payload(sign_payload(grant(), b"x" * 32)), keys=allowed).reason == "bad_signature"


def test_unauthenticated_ids_never_enter_the_replay_memory():
    cache = ReplayCache(None)
    forged = sign_payload_v2(grant(event_id="victim"), OTHER)
    assert check(encode_payload(forged), replay=cache).reason == "unknown_key"
    assert check(signed(event_id="victim", door="back"), replay=cache).reason == "wrong_door"
    assert len(cache) == 0
    assert check(signed(event_id="victim"), replay=cache).ok  # the real grant still opens


def test_a_broken_replay_cache_refuses(tmp_path):
    cache = ReplayCache(tmp_path / "r.db")
    cache.close()  # every later use raises sqlite3.ProgrammingError
    assert check(signed(), replay=cache).reason == "replay_cache_error"


# ------------------------------------------------------------------------------------------------- fuzzing
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20)


@FUZZ
@given(st.binary(max_size=600))
def test_fuzz_random_bytes_never_raise_never_open(data):
    verdict = check(data)
    assert not verdict.ok and verdict.reason in REASONS


@FUZZ
@given(json_values)
def test_fuzz_random_json_never_raises_never_opens(value):
    verdict = check(json.dumps(value).encode())
    assert not verdict.ok and verdict.reason in REASONS


VALID = sign_payload_v2(grant(), PRIVATE)
event_keys = st.sampled_from(sorted(VALID))


@FUZZ
@given(st.data())
def test_fuzz_mutated_valid_payloads_never_open(data):
    body = dict(VALID)
    for _ in range(data.draw(st.integers(1, 3))):
        action = data.draw(st.sampled_from(["set", "delete", "add"]))
        if action == "set":
            key = data.draw(event_keys)
            new = data.draw(json_values)
            if new == body.get(key):
                continue
            body[key] = new
        elif action == "delete":
            body.pop(data.draw(event_keys), None)
        else:
            body[data.draw(st.text(min_size=1, max_size=8))] = data.draw(json_values)
    message = json.dumps(body, ensure_ascii=data.draw(st.booleans())).encode()
    if body == VALID:
        return  # an untouched payload (mutations undone), re-encoded: it must open, checked below
    verdict = check(message)
    assert not verdict.ok and verdict.reason in REASONS, body


@FUZZ
@given(st.binary(min_size=1, max_size=4), st.integers(0, 10_000))
def test_fuzz_byte_flips_in_the_wire_form_never_open(noise, where):
    wire = encode_payload(VALID)
    pos = where % len(wire)
    mutated = wire[:pos] + noise + wire[pos + len(noise):]
    verdict = check(mutated)
    same_object = _is_json(mutated) and json.loads(mutated) == VALID
    if same_object:
        assert verdict.ok  # bytes flipped into another encoding of the same object (e.g. "\u0041") is no tampering
    else:
        assert not verdict.ok and verdict.reason in REASONS


def _is_json(data: bytes) -> bool:
    try:
        json.loads(data)
    except ValueError:
        return False
    return True


def test_the_untouched_valid_payload_opens():
    assert check(encode_payload(VALID)).ok
    assert check(json.dumps(VALID, indent=2, ensure_ascii=True).encode()).ok  # any encoding of the same object


# ------------------------------------------------------------------------------------------------ the cache
def test_replay_cache_survives_reopen_and_is_private(tmp_path):
    path = tmp_path / "state" / "replay.db"
    old = os.umask(0)
    try:
        cache = ReplayCache(path)
        assert check(signed(), replay=cache).ok
        cache.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    for extra in path.parent.iterdir():
        assert stat.S_IMODE(extra.stat().st_mode) & 0o077 == 0, extra
    reopened = ReplayCache(path)
    assert check(signed(), replay=reopened).reason == "replay"


def test_replay_cache_is_pruned_by_expiry_and_bounded():
    cache = ReplayCache(None, max_entries=3, keep_after_expiry_s=10)
    t0 = NOW.timestamp()
    for i in range(3):
        assert cache.check_and_remember(f"e{i}", t0 + 1, t0) is None
    assert cache.check_and_remember("e3", t0 + 1, t0) == "replay_cache_full"  # fail closed when full
    assert cache.check_and_remember("e0", t0 + 1, t0) == "replay"
    # 10 s (keep_after_expiry_s) after they expired they are pruned and room is back
    assert cache.check_and_remember("e4", t0 + 30, t0 + 12) is None
    assert len(cache) == 1 and "e4" in cache and "e0" not in cache


def test_a_corrupt_replay_cache_stops_the_agent_with_a_clear_message(tmp_path):
    path = tmp_path / "replay.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ConfigError, match="not a replay cache"):
        ReplayCache(path)
    with pytest.raises(ConfigError, match="max_entries"):
        ReplayCache(None, max_entries=0)
    assert sqlite3.sqlite_version  # the stdlib module is the store


# ------------------------------------------------------------------------------------------ README snippet
def test_readme_verifier_snippet_runs(tmp_path):
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- door-verifier-snippet -->\s*```python\n(.*?)```", text, re.S)
    assert block, "README lost its verifier snippet"
    code = block.group(1)
    pair = generate_key_pair(tmp_path, "signing")
    code = code.replace("/etc/facegate/signing.pub", str(pair.public))
    code = code.replace("/var/lib/my-door/replay.db", str(tmp_path / "replay.db"))
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 (README's own code, tested as code)
    may_open = namespace["may_open"]
    from facegate.signing import load_private_key

    key = load_private_key(pair.private)
    now = datetime.now(UTC)
    body = grant(event_id="readme", decided_at=rfc3339(now), expires_at=rfc3339(now + timedelta(seconds=2)))
    good = encode_payload(sign_payload_v2(body, key))
    assert may_open(good) is True
    assert may_open(good) is False  # replayed
    other_door = encode_payload(sign_payload_v2(dict(body, event_id="r2", door="back"), key))
    assert may_open(other_door) is False
    for junk in (b"[]", b"42", b'{"expires_at": "2026-01-01T00:00:00"}', b"\x00\xff", b""):
        assert may_open(junk) is False
