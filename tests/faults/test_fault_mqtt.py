"""MQTT availability against a real Mosquitto: reconnect within about 2 s of the broker's return with the default
backoff, the health state on the retained status and health topics, a client-id takeover reported once as such,
and the default client id unique per host and prefix. (Grants decided while the broker is away keep their expiry
rule: tests/test_mqtt.py::test_broker_outage_queues_events_and_never_sends_expired_grants and the daemon-level
tests/test_daemon_e2e.py::test_broker_outage_keeps_audit_complete_and_never_sends_expired_grants.)"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from faultkit import record_recovery
from mosquitto import Subscriber
from pydantic import ValidationError

from facegate.config import Config, MqttConfig
from facegate.runtime.decision import Decision
from facegate.runtime.health import Health
from facegate.runtime.mqtt import CONFLICT_AFTER, EventPublisher, default_client_id

PREFIX = "site/fg"
REPO = Path(__file__).resolve().parents[2]


def _deny(track: int) -> dict:
    from facegate.runtime.events import build_payload
    from facegate.signing import sign_payload

    now = datetime.now(UTC)
    d = Decision(type="deny", camera="cam", door="front", track_id=track, captured_at=now, decided_at=now,
                 identity_id=1, identity_name="Pat", score=0.3, margin=0.1, frames_used=3, reason="cooldown")
    return sign_payload(build_payload(d), b"mqtt-fault-key-0123456789abcdef")


def _statuses(sub: Subscriber) -> list[bytes]:
    return sub.payloads(f"{PREFIX}/status")


def test_default_backoff_is_back_within_about_two_seconds_of_the_broker(mosquitto_broker):
    cfg = MqttConfig(host=mosquitto_broker.host, port=mosquitto_broker.port, topic_prefix=PREFIX)
    assert (cfg.reconnect_min_s, cfg.reconnect_max_s) == (0.5, 2.0)
    pub = EventPublisher.from_config(cfg)
    assert pub.start(5.0)
    try:
        mosquitto_broker.stop()
        assert _wait(lambda: not pub.connected.is_set(), 10)
        time.sleep(8.0)  # long enough for paho's backoff to reach its maximum
        pub.publish_event(_deny(1))  # decided while the broker is away: queued
        back = time.monotonic()
        mosquitto_broker.start()
        assert _wait(pub.connected.is_set, 30)
        connected = time.monotonic() - back
        assert _wait(lambda: pub.stats["sent"] >= 1, 10)  # PUBACK from the broker
        published = time.monotonic() - back
    finally:
        pub.stop()
    record_recovery("broker_back_to_first_publish", published, reconnect_s=round(connected, 3))
    # the old fixed 1 → 30 s backoff would wait up to 15 s here (attempts at 1, 3, 7, 15 s after the outage)
    assert connected < 6.0, connected


def test_status_and_health_topics_follow_the_health_state(mosquitto_broker):
    health = Health()
    sub = Subscriber(mosquitto_broker, f"{PREFIX}/#").start()
    pub = EventPublisher(host=mosquitto_broker.host, port=mosquitto_broker.port, topic_prefix=PREFIX, health=health)
    assert pub.start(5.0)
    try:
        assert sub.wait_for(lambda s: _statuses(s)[-1:] == [b"online"])
        health.problem("gallery", "gallery.db is missing")
        assert sub.wait_for(lambda s: _statuses(s)[-1:] == [b"degraded"])
        snap = json.loads(sub.payloads(f"{PREFIX}/health")[-1])
        assert snap["state"] == "degraded" and snap["parts"]["gallery"]["reason"] == "gallery.db is missing"
        # a late subscriber (a dashboard) gets both, retained
        late = Subscriber(mosquitto_broker, f"{PREFIX}/#").start()
        assert late.wait_for(lambda s: _statuses(s) == [b"degraded"] and s.payloads(f"{PREFIX}/health"))
        late.stop()
        health.clear("gallery")
        assert sub.wait_for(lambda s: _statuses(s)[-1:] == [b"online"])
        assert json.loads(sub.payloads(f"{PREFIX}/health")[-1])["state"] == "ok"
    finally:
        pub.stop()
    assert sub.wait_for(lambda s: _statuses(s)[-1:] == [b"offline"])
    sub.stop()


def test_a_broker_outage_is_a_health_episode_and_the_status_says_degraded_on_return(mosquitto_broker):
    health = Health()
    health.problem("inference", "RuntimeError: broken graph")  # degraded while the broker was away
    pub = EventPublisher(host=mosquitto_broker.host, port=mosquitto_broker.port, topic_prefix=PREFIX, health=health,
                         reconnect_min_s=0.2, reconnect_max_s=0.5)
    assert pub.start(5.0)
    try:
        mosquitto_broker.stop()
        assert _wait(lambda: health.degraded("mqtt"), 10)
        mosquitto_broker.start()
        sub = Subscriber(mosquitto_broker, f"{PREFIX}/#").start()
        assert _wait(lambda: not health.degraded("mqtt"), 10)
        assert sub.wait_for(lambda s: _statuses(s)[-1:] == [b"degraded"])  # inference still degraded
        sub.stop()
    finally:
        pub.stop()


def test_two_clients_with_one_id_are_reported_once_as_a_conflict(mosquitto_broker, caplog):
    pubs = [EventPublisher(host=mosquitto_broker.host, port=mosquitto_broker.port, client_id="facegate-twin",
                           topic_prefix=f"{PREFIX}/{i}", health=Health()) for i in range(2)]
    with caplog.at_level(logging.INFO, logger="facegate"):
        pubs[0].start(5.0)
        pubs[1].start(5.0, require=False)
        try:
            assert _wait(lambda: "event=mqtt_client_id_conflict " in caplog.text, 40), caplog.text[-3000:]
            marker = len(caplog.records)
            time.sleep(5.0)  # they keep knocking each other off: no line per disconnect any more
            later = [r.getMessage() for r in caplog.records[marker:]]
            assert not [m for m in later if "event=mqtt_disconnected" in m], later
            assert any(p.health.degraded("mqtt") for p in pubs)
            conflict = [r.getMessage() for r in caplog.records if "event=mqtt_client_id_conflict " in r.getMessage()]
            assert len(conflict) <= 2 and "client_id=facegate-twin" in conflict[0]  # at most once per client
            disconnects = [r for r in caplog.records if "event=mqtt_disconnected" in r.getMessage()]
            assert len(disconnects) <= 2 * CONFLICT_AFTER
            pubs[1].stop()  # the other one goes away: the first one's connection lasts, the episode ends
            assert _wait(lambda: not pubs[0].health.degraded("mqtt"), 20), caplog.text[-2000:]
        finally:
            for p in pubs:
                p.stop()
    assert "Unspecified error" not in "\n".join(r.getMessage() for r in caplog.records[marker:])


def test_default_client_id_is_unique_per_host_and_prefix_and_not_pinned_by_the_example():
    a = default_client_id("facegate", "door.example_host")
    assert a.startswith("facegate-door-example-host-") and len(a.rsplit("-", 1)[1]) == 8
    assert a == default_client_id("facegate", "door.example_host")  # stable across restarts
    assert a != default_client_id("site2/facegate", "door.example_host")
    assert a != default_client_id("facegate", "other-host")
    example = Config.model_validate(yaml.safe_load((REPO / "config" / "example.yaml").read_text()))
    assert example.mqtt.client_id is None
    pub = EventPublisher.from_config(MqttConfig(host="127.0.0.1", topic_prefix="x"))
    assert pub.client_id == default_client_id("x")


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def test_reconnect_delays_are_validated():
    with pytest.raises(ValidationError, match="reconnect_max_s must be ≥ reconnect_min_s"):
        MqttConfig(host="x", reconnect_min_s=5, reconnect_max_s=1)
    for bad in ({"reconnect_min_s": 0}, {"reconnect_max_s": -1}, {"reconnect_max_s": 1e9}):
        with pytest.raises(ValidationError):
            MqttConfig(host="x", **bad)
