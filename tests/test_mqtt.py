"""EventPublisher against a real Mosquitto: signed events, status and last will, broker outages, queue bounds."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest
from mosquitto import Mosquitto, Subscriber, find_mosquitto, free_port

from facegate.errors import BrokerError
from facegate.runtime.audit import AuditLog, read_audit
from facegate.runtime.decision import Decision
from facegate.runtime.events import EventEmitter
from facegate.runtime.mqtt import EventPublisher
from facegate.signing import HmacSigner, verify_payload

KEY = b"mqtt-test-key-0123456789abcdef0123456789"
PREFIX = "site1/facegate"


def decision(type_: str, track_id: int, door: str = "front") -> Decision:
    now = datetime.now(UTC)
    known = type_ != "unknown"
    return Decision(type=type_, camera="cam1", door=door, track_id=track_id, captured_at=now, decided_at=now,
                    identity_id="p1" if known else None, identity_name="Pat" if known else None,
                    score=0.3, margin=0.1, frames_used=3, reason="not_in_group" if type_ == "deny" else None)


def publisher(broker: Mosquitto, **kw) -> EventPublisher:
    return EventPublisher(host=broker.host, port=broker.port, topic_prefix=PREFIX, reconnect_min_s=1,
                          reconnect_max_s=1, **kw)


def status_values(sub: Subscriber) -> list[str]:
    return [p.decode() for p in sub.payloads(f"{PREFIX}/status")]


def test_signed_event_arrives_verifies_and_is_not_retained(mosquitto_broker, tmp_path):
    sub = Subscriber(mosquitto_broker, f"{PREFIX}/#").start()
    pub = publisher(mosquitto_broker)
    assert pub.start(wait_s=5.0)
    assert pub.connected.is_set()
    audit = AuditLog(tmp_path / "audit.jsonl")
    em = EventEmitter(signer=HmacSigner(KEY), sinks=[audit, pub], topic_prefix=PREFIX, grant_ttl_s=5.0)
    sent = em.emit(decision("grant", 1))
    assert sub.wait_for(lambda s: len(s.events()) == 1)
    topic, raw, retained = next(m for m in sub.snapshot() if m[0].endswith("/event"))
    assert topic == f"{PREFIX}/front/event" and not retained
    got = json.loads(raw)
    assert got == sent and verify_payload(got, KEY)
    assert not verify_payload(dict(got, person_id="p2"), KEY)
    assert sub.wait_for(lambda s: "online" in status_values(s))
    assert read_audit(tmp_path / "audit.jsonl")[0]["topic"] == f"{PREFIX}/front/event"
    pub.stop()
    assert sub.wait_for(lambda s: status_values(s)[-1:] == ["offline"])  # clean stop says offline itself
    sub.stop()
    # a late subscriber gets the retained status but no door event
    late = Subscriber(mosquitto_broker, f"{PREFIX}/#").start()
    assert late.wait_for(lambda s: status_values(s) == ["offline"], 3.0)
    assert late.events() == []
    late.stop()


def test_broker_outage_queues_events_and_never_sends_expired_grants(mosquitto_broker, tmp_path):
    door = Subscriber(mosquitto_broker, f"{PREFIX}/#", persistent=True).start()  # a door controller
    pub = publisher(mosquitto_broker)
    pub.start(wait_s=5.0)
    audit = AuditLog(tmp_path / "audit.jsonl")
    em = EventEmitter(signer=HmacSigner(KEY), sinks=[audit, pub], topic_prefix=PREFIX, grant_ttl_s=0.5)
    em.emit(decision("grant", 1))
    assert door.wait_for(lambda s: len(s.events()) == 1)

    mosquitto_broker.stop()
    assert door.wait_for(lambda s: not pub.connected.is_set(), 5.0)
    during = [em.emit(decision(t, i)) for i, t in enumerate(["unknown", "grant", "deny", "grant", "unknown"], 2)]
    time.sleep(1.0)  # past the grants' 0.5 s lifetime
    mosquitto_broker.start()
    assert pub.connected.wait(10.0)
    assert door.wait_for(lambda s: len(s.events()) >= 4, 10.0)
    fresh = em.emit(decision("grant", 9))  # granted after the reconnect: delivered
    assert door.wait_for(lambda s: len(s.events()) >= 5, 5.0)
    time.sleep(0.3)
    got = door.events()
    assert [e["track_id"] for e in got] == [1, 2, 4, 6, fresh["track_id"]]  # order kept, expired grants left out
    assert [e["type"] for e in got[1:4]] == ["unknown", "deny", "unknown"]
    assert all(verify_payload(e, KEY) for e in got)
    assert pub.stats["expired"] == 2
    # every decision is in the audit log, the unsent grants included
    logged = [r["event"] for r in read_audit(tmp_path / "audit.jsonl")]
    assert [e["event_id"] for e in logged] == [got[0]["event_id"], *(e["event_id"] for e in during),
                                               fresh["event_id"]]
    # status: offline during the outage (mosquitto publishes the will of the clients it drops when it shuts
    # down), then online again, announced live by the publisher after its reconnect
    status = f"{PREFIX}/status"

    def live_status(s: Subscriber) -> list[bytes]:
        return [k for k, _ in itertools.groupby(p for t, p, r in s.snapshot() if t == status and not r)]

    assert door.wait_for(lambda s: live_status(s) == [b"online", b"offline", b"online"], 5.0), door.snapshot()
    pub.stop()
    door.stop()


def test_grant_in_flight_when_the_broker_dies_is_not_resent_late(mosquitto_broker):
    door = Subscriber(mosquitto_broker, f"{PREFIX}/#", persistent=True).start()
    pub = publisher(mosquitto_broker)
    pub.start(wait_s=5.0)
    em = EventEmitter(signer=HmacSigner(KEY), sinks=[pub], topic_prefix=PREFIX, grant_ttl_s=0.5)
    time.sleep(1.5)  # the broker autosaves (every 1 s) the door's session before it is killed below
    # freeze the broker: the publishes leave the client but are never acknowledged
    os.kill(mosquitto_broker.proc.pid, signal.SIGSTOP)
    em.emit(decision("grant", 1))
    em.emit(decision("unknown", 2))
    assert door.wait_for(lambda s: pub.queued == 0 and pub.pending() == 2, 2.0)  # both with paho, no PUBACK
    os.kill(mosquitto_broker.proc.pid, signal.SIGKILL)
    mosquitto_broker.proc.wait()
    mosquitto_broker.proc = None
    time.sleep(0.8)  # the grant expires while the broker is gone
    mosquitto_broker.start()
    assert pub.connected.wait(10.0)
    assert door.wait_for(lambda s: len(s.events()) >= 1, 10.0)
    time.sleep(0.5)
    assert [(e["type"], e["track_id"]) for e in door.events()] == [("unknown", 2)]  # re-sent by paho; grant purged
    assert pub.stats["expired"] == 1
    pub.stop()
    door.stop()


LWT_CLIENT = """
import sys, time
from facegate.runtime.mqtt import EventPublisher
pub = EventPublisher(host="127.0.0.1", port=int(sys.argv[1]), topic_prefix=sys.argv[2], keepalive_s=5)
pub.start(wait_s=5.0)
print("ready", flush=True)
time.sleep(60)
"""


def test_last_will_says_offline_when_the_daemon_is_killed(mosquitto_broker):
    sub = Subscriber(mosquitto_broker, f"{PREFIX}/status").start()
    proc = subprocess.Popen([sys.executable, "-c", LWT_CLIENT, str(mosquitto_broker.port), PREFIX],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert sub.wait_for(lambda s: status_values(s)[-1:] == ["online"], 5.0)
        proc.send_signal(signal.SIGKILL)  # no chance to say goodbye: the broker publishes the will
        proc.wait()
        assert sub.wait_for(lambda s: status_values(s)[-1:] == ["offline"], 5.0)
    finally:
        if proc.poll() is None:
            proc.kill()
    sub.stop()
    late = Subscriber(mosquitto_broker, f"{PREFIX}/status").start()  # the will was retained
    assert late.wait_for(lambda s: status_values(s) == ["offline"], 3.0)
    late.stop()


def dead_broker(tmp_path) -> Mosquitto:
    binary = find_mosquitto()
    if binary is None:
        pytest.skip("needs the mosquitto broker binary (apt-get install mosquitto)")
    return Mosquitto(tmp_path / "late-broker", binary, port=free_port())


def test_start_raises_a_clear_broker_error_when_required(tmp_path):
    broker = dead_broker(tmp_path)
    pub = publisher(broker)
    t0 = time.monotonic()
    with pytest.raises(BrokerError, match=rf"127\.0\.0\.1:{broker.port} not reachable within 1\.5 s \(TCP connect"):
        pub.start(wait_s=1.5)
    assert time.monotonic() - t0 < 5.0


def test_start_without_broker_keeps_retrying_and_bounds_its_queue(tmp_path):
    broker = dead_broker(tmp_path)
    pub = publisher(broker, queue_max=3)
    assert pub.start(wait_s=0.5, require=False) is False
    em = EventEmitter(signer=HmacSigner(KEY), sinks=[pub], topic_prefix=PREFIX, grant_ttl_s=60.0)
    for i, t in enumerate(["unknown", "grant", "unknown", "unknown", "deny"], 1):
        em.emit(decision(t, i))
    assert pub.stats["dropped"] == 2 and pub.pending() == 3  # oldest non-grants went first
    broker.start()
    try:
        sub = Subscriber(broker, f"{PREFIX}/#").start()
        assert pub.connected.wait(10.0)
        assert sub.wait_for(lambda s: len(s.events()) == 3, 10.0)
        assert [(e["type"], e["track_id"]) for e in sub.events()] == [("grant", 2), ("unknown", 4), ("deny", 5)]
        pub.stop()
        sub.stop()
    finally:
        broker.stop()


def test_tls_with_username_and_password(tmp_path):
    binary = find_mosquitto()
    if binary is None:
        pytest.skip("needs the mosquitto broker binary (apt-get install mosquitto)")
    broker = Mosquitto(tmp_path / "tls-broker", binary, users={"facegate": "s3cret", "door": "d00r"}, tls=True)
    broker.start()
    try:
        sub = Subscriber(broker, f"{PREFIX}/#", username="door", password="d00r").start()
        pub = publisher(broker, tls=True, ca_file=str(broker.ca_file), username="facegate", password="s3cret")
        assert pub.start(wait_s=5.0)
        sent = EventEmitter(signer=HmacSigner(KEY), sinks=[pub], topic_prefix=PREFIX).emit(decision("deny", 3))
        assert sub.wait_for(lambda s: s.events() == [sent], 5.0)
        pub.stop()
        sub.stop()
        wrong = publisher(broker, tls=True, ca_file=str(broker.ca_file), username="facegate", password="nope")
        with pytest.raises(BrokerError, match="refused: Not authorized"):
            wrong.start(wait_s=3.0)
        untrusted = publisher(broker, tls=True, username="facegate", password="s3cret")  # system CAs only
        with pytest.raises(BrokerError, match="TLS handshake failed: CERTIFICATE_VERIFY_FAILED"):
            untrusted.start(wait_s=1.5)
    finally:
        broker.stop()
