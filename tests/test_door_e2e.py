"""From a video to the lock: `facegate run` on the stage clip → real Mosquitto → `facegate door` → a real local
Shelly Gen2 HTTP relay. The daemon signs with its default Ed25519 key (created in its state folder); the door holds
only the public half. Also: a stranger never actuates the relay; a confirmed passage (the door contact, over MQTT)
feeds the daemon's anti-passback; the daemon's Home Assistant discovery messages carry the keys HA requires."""

from __future__ import annotations

import json
import shutil
import sys
import time
import uuid
from pathlib import Path

import paho.mqtt.publish as mqtt_publish
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from conftest import need_shared  # noqa: E402
from daemon_process import Daemon, facegate, grants  # noqa: E402
from mosquitto import Subscriber  # noqa: E402
from shelly_server import ShellyRelay  # noqa: E402
from test_door_agent import Agent  # noqa: E402

pytestmark = pytest.mark.slow

STAGE = "data/videos/stage_clip_640x360.mp4"
CROWD = "data/videos/crowd_walking_1080p.mp4"
MIRANDA = "Lin-Manuel Miranda"
PREFIX = "site"


@pytest.fixture
def gallery(enrolled_gallery) -> Path:
    need_shared(STAGE)
    return enrolled_gallery


@pytest.fixture
def relay():
    server = ShellyRelay().start()
    yield server
    server.stop()


def _daemon(tmp_path: Path, gallery: Path, broker, cameras: list[dict], door: dict, **extra) -> Daemon:
    """A daemon whose Ed25519 key pair already sits in its state folder (``facegate keys generate``), so that the
    door agent can be started first: a grant must not be published before the door subscribed."""
    own = tmp_path / "gallery"
    shutil.copytree(gallery, own)
    config = {"cameras": cameras, "doors": [door], "gallery": {"path": str(own)},
              "decision": {"k": 3, "n": 5, "max_frame_age_s": 1.5, **extra.pop("decision", {})},
              "mqtt": {"host": broker.host, "port": broker.port, "topic_prefix": PREFIX,
                       "client_id": f"facegate-{uuid.uuid4().hex[:6]}", "keepalive_s": 5},
              "signing": {"algorithm": "ed25519"}, **extra}  # key_file: the state folder's event-signing.key
    daemon = Daemon(tmp_path, config)
    keys = facegate("keys", "generate", "--out", str(tmp_path / "state"), "--name", "event-signing")
    assert keys.returncode == 0, keys.stderr
    return daemon


def _agent(tmp_path: Path, broker, relay: ShellyRelay, **extra) -> Agent:
    config = {"door": "front",
              "mqtt": {"host": broker.host, "port": broker.port, "client_id": f"door-{uuid.uuid4().hex[:6]}",
                       "topic_prefix": PREFIX},
              "keys": {"public_keys": [str(tmp_path / "state" / "event-signing.pub")]},
              "checks": {"max_ttl_s": 5, "max_skew_s": 2},
              "replay_cache": {"path": str(tmp_path / "door-state" / "replay.db")},
              "output": {"http": {"url": relay.url, "switch_id": 0, "timeout_s": 2}, "pulse_s": 1, "max_hold_s": 3},
              **extra}
    path = tmp_path / "door.yaml"
    path.write_text(yaml.safe_dump(config))
    return Agent(path)


def test_the_performer_opens_the_door_once_and_a_stranger_never(gallery, mosquitto_broker, relay, tmp_path):
    stage = {"id": "stage", "file": str(need_shared(STAGE)), "door": "front", "start_s": 2.6, "stop_s": 7.0}
    daemon = _daemon(tmp_path, gallery, mosquitto_broker, [stage], {"id": "front", "allowed_groups": ["staff"]})
    agent = _agent(tmp_path, mosquitto_broker, relay).start()
    try:
        daemon.start()
        assert daemon.wait_exit(120) == 0, daemon.tail()  # the file ended: one continuous presence
        granted = grants(daemon.events())
        assert granted and all(g["version"] == 2 and g["alg"] == "ed25519" for g in granted), daemon.events()
        assert all(g["person_name"] == MIRANDA for g in granted)
        time.sleep(1.5)  # anything still in flight would arrive now
        assert len(granted) == 1, granted  # one presence in front of the door: one grant …
        assert len(relay.ons()) == 1, relay.calls  # … one actuation
        assert set(agent.rejections()) <= {"not_grant"}, agent.log()[-2000:]  # the daemon's unknowns: not openings
    finally:
        agent.stop()
        daemon.kill()
    assert not relay.output[0], "the agent's stop must release the relay"

    # strangers walking towards the same door: decided (unknown), never granted, never an actuation
    relay.calls.clear()
    crowd = {"id": "crowd", "file": str(need_shared(CROWD)), "door": "front", "loop": True}
    other = tmp_path / "strangers"
    other.mkdir()
    strangers = _daemon(other, gallery, mosquitto_broker, [crowd], {"id": "front"})
    agent = _agent(other, mosquitto_broker, relay).start()
    try:
        strangers.start()
        assert strangers.wait_events(lambda ev: len(ev) >= 3, 120), strangers.tail()
        assert strangers.terminate()[0] == 0
        time.sleep(1.0)
    finally:
        agent.stop()
        strangers.kill()
    assert not grants(strangers.events()) and relay.ons() == []


def test_a_confirmed_passage_feeds_anti_passback_and_home_assistant_sees_the_daemon(gallery, mosquitto_broker,
                                                                                     relay, tmp_path):
    contact = "test/front-contact"
    stage = {"id": "stage", "file": str(need_shared(STAGE)), "door": "front", "start_s": 2.6, "stop_s": 7.0,
             "loop": True}
    # the agent signs its passages with its own key pair; the daemon's door trusts only that key for them
    pair = facegate("keys", "generate", "--out", str(tmp_path / "door-keys"), "--name", "door-front")
    assert pair.returncode == 0, pair.stderr
    door = {"id": "front", "cooldown_s": 0, "anti_passback": True, "anti_passback_s": 600,
            "anti_passback_confirmed": True, "passage_public_key": str(tmp_path / "door-keys" / "door-front.pub")}
    # presence_gap_s 0.2: each re-recognition in the looped close-up counts as a new arrival (one grant per passage
    # would otherwise hold the whole loop as one passage: tests/test_passage_e2e.py)
    daemon = _daemon(tmp_path, gallery, mosquitto_broker, [stage], door,
                     decision={"repeat_after_s": 1, "presence_gap_s": 0.2},
                     homeassistant={"enabled": True, "node_id": "lobby"})
    ha = Subscriber(mosquitto_broker, "homeassistant/#").start()
    agent = _agent(tmp_path, mosquitto_broker, relay,
                   inputs={"contact": {"mqtt": {"topic": contact, "active_payload": "open",
                                                "inactive_payload": "closed"}}, "passage_window_s": 10,
                           "passage_signing_key": str(tmp_path / "door-keys" / "door-front.key")}).start()

    def door_contact(state: str) -> None:
        mqtt_publish.single(contact, state, qos=1, hostname=mosquitto_broker.host, port=mosquitto_broker.port)

    try:
        daemon.start()
        # grants while nobody walks through: anti-passback waits for a confirmed passage, so they keep coming
        assert daemon.wait_events(lambda ev: len(grants(ev)) >= 2, 90), daemon.tail()
        assert not [e for e in daemon.events() if e["reason"] == "anti_passback"]
        # a passage forged by anyone on the broker (unsigned, for a real grant's id) is refused, counts nothing
        forged = json.dumps({"type": "passage", "door": "front",
                             "event_id": grants(daemon.events())[-1]["event_id"]})
        mqtt_publish.single(f"{PREFIX}/front/passage", forged, qos=1, hostname=mosquitto_broker.host,
                            port=mosquitto_broker.port)
        assert daemon.wait_record("passage_ignored", 20, reason="unsigned"), daemon.tail()
        # the door opens right after a grant: the agent reports the passage, the daemon counts the entry …
        seen = len(relay.ons())
        assert daemon.wait_until(lambda: len(relay.ons()) > seen, 30), relay.calls
        door_contact("open")
        assert daemon.wait_record("passage_confirmed", 20, door="front"), daemon.tail() + agent.log()[-2000:]
        door_contact("closed")
        # … so the next time the same person is recognised at this entry it is an anti-passback deny
        assert daemon.wait_events(lambda ev: any(e["reason"] == "anti_passback" for e in ev), 30), daemon.tail()
    finally:
        agent.stop()
        code, _ = daemon.terminate()
        daemon.kill()
    assert code == 0
    ha.wait_for(lambda s: len(s.snapshot()) >= 4, 5)
    ha.stop()
    configs = {t: json.loads(p) for t, p, _ in ha.snapshot() if p}
    status = configs["homeassistant/binary_sensor/lobby/status/config"]
    assert status["state_topic"] == f"{PREFIX}/status" and status["device_class"] == "connectivity"
    event = configs["homeassistant/event/lobby/front_decision/config"]
    assert event["state_topic"] == f"{PREFIX}/front/event" and set(event["event_types"]) == {"grant", "deny", "unknown"}
    fps = configs["homeassistant/sensor/lobby/stage_fps/config"]
    for entity in (status, event, fps):  # what HA's MQTT discovery requires of every entity we announce
        assert entity["unique_id"] and entity["device"]["identifiers"] and entity["name"]
