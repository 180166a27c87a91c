"""Home Assistant MQTT discovery: payload builders for the door agent's lock and the daemon's entities.

Discovery (home-assistant.io/integrations/mqtt, "MQTT Discovery"): a retained JSON config on
``<discovery_prefix>/<component>/<node_id>/<object_id>/config`` creates an entity; an empty retained payload on the
same topic removes it. Keys are written in full (no abbreviations). Every entity gets a ``unique_id`` and a
``device`` with ``identifiers`` (needed for the device registry) and an ``availability`` list.

Builders (each returns an ``Announcement``: topic + config dict; ``payload()`` gives the bytes to publish retained):

* ``lock_entity``: the door agent's lock; state follows ``<prefix>/<door>/state`` (locked/unlocked/open/forced/
  held_open mapped onto HA's LOCKED/UNLOCKED/JAMMED by ``value_template``);
* ``connectivity_entity``: a ``binary_sensor`` (device_class connectivity) on an online/offline topic;
* ``sensor_entity``: a numeric ``sensor`` (e.g. frames per second) taken from a JSON state topic;
* ``event_entity``: an ``event`` entity whose ``event_types`` are grant/deny/unknown, fed from the daemon's
  ``<prefix>/<door>/event`` payloads (``type`` → ``event_type``; person and reason as attributes);
* ``door_agent_entities`` / ``daemon_entities``: the whole set for one agent / one daemon;
* ``removals``: the empty payloads that delete announced entities no longer configured.

Nothing here touches the network; callers publish with QoS 1 and retain=True.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from facegate import __version__

#: Door states (``facegate.door.inputs``) → the lock states HA knows (LOCKED/UNLOCKED/JAMMED are its defaults).
LOCK_VALUE_TEMPLATE = ("{{ {'locked': 'LOCKED', 'unlocked': 'UNLOCKED', 'open': 'UNLOCKED', "
                       "'forced': 'JAMMED', 'held_open': 'JAMMED'}.get(value, 'JAMMED') }}")
#: The daemon's event payload → HA's event payload (``event_type`` is required; the rest become attributes).
EVENT_VALUE_TEMPLATE = ('{"event_type": "{{ value_json.type }}", "person": {{ value_json.person_name | tojson }}, '
                        '"person_id": {{ value_json.person_id | tojson }}, "reason": {{ value_json.reason | tojson }}, '
                        '"camera": {{ value_json.camera | tojson }}, "score": {{ value_json.score | tojson }}}')
EVENT_TYPES = ("grant", "deny", "unknown")


@dataclass(frozen=True)
class Announcement:
    """One discovery message: ``topic`` and the ``config`` dict (JSON-serialisable)."""

    topic: str
    config: dict[str, Any]

    def payload(self) -> bytes:
        return json.dumps(self.config, sort_keys=True, separators=(",", ":")).encode()


def slug(text: str) -> str:
    """An id usable as node_id/object_id: ``[a-zA-Z0-9_-]`` only (other characters become ``_``)."""
    return re.sub(r"[^a-zA-Z0-9_-]", "_", text) or "_"


def discovery_topic(discovery_prefix: str, component: str, node_id: str, object_id: str) -> str:
    """``<discovery_prefix>/<component>/<node_id>/<object_id>/config``."""
    return f"{discovery_prefix.rstrip('/')}/{component}/{slug(node_id)}/{slug(object_id)}/config"


def device_block(identifier: str, name: str, *, model: str, via_device: str | None = None) -> dict[str, Any]:
    """The ``device`` map: identifiers, name, manufacturer, model, sw_version (facegate's), optional via_device."""
    block: dict[str, Any] = {"identifiers": [identifier], "name": name, "manufacturer": "facegate", "model": model,
                             "sw_version": __version__}
    if via_device:
        block["via_device"] = via_device
    return block


#: The daemon's ``<prefix>/status`` is ``online``, ``degraded`` (running, a part failing closed) or ``offline``: a
#: degraded daemon is still there (available, connected); its problem shows on the problem sensor.
STATUS_UP_TEMPLATE = "{{ 'online' if value in ('online', 'degraded') else 'offline' }}"


def _availability(topic: str, online: str = "online", offline: str = "offline") -> list[dict[str, str]]:
    return [{"topic": topic, "payload_available": online, "payload_not_available": offline,
             "value_template": STATUS_UP_TEMPLATE}]


def _common(name: str, unique_id: str, device: dict[str, Any], availability_topic: str | None) -> dict[str, Any]:
    config: dict[str, Any] = {"name": name, "unique_id": unique_id, "device": device, "qos": 1}
    if availability_topic:
        config["availability"] = _availability(availability_topic)
    return config


def lock_entity(*, discovery_prefix: str, node_id: str, object_id: str, name: str, unique_id: str,
                state_topic: str, command_topic: str, availability_topic: str,
                device: dict[str, Any]) -> Announcement:
    """A ``lock``: state from ``state_topic`` (plain door state string), commands to ``command_topic`` (which the
    agent only listens to when signed remote unlock is enabled; a plain "UNLOCK" never opens)."""
    config = _common(name, unique_id, device, availability_topic)
    config.update(state_topic=state_topic, command_topic=command_topic, value_template=LOCK_VALUE_TEMPLATE,
                  payload_lock="LOCK", payload_unlock="UNLOCK", state_locked="LOCKED", state_unlocked="UNLOCKED",
                  optimistic=False, retain=False)
    return Announcement(discovery_topic(discovery_prefix, "lock", node_id, object_id), config)


def connectivity_entity(*, discovery_prefix: str, node_id: str, object_id: str, name: str, unique_id: str,
                        state_topic: str, device: dict[str, Any], payload_on: str = "online",
                        payload_off: str = "offline", value_template: str | None = None,
                        availability_topic: str | None = None) -> Announcement:
    """A ``binary_sensor`` with ``device_class: connectivity`` (on = ``payload_on``)."""
    config = _common(name, unique_id, device, availability_topic)
    config.update(state_topic=state_topic, device_class="connectivity", payload_on=payload_on,
                  payload_off=payload_off, entity_category="diagnostic")
    if value_template:
        config["value_template"] = value_template
    return Announcement(discovery_topic(discovery_prefix, "binary_sensor", node_id, object_id), config)


def problem_entity(*, discovery_prefix: str, node_id: str, object_id: str, name: str, unique_id: str,
                   state_topic: str, device: dict[str, Any], availability_topic: str | None = None) -> Announcement:
    """A ``binary_sensor`` with ``device_class: problem``, on while the daemon's retained health JSON
    (``<prefix>/health``, ``runtime/health.py``) says ``degraded``; its problems become attributes."""
    config = _common(name, unique_id, device, availability_topic)
    config.update(state_topic=state_topic, device_class="problem", payload_on="ON", payload_off="OFF",
                  value_template="{{ 'ON' if value_json.state == 'degraded' else 'OFF' }}",
                  json_attributes_topic=state_topic, entity_category="diagnostic")
    return Announcement(discovery_topic(discovery_prefix, "binary_sensor", node_id, object_id), config)


def sensor_entity(*, discovery_prefix: str, node_id: str, object_id: str, name: str, unique_id: str,
                  state_topic: str, value_template: str, unit: str, device: dict[str, Any],
                  availability_topic: str | None = None, expire_after_s: int | None = None) -> Announcement:
    """A numeric ``sensor`` (``state_class: measurement``) with ``unit_of_measurement``."""
    config = _common(name, unique_id, device, availability_topic)
    config.update(state_topic=state_topic, value_template=value_template, unit_of_measurement=unit,
                  state_class="measurement", entity_category="diagnostic")
    if expire_after_s:
        config["expire_after"] = int(expire_after_s)
    return Announcement(discovery_topic(discovery_prefix, "sensor", node_id, object_id), config)


def event_entity(*, discovery_prefix: str, node_id: str, object_id: str, name: str, unique_id: str,
                 state_topic: str, device: dict[str, Any], availability_topic: str | None = None) -> Announcement:
    """An ``event`` entity fed by the daemon's door events (``EVENT_VALUE_TEMPLATE``)."""
    config = _common(name, unique_id, device, availability_topic)
    config.update(state_topic=state_topic, event_types=list(EVENT_TYPES), value_template=EVENT_VALUE_TEMPLATE)
    return Announcement(discovery_topic(discovery_prefix, "event", node_id, object_id), config)


def removals(announced_topics: Iterable[str], current: Iterable[Announcement]) -> list[str]:
    """Topics announced before but no longer in ``current`` (a camera or door removed from the config): publish an
    empty retained payload on each to delete the entity."""
    keep = {a.topic for a in current}
    return sorted(t for t in set(announced_topics) if t not in keep)


# ------------------------------------------------------------------------------------------------------ sets
def door_topics(topic_prefix: str, door: str) -> dict[str, str]:
    """The agent's topics: event (in), command (in, signed remote unlock), state (out, retained), passage (out),
    availability (out, retained, with a last will)."""
    base = f"{topic_prefix.rstrip('/')}/{door}"
    return {"event": f"{base}/event", "command": f"{base}/command", "state": f"{base}/state",
            "passage": f"{base}/passage", "availability": f"{base}/agent"}


def door_agent_entities(*, discovery_prefix: str, topic_prefix: str, door: str,
                        name: str | None = None) -> list[Announcement]:
    """The lock entity of one door agent (node ``facegate_door_<door>``)."""
    topics = door_topics(topic_prefix, door)
    node = f"facegate_door_{slug(door)}"
    device = device_block(node, f"facegate door {door}", model="door agent")
    return [lock_entity(discovery_prefix=discovery_prefix, node_id=node, object_id="lock",
                        name=name or f"Door {door}", unique_id=f"{node}_lock", state_topic=topics["state"],
                        command_topic=topics["command"], availability_topic=topics["availability"], device=device)]


def daemon_entities(*, discovery_prefix: str, topic_prefix: str, node_id: str, cameras: Sequence[str],
                    doors: Sequence[str], camera_state_topic: str = "{prefix}/camera/{camera}/state",
                    stats_expire_s: int = 60) -> list[Announcement]:
    """The daemon's entities: a connectivity binary_sensor on ``<prefix>/status``; per camera a frames/s sensor
    and an online binary_sensor, both read from a retained JSON ``camera_state_topic`` (``{"online": bool,
    "fps": float}``); per door an event entity on ``<prefix>/<door>/event``."""
    prefix = topic_prefix.rstrip("/")
    status = f"{prefix}/status"
    node = slug(node_id)
    device = device_block(node, f"facegate {node_id}", model="face-recognition daemon")
    out = [connectivity_entity(discovery_prefix=discovery_prefix, node_id=node, object_id="status",
                               name="Status", unique_id=f"{node}_status", state_topic=status, device=device,
                               value_template=STATUS_UP_TEMPLATE),
           problem_entity(discovery_prefix=discovery_prefix, node_id=node, object_id="problem", name="Problem",
                          unique_id=f"{node}_problem", state_topic=f"{prefix}/health", device=device,
                          availability_topic=status)]
    for cam in cameras:
        topic = camera_state_topic.format(prefix=prefix, camera=cam)
        out.append(sensor_entity(discovery_prefix=discovery_prefix, node_id=node, object_id=f"{cam}_fps",
                                 name=f"Camera {cam} frames per second", unique_id=f"{node}_{slug(cam)}_fps",
                                 state_topic=topic, value_template="{{ value_json.fps }}", unit="fps",
                                 device=device, availability_topic=status, expire_after_s=stats_expire_s))
        out.append(connectivity_entity(
            discovery_prefix=discovery_prefix, node_id=node, object_id=f"{cam}_online",
            name=f"Camera {cam} online", unique_id=f"{node}_{slug(cam)}_online", state_topic=topic, device=device,
            payload_on="ON", payload_off="OFF", value_template="{{ 'ON' if value_json.online else 'OFF' }}",
            availability_topic=status))
    for door in doors:
        out.append(event_entity(discovery_prefix=discovery_prefix, node_id=node, object_id=f"{door}_decision",
                                name=f"Door {door} decision", unique_id=f"{node}_{slug(door)}_decision",
                                state_topic=f"{prefix}/{door}/event", device=device, availability_topic=status))
    return out
