"""Home Assistant MQTT discovery of the running daemon (``homeassistant:`` section, off by default).

On every (re)connect the daemon publishes its entities' retained discovery messages (``facegate.homeassistant
.daemon_entities``: a connectivity binary_sensor on ``<prefix>/status``; per camera a frames/s sensor and an online
binary_sensor; per door an event entity fed by the door's events) and deletes, with an empty retained payload, every
entity of the same node it announced before that the config no longer has (a camera or door removed): it
subscribes to ``<discovery_prefix>/+/<node_id>/+/config`` and clears what is retained there but not current.
Every ``state_every_s`` it publishes each camera's retained ``<prefix>/camera/<id>/state``
(``{"online": bool, "fps": float}``) for those entities.

Remote unlock from Home Assistant is not offered by the daemon at all: an unsigned command must never open a door
(the door agent has its own, separately authenticated, option).
"""

from __future__ import annotations

import json
import logging
import threading
from typing import TYPE_CHECKING

from facegate.homeassistant import Announcement, daemon_entities, slug

if TYPE_CHECKING:
    from facegate.config import Config
    from facegate.runtime.capture import CaptureStage
    from facegate.runtime.mqtt import EventPublisher

log = logging.getLogger(__name__)

#: Camera states that count as online (delivering frames).
ONLINE_STATES = ("reading",)


class HomeAssistantDiscovery:
    """Announces the daemon's entities on each connect and publishes the cameras' state (``publish_states``)."""

    def __init__(self, publisher: EventPublisher, capture: CaptureStage, *, discovery_prefix: str, node_id: str,
                 topic_prefix: str, doors: list[str]) -> None:
        self.publisher = publisher
        self.capture = capture
        self.discovery_prefix = discovery_prefix.rstrip("/")
        self.node_id = slug(node_id)
        self.topic_prefix = topic_prefix.rstrip("/")
        self.doors = list(doors)
        self._lock = threading.Lock()
        self.current: list[Announcement] = []

    @classmethod
    def from_config(cls, config: Config, publisher: EventPublisher | None, capture: CaptureStage,
                    doors: list[str]) -> HomeAssistantDiscovery | None:
        """The announcer of ``homeassistant:`` (None when disabled; the config requires a broker when enabled)."""
        ha = config.homeassistant
        if not ha.enabled or publisher is None:
            return None
        node = ha.node_id or f"facegate_{publisher.client_id}"  # the id in force (a default one is per host)
        announcer = cls(publisher, capture, discovery_prefix=ha.discovery_prefix, node_id=node,
                        topic_prefix=config.mqtt.topic_prefix, doors=doors)
        publisher.subscribe(f"{announcer.discovery_prefix}/+/{announcer.node_id}/+/config", announcer._seen)
        publisher.on_connect(announcer.announce)
        return announcer

    def reconfigure(self, doors: list[str]) -> None:
        """SIGHUP: cameras or doors changed; announce the new set (old entities are cleared as they come back)."""
        self.doors = list(doors)
        self.announce()
        self.publish_states()

    def announce(self) -> None:
        """Publish every current entity's discovery config (retained)."""
        entities = daemon_entities(discovery_prefix=self.discovery_prefix, topic_prefix=self.topic_prefix,
                                   node_id=self.node_id, cameras=sorted(self.capture.cameras), doors=self.doors)
        with self._lock:
            self.current = entities
        for a in entities:
            self.publisher.publish_retained(a.topic, a.payload())
        log.info("event=homeassistant_announced node=%s entities=%d", self.node_id, len(entities))

    def _seen(self, topic: str, payload: bytes) -> None:
        """A retained discovery config of our node: delete it when it is no longer one of ours."""
        with self._lock:
            current = {a.topic for a in self.current}
        if payload and current and topic not in current:
            self.publisher.publish_retained(topic, b"")
            log.info("event=homeassistant_entity_removed topic=%s", topic)

    def publish_states(self) -> None:
        """Each camera's retained ``{"online", "fps"}`` (periodic)."""
        for cid, cam in list(self.capture.cameras.items()):
            state = {"online": cam.stats.state in ONLINE_STATES, "fps": round(float(cam.stats.fps), 1)}
            self.publisher.publish_retained(f"{self.topic_prefix}/camera/{cid}/state", json.dumps(state))
