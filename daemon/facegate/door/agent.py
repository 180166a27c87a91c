"""The door agent: MQTT in, verified grants to the lock output, door state and passages back.

Topics (``facegate.homeassistant.door_topics``), with ``<prefix>`` the daemon's topic prefix:

* ``<prefix>/<door>/event`` (in, QoS 1, persistent session: clean_session False and a fixed client id, so grants
  published while the agent restarts are delivered afterwards, and the verifier refuses those that expired);
* ``<prefix>/<door>/command`` (in, only when signed remote unlock is enabled);
* ``<prefix>/<door>/state`` (out, retained): locked / unlocked / open / forced / held_open;
* ``<prefix>/<door>/passage`` (out, QoS 1): ``{"type": "passage", "door", "event_id", "granted_at", "opened_at"}``,
  signed with ``inputs.passage_signing_key`` when set;
* ``<prefix>/<door>/agent`` (out, retained): "online", and "offline" as the last will or at a clean stop;
* MQTT inputs: the contact / REX topics of the config.

Every refused message is counted by reason (``stats``) and logged once, key=value. The output is released at start,
at stop and on any error (``PulseController``); losing the broker opens nothing (a pulse in progress still ends on
time).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from facegate.door.config import DoorAgentConfig, load_passage_key
from facegate.door.inputs import DoorStateMachine, GpiodInput, InputLine, InputPoller
from facegate.door.outputs import Actuator, PulseController, build_actuator
from facegate.door.replay import ReplayCache
from facegate.door.verify import AcceptedKeys, check_event
from facegate.errors import ConfigError
from facegate.fileio import read_limited
from facegate.homeassistant import door_agent_entities, door_topics
from facegate.signing import MAX_KEY_FILE_BYTES, encode_payload, load_signing_key, sign_payload_v2

log = logging.getLogger(__name__)


class DoorAgent:
    """One door. ``actuator`` / ``input_lines`` override what the config would build (tests pass a GPIO seam fake);
    ``now`` is the wall clock (aware UTC) used by the verifier. Raises ``ConfigError`` for bad key files or replay
    cache, ``OutputError``/``InputError`` for GPIO lines that cannot be requested."""

    def __init__(self, config: DoorAgentConfig, *, actuator: Actuator | None = None,
                 input_lines: dict[str, InputLine] | None = None,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.config, self.now = config, now
        self.door = config.door
        self.topics = door_topics(config.mqtt.topic_prefix, config.door)
        self.keys = AcceptedKeys.from_files(config.keys.public_keys, config.keys.hmac_key_file,
                                            config.keys.allow_hmac)
        ru = config.homeassistant.remote_unlock
        self.remote_keys = (AcceptedKeys(hmac_key=load_signing_key(ru.hmac_key_file), allow_hmac=True)
                            if ru.enabled and ru.hmac_key_file else None)
        # passages are signed so that the daemon's confirmed anti-passback can trust them (runtime/passages.py)
        self.passage_key = load_passage_key(config)
        self.replay = ReplayCache(config.replay_cache.path, max_entries=config.replay_cache.max_entries)
        self.stats: Counter[str] = Counter()
        self._lock = threading.Lock()
        inputs = config.inputs
        self.machine = DoorStateMachine(
            config.door, has_contact=inputs.contact is not None, held_open_s=inputs.held_open_s,
            passage_window_s=inputs.passage_window_s, on_state=self._publish_state, on_passage=self._publish_passage)
        self.output = PulseController(
            actuator or build_actuator(config.output), pulse_s=config.output.pulse_s,
            max_hold_s=config.output.max_hold_s, retry_release_s=config.output.retry_release_s,
            on_change=lambda active: self.machine.output_changed(active, time.monotonic()))
        lines = dict(input_lines or {})
        for name, source in (("contact", inputs.contact), ("rex", inputs.rex)):
            if source is not None and source.gpio is not None and name not in lines:
                lines[name] = GpiodInput(source.gpio.chip, source.gpio.line, active_low=source.gpio.active_low)
        self.poller = InputPoller(lines, self._gpio_input, poll_s=inputs.poll_ms / 1000,
                                  debounce_s=inputs.debounce_ms / 1000) if lines else None
        self.mqtt_inputs = {src.mqtt.topic: (name, src.mqtt) for name, src in
                            (("contact", inputs.contact), ("rex", inputs.rex)) if src is not None and src.mqtt}
        self.client = self._make_client()
        self.ready = threading.Event()  # set once subscribed (tests and systemd READY wait on it)
        self._stopping = threading.Event()

    # ------------------------------------------------------------------------------------------------ MQTT
    def _make_client(self) -> paho.Client:
        m = self.config.mqtt
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.config.client_id, clean_session=False)
        client.reconnect_delay_set(1, m.reconnect_max_s)
        if m.username:
            password = None
            if m.password_file:
                try:  # bounded: never a device, a FIFO or more than a key file's 64 KiB
                    password = read_limited(m.password_file, MAX_KEY_FILE_BYTES, "a password file").decode(
                        "utf-8").splitlines()[0]
                except (OSError, IndexError, UnicodeDecodeError) as exc:
                    raise ConfigError(f"mqtt.password_file {m.password_file}: cannot read a password ({exc})") \
                        from None
            client.username_pw_set(m.username, password)
        if m.tls is not None:
            try:
                client.tls_set(ca_certs=m.tls.ca, certfile=m.tls.cert, keyfile=m.tls.key,
                               cert_reqs=ssl.CERT_REQUIRED)
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise ConfigError(f"mqtt.tls: cannot load the certificates ({exc})") from None
        client.will_set(self.topics["availability"], b"offline", qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            log.error("event=broker_refused door=%s reason=%s", self.door, reason)
            return
        log.info("event=broker_connected door=%s session_present=%s", self.door,
                 getattr(flags, "session_present", None))
        subs = [(self.topics["event"], 1)] + [(t, 1) for t in self.mqtt_inputs]
        if self.remote_keys is not None:
            subs.append((self.topics["command"], 1))
        client.subscribe(subs)
        ha = self.config.homeassistant
        for a in door_agent_entities(discovery_prefix=ha.discovery_prefix, topic_prefix=self.config.mqtt.topic_prefix,
                                     door=self.door, name=ha.name):
            # retained config when enabled; an empty retained payload removes the entity once discovery is disabled
            client.publish(a.topic, a.payload() if ha.enabled else b"", qos=1, retain=True)
        client.publish(self.topics["state"], self.machine.state.encode(), qos=1, retain=True)

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        if any(rc.is_failure for rc in reason_codes):
            log.error("event=subscribe_refused door=%s codes=%s", self.door, reason_codes)
            return
        client.publish(self.topics["availability"], b"online", qos=1, retain=True)
        log.info("event=door_agent_ready door=%s topic=%s", self.door, self.topics["event"])
        self.ready.set()

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if not self._stopping.is_set():
            log.warning("event=broker_lost door=%s reason=%s (the door stays locked; reconnecting)", self.door, reason)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        try:
            if msg.topic == self.topics["event"]:
                self.handle_event(bytes(msg.payload), remote=False)
            elif msg.topic == self.topics["command"] and self.remote_keys is not None:
                self.handle_event(bytes(msg.payload), remote=True)
            elif msg.topic in self.mqtt_inputs:
                self._mqtt_input(msg.topic, bytes(msg.payload))
        except Exception:  # never let one message kill paho's network thread
            log.exception("event=message_handler_error door=%s topic=%s", self.door, msg.topic)

    # -------------------------------------------------------------------------------------------- decisions
    def handle_event(self, message: bytes, *, remote: bool = False) -> bool:
        """Verify one message; pulse the output when it is an acceptable grant. Returns whether it opened."""
        c = self.config.checks
        verdict = check_event(
            message, door=self.door, keys=self.remote_keys if remote else self.keys, now=self.now(),
            max_ttl_s=c.max_ttl_s, max_skew_s=c.max_skew_s, replay=self.replay, max_bytes=c.max_bytes,
            accept_type="remote_unlock" if remote else "grant")
        source = "command" if remote else "event"
        if not verdict.ok:
            with self._lock:
                self.stats[verdict.reason or "internal_error"] += 1
                count = self.stats[verdict.reason or "internal_error"]
            # an authenticated deny/unknown is the daemon's ordinary traffic on this topic: info, not a warning
            routine = verdict.reason == "not_grant" and verdict.authenticated
            log.log(logging.INFO if routine else logging.WARNING,
                    "event=event_rejected door=%s source=%s reason=%s event_id=%s authenticated=%s count=%d",
                    self.door, source, verdict.reason, _short(verdict.event_id), verdict.authenticated, count)
            return False
        with self._lock:
            self.stats["accepted"] += 1
        opened = self.output.pulse()
        # "requested": the output thread switches it and logs output_activated, or output_error when it could not
        log.info("event=grant_accepted door=%s source=%s event_id=%s version=%s kid=%s output=%s", self.door, source,
                 verdict.event_id, verdict.version, verdict.kid, "requested" if opened else "max_hold_reached")
        if opened and verdict.event_id and not remote:
            self.machine.granted(verdict.event_id, time.monotonic())
        return opened

    # ----------------------------------------------------------------------------------------------- inputs
    def _gpio_input(self, name: str, active: bool) -> None:
        now = time.monotonic()
        if name == "contact":
            self.machine.contact(active, now)
        elif name == "rex" and active:
            self.machine.rex(now)
            if self.config.inputs.rex_unlocks:
                log.info("event=rex_pressed door=%s output=requested", self.door)
                self.output.pulse()

    def _mqtt_input(self, topic: str, payload: bytes) -> None:
        name, source = self.mqtt_inputs[topic]
        text = payload.decode("utf-8", "replace").strip()
        if text not in (source.active_payload, source.inactive_payload):
            log.warning("event=input_payload_unknown door=%s input=%s payload=%r", self.door, name, text[:40])
            return
        active, now = text == source.active_payload, time.monotonic()
        if name == "contact":
            self.machine.contact(active, now)
        elif active:  # an MQTT REX marks the opening as authorised but never drives the output (unsigned)
            self.machine.rex(now)

    # ---------------------------------------------------------------------------------------------- publish
    def _publish_state(self, state: str) -> None:
        self.client.publish(self.topics["state"], state.encode(), qos=1, retain=True)

    def _publish_passage(self, payload: dict[str, Any]) -> None:
        payload = {"type": "passage", **payload}  # typed: a signed grant event can never pass for a passage
        if self.passage_key is not None:
            payload = sign_payload_v2(payload, self.passage_key)
        self.client.publish(self.topics["passage"], encode_payload(payload), qos=1, retain=False)

    # ---------------------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Release the output, start inputs, connect (in the background: the broker may come later)."""
        self.output.start()
        if self.poller is not None:
            self.poller.start()
        m = self.config.mqtt
        self.client.connect_async(m.host, m.port, keepalive=m.keepalive_s)
        self.client.loop_start()
        log.info("event=door_agent_started door=%s output=%r keys=%d hmac=%s broker=%s:%d", self.door,
                 self.output.actuator.describe(), len(self.keys.public_keys), self.keys.allow_hmac, m.host, m.port)
        if self.config.inputs.contact is not None and self.passage_key is None:
            log.warning("event=passages_unsigned door=%s hint=%s", self.door, "a daemon door with "
                        "anti_passback_confirmed refuses unsigned passages: set inputs.passage_signing_key")

    def tick(self) -> None:
        """Periodic work (held_open, stale grants); the command loop calls it a few times a second."""
        self.machine.tick(time.monotonic())

    def healthy(self) -> bool:
        """The output thread is alive (fed to the systemd watchdog)."""
        return self.output.alive

    def stop(self) -> None:
        """Release the output, publish offline, disconnect. Safe to call twice."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self.output.stop()
        if self.poller is not None:
            self.poller.stop()
        try:
            info = self.client.publish(self.topics["availability"], b"offline", qos=1, retain=True)
            if self.client.is_connected():
                info.wait_for_publish(2.0)
        except (RuntimeError, ValueError) as exc:  # not connected: the broker publishes the will instead
            log.debug("offline not published: %r", exc)
        self.client.disconnect()
        self.client.loop_stop()
        self.replay.close()
        log.info("event=door_agent_stopped door=%s accepted=%d rejected=%s", self.door, self.stats["accepted"],
                 dict((k, v) for k, v in self.stats.items() if k != "accepted"))


def _short(value: str | None) -> str:
    """An event id for a log line: untrusted text, so bounded and without spaces."""
    return "-" if value is None else value[:64].replace(" ", "_").replace("\n", "_")
