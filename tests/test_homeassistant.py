"""Home Assistant MQTT discovery payloads (facegate/homeassistant.py) checked against HA's documentation.

The key lists below are copied from Home Assistant's MQTT integration docs (home-assistant.io, source files
source/_integrations/{lock,binary_sensor,sensor,event}.mqtt.markdown, "Configuration Variables"): ``required`` are
the keys marked ``required: true``; ``documented`` every key the page lists. A payload must carry the required keys,
no key HA does not document (a misspelt key is silently ignored by HA), and ``unique_id`` + ``device.identifiers``
(entities without them cannot join the device registry, per the ``device`` description on each page).
"""

from __future__ import annotations

import json
import re

import pytest

from facegate.homeassistant import (
    EVENT_TYPES,
    STATUS_UP_TEMPLATE,
    daemon_entities,
    discovery_topic,
    door_agent_entities,
    removals,
)

COMMON = {"availability", "availability_mode", "availability_template", "availability_topic", "device",
          "enabled_by_default", "entity_category", "icon", "json_attributes_template", "json_attributes_topic",
          "name", "object_id", "payload_available", "payload_not_available", "qos", "unique_id"}
DOCS = {
    "lock": {"required": {"command_topic"},
             "documented": COMMON | {"command_topic", "optimistic", "payload_lock", "payload_unlock", "payload_open",
                                     "retain", "state_locked", "state_unlocked", "state_topic", "value_template"}},
    "binary_sensor": {"required": {"state_topic"},
                      "documented": COMMON | {"device_class", "expire_after", "force_update", "off_delay",
                                              "payload_off", "payload_on", "state_topic", "value_template"}},
    "sensor": {"required": {"state_topic"},
               "documented": COMMON | {"device_class", "expire_after", "force_update", "last_reset_value_template",
                                       "state_class", "state_topic", "unit_of_measurement", "value_template"}},
    "event": {"required": {"state_topic", "event_types"},
              "documented": COMMON | {"device_class", "encoding", "event_types", "state_topic", "value_template"}},
}
DEVICE_KEYS = {"configuration_url", "connections", "hw_version", "identifiers", "manufacturer", "model", "name",
               "suggested_area", "sw_version", "via_device"}
TOPIC = re.compile(r"^homeassistant/(lock|binary_sensor|sensor|event)/[A-Za-z0-9_-]+/[A-Za-z0-9_-]+/config$")


def check_announcement(a) -> str:
    match = TOPIC.match(a.topic)
    assert match, a.topic
    component = match.group(1)
    config = json.loads(a.payload())
    spec = DOCS[component]
    assert spec["required"] <= set(config), (component, spec["required"] - set(config))
    assert set(config) <= spec["documented"], (component, set(config) - spec["documented"])
    assert config["unique_id"] and config["device"]["identifiers"]
    assert set(config["device"]) <= DEVICE_KEYS
    for avail in config.get("availability", []):
        assert set(avail) <= {"topic", "payload_available", "payload_not_available", "value_template"}
        assert avail["topic"]
    return component


def test_door_agent_lock_entity():
    [lock] = door_agent_entities(discovery_prefix="homeassistant", topic_prefix="facegate", door="front")
    assert check_announcement(lock) == "lock"
    config = lock.config
    assert lock.topic == "homeassistant/lock/facegate_door_front/lock/config"
    assert config["state_topic"] == "facegate/front/state"
    assert config["command_topic"] == "facegate/front/command"
    assert config["availability"][0]["topic"] == "facegate/front/agent"
    assert config["optimistic"] is False  # state comes from the door, never assumed from a command
    for state, shown in [("locked", "LOCKED"), ("unlocked", "UNLOCKED"), ("open", "UNLOCKED"),
                         ("forced", "JAMMED"), ("held_open", "JAMMED")]:
        assert f"'{state}': '{shown}'" in config["value_template"]


def test_daemon_entities_cover_status_cameras_and_doors():
    ann = daemon_entities(discovery_prefix="homeassistant", topic_prefix="facegate", node_id="gate-1",
                          cameras=["cam1", "cam2"], doors=["front"])
    kinds = [check_announcement(a) for a in ann]
    assert kinds.count("binary_sensor") == 4 and kinds.count("sensor") == 2 and kinds.count("event") == 1
    status = ann[0].config
    assert status["state_topic"] == "facegate/status" and status["device_class"] == "connectivity"
    assert (status["payload_on"], status["payload_off"]) == ("online", "offline")
    # a degraded daemon is up (connected, available); the problem sensor shows it from the health JSON
    assert status["value_template"] == STATUS_UP_TEMPLATE and "value in ('online', 'degraded')" in STATUS_UP_TEMPLATE
    problem = ann[1].config
    assert problem["device_class"] == "problem" and problem["state_topic"] == "facegate/health"
    assert "value_json.state == 'degraded'" in problem["value_template"]
    assert all(a.config["availability"][0]["value_template"] == STATUS_UP_TEMPLATE for a in ann[1:])
    event = next(a.config for a in ann if "/event/" in a.topic)
    assert event["event_types"] == list(EVENT_TYPES) and event["state_topic"] == "facegate/front/event"
    assert "value_json.type" in event["value_template"] and "person_name" in event["value_template"]
    assert len({a.config["unique_id"] for a in ann}) == len(ann)


def test_removed_cameras_and_doors_are_listed_for_removal():
    before = daemon_entities(discovery_prefix="homeassistant", topic_prefix="facegate", node_id="gate-1",
                             cameras=["cam1", "cam2"], doors=["front", "back"])
    after = daemon_entities(discovery_prefix="homeassistant", topic_prefix="facegate", node_id="gate-1",
                            cameras=["cam1"], doors=["front"])
    gone = removals([a.topic for a in before], after)
    assert gone == sorted(a.topic for a in before if "cam2" in a.topic or "back" in a.topic)
    assert len(gone) == 3


@pytest.mark.parametrize(("parts", "topic"), [
    (("homeassistant", "lock", "door front", "lock"), "homeassistant/lock/door_front/lock/config"),
    (("ha/", "sensor", "n", "a+b#"), "ha/sensor/n/a_b_/config"),
])
def test_discovery_topics_never_hold_wildcards(parts, topic):
    assert discovery_topic(*parts) == topic
