"""MQTT transport for door events (paho-mqtt ≥ 2, callback API VERSION2, MQTT 3.1.1).

* ``<prefix>/status``: retained "online" (every part healthy) or "degraded" (``runtime/health.py``: some part
  has a problem; the daemon runs and fails closed), published after every (re)connect and whenever the health
  state changes; the last will (retained, QoS 1) says "offline" when the connection dies without a DISCONNECT
  (crash, SIGKILL, network loss); a clean ``stop`` publishes "offline" itself.
* ``<prefix>/health``: retained JSON of ``Health.snapshot()`` (state, and per part its reason, since, count),
  published with the status.
* ``<prefix>/<door>/event``: signed event payloads (events.py), QoS 1 by default, never retained.

Availability. paho reconnects with an exponential backoff from ``reconnect_min_s`` to ``reconnect_max_s``
(defaults 0.5 → 2 s, so the daemon is back within about 2 s of the broker's return). The default client id is
``facegate-<host name>-<8 hex of sha256(topic prefix)>`` (``default_client_id``): unique per host and prefix. Two
clients with one id take the session from each other at every reconnect (MQTT 3.1.1 §3.1.4: the broker
disconnects the existing client); ``CONFLICT_AFTER`` connections in a row that end within ``SHORT_CONNECTION_S``
of their CONNACK are reported once as ``event=mqtt_client_id_conflict`` (health part ``mqtt``) instead of a
disconnect warning every second, until a connection lasts.

Events go through a bounded in-memory queue, handed to paho only while connected, in order. While the broker is
away they wait; when the queue is full the oldest non-grant is dropped (then the oldest grant) and counted in
``stats["dropped"]``. A grant whose ``expires_at`` has passed is never sent: neither from the queue nor as a
paho re-transmission after a reconnect (``_purge_expired_inflight``); it stays in the audit log only.

``start(wait_s, require=True)`` raises ``BrokerError`` when no connection is made within ``wait_s`` (and stops);
``require=False`` logs a warning and keeps retrying in the background (backoff ``reconnect_min_s`` →
``reconnect_max_s``). ``connected`` is a ``threading.Event`` the service can wait on before systemd READY.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
import os
import queue
import re
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from facegate.errors import BrokerError, ConfigError

if TYPE_CHECKING:
    from facegate.config import MqttConfig
    from facegate.runtime.events import SignedEvent
from facegate.fileio import read_limited
from facegate.runtime.events import event_topic, health_topic, status_topic
from facegate.runtime.health import Health
from facegate.signing import MAX_KEY_FILE_BYTES, encode_payload, parse_rfc3339

log = logging.getLogger(__name__)

ONLINE, DEGRADED, OFFLINE = b"online", b"degraded", b"offline"
#: A connection that ends within this many seconds of its CONNACK counts as short (client-id takeover heuristic).
SHORT_CONNECTION_S = 5.0
#: Short connections in a row that are reported as a client-id conflict.
CONFLICT_AFTER = 3
#: MQTT 5 reason code "Session taken over" (MQTT 5.0 §3.14.2.1), sent by brokers that speak 5 to 5 clients.
SESSION_TAKEN_OVER = 142


def default_client_id(topic_prefix: str, hostname: str | None = None) -> str:
    """``facegate-<host>-<hash>``: the host name (letters, digits and ``-`` only, at most 32 characters) and the
    first 8 hex digits of SHA-256 over ``topic_prefix``, so two daemons on one host with different prefixes, or on
    two hosts, never share a client id. ``hostname`` defaults to ``socket.gethostname()``."""
    host = re.sub(r"[^A-Za-z0-9-]+", "-", hostname if hostname is not None else socket.gethostname())
    digest = hashlib.sha256(topic_prefix.encode("utf-8")).hexdigest()[:8]
    return f"facegate-{host.strip('-')[:32] or 'host'}-{digest}"


class _Item:
    __slots__ = ("topic", "data", "expires", "event_id")

    def __init__(self, topic: str, data: bytes, expires: datetime | None, event_id: str) -> None:
        self.topic, self.data, self.expires, self.event_id = topic, data, expires, event_id


class EventPublisher:
    """Publishes signed door events and the status topic. Keyword-only constructor:

    ``host``, ``port`` (1883; 8883 usual with TLS), ``client_id`` (None: paho generates one), ``username``,
    ``password`` (plain strings; the service reads them from a file or the environment), ``tls`` (bool),
    ``ca_file``/``cert_file``/``key_file`` (PEM paths; None: system CAs, no client certificate),
    ``tls_insecure`` (skip host-name check; tests only), ``topic_prefix`` ("facegate"), ``qos`` (0, 1 or 2; 1),
    ``keepalive_s`` (30), ``queue_max`` (events held while disconnected, 1000), ``reconnect_min_s`` /
    ``reconnect_max_s`` (0.5 / 2 s, paho's exponential backoff), ``health`` (the registry whose state the status
    and health topics carry, and where broker problems are reported; a private one when None). The values are
    trusted: the ``mqtt:`` config section (``from_config``) validated them.

    As a sink of the emitter (``emit``) it is not critical: a full queue or a broker that is away never stops an
    event from reaching the sinks after it.
    """

    name = "mqtt"
    critical = False

    def __init__(
        self,
        *,
        host: str,
        port: int = 1883,
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        tls: bool = False,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        tls_insecure: bool = False,
        topic_prefix: str = "facegate",
        qos: int = 1,
        keepalive_s: int = 30,
        queue_max: int = 1000,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 2.0,
        health: Health | None = None,
    ) -> None:
        self.host, self.port, self.qos = host, int(port), qos
        self.client_id = client_id
        self.health = health if health is not None else Health()
        self.topic_prefix = topic_prefix.rstrip("/")
        self.keepalive_s = int(keepalive_s)
        self.queue_max = queue_max
        self.connected = threading.Event()
        self.stats: Counter[str] = Counter()
        self.last_error: str | None = None
        self._queue: collections.deque[_Item] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._inflight: dict[int, _Item] = {}
        self._acks: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._sending = False
        self._sender: threading.Thread | None = None
        self._started = False
        self._stopped = False
        self._status_lock = threading.Lock()
        self._connected_at = 0.0
        self._short = 0  # short connections in a row (see SHORT_CONNECTION_S)
        self._conflict = False  # a client-id conflict episode is going on

        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or "", protocol=paho.MQTTv311)
        if username is not None:
            c.username_pw_set(username, password)
        self._tls = (ca_file, cert_file, key_file, tls_insecure) if tls else None
        if tls:
            try:
                c.tls_set(ca_certs=ca_file, certfile=cert_file, keyfile=key_file)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"mqtt.tls: cannot load the CA/certificate/key files ({exc})") from exc
            c.tls_insecure_set(tls_insecure)
        c.will_set(status_topic(self.topic_prefix), OFFLINE, qos=1, retain=True)
        c.reconnect_delay_set(min_delay=reconnect_min_s, max_delay=max(reconnect_min_s, reconnect_max_s))
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_connect_fail = self._on_connect_fail
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        self._subscriptions: dict[str, Callable[[str, bytes], None]] = {}
        self._connect_hooks: list[Callable[[], None]] = []
        self._client = c
        self.health.subscribe(self.publish_health)

    @classmethod
    def from_config(cls, m: MqttConfig, health: Health | None = None) -> EventPublisher:
        """A publisher for the ``mqtt:`` section (``m.host`` must be set); the password comes from
        ``password_file``/``password_env`` (``read_password``); the client id, when ``m.client_id`` is not set,
        from ``default_client_id``; ``health`` is the daemon's registry."""
        assert m.host is not None, "from_config needs mqtt.host"
        tls = m.tls
        return cls(
            host=m.host, port=m.port, client_id=m.client_id or default_client_id(m.topic_prefix),
            username=m.username, password=read_password(m),
            tls=tls is not None, ca_file=tls.ca if tls else None, cert_file=tls.cert if tls else None,
            key_file=tls.key if tls else None, tls_insecure=bool(tls and tls.insecure), topic_prefix=m.topic_prefix,
            qos=m.qos, keepalive_s=m.keepalive_s, queue_max=m.queue_max, reconnect_min_s=m.reconnect_min_s,
            reconnect_max_s=m.reconnect_max_s, health=health,
        )

    def emit(self, event: SignedEvent) -> None:
        """Sink: queue the signed payload for its door's topic."""
        self.publish_event(event.payload)

    # ------------------------------------------------------------------------------------------- lifecycle
    def start(self, wait_s: float = 5.0, *, require: bool = True) -> bool:
        """Connect in the background and start the sender; returns whether connected within ``wait_s`` seconds.

        With ``require=True`` a failed first connection stops the client and raises ``BrokerError`` naming the
        broker and the last error; with ``require=False`` it only warns and keeps retrying.
        """
        if self._started:
            raise RuntimeError("EventPublisher.start called twice")
        self._started = True
        try:
            self._client.connect_async(self.host, self.port, keepalive=self.keepalive_s)
        except (OSError, ValueError) as exc:
            raise BrokerError(f"MQTT broker {self.host}:{self.port}: {exc}") from exc
        self._client.loop_start()
        self._sender = threading.Thread(target=self._send_loop, name="mqtt-sender", daemon=True)
        self._sender.start()
        if self.connected.wait(wait_s):
            return True
        why = self._diagnose() or self.last_error or "no answer"
        if require:
            self.stop(timeout_s=0.5)
            raise BrokerError(
                f"MQTT broker {self.host}:{self.port} not reachable within {wait_s:g} s ({why}); "
                "check mqtt.host/port/tls/credentials and that the broker runs"
            )
        log.warning("event=mqtt_not_connected broker=%s:%d error=%s action=retrying", self.host, self.port, why)
        return False

    def _diagnose(self) -> str | None:
        """Why the broker could not be reached, from one direct TCP (and TLS) attempt; None when those work.

        paho's background loop swallows the socket/TLS exception of a failed attempt, so the reason is fetched
        again here for the error message.
        """
        try:
            sock = socket.create_connection((self.host, self.port), timeout=2.0)
        except OSError as exc:
            return f"TCP connect failed: {exc.strerror or exc}"
        with sock:
            if not self._tls:
                return None
            ca, cert, key, insecure = self._tls
            try:
                ctx = ssl.create_default_context(cafile=ca)
                if cert:
                    ctx.load_cert_chain(cert, key)
                if insecure:
                    ctx.check_hostname = False
                with ctx.wrap_socket(sock, server_hostname=self.host):
                    return None
            except (ssl.SSLError, OSError) as exc:
                return f"TLS handshake failed: {getattr(exc, 'reason', None) or exc}"

    def stop(self, timeout_s: float = 3.0) -> None:
        """Flush what can be flushed within ``timeout_s``, publish retained "offline", disconnect, stop threads."""
        if self._stopped or not self._started:
            return
        self._stopped = True
        deadline = _mono() + timeout_s
        with self._cond:
            while self.connected.is_set() and (self._queue or self._inflight or self._sending) and _mono() < deadline:
                self._cond.wait(0.05)
            self._stopping = True
            left = len(self._queue)
            self._cond.notify_all()
        if left:
            log.warning("event=mqtt_stop_unsent count=%d note=events_remain_in_audit_log", left)
        if self.connected.is_set():
            info = self._client.publish(status_topic(self.topic_prefix), OFFLINE, qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(max(0.1, deadline - _mono()))
        self._client.disconnect()
        self._client.loop_stop()
        if self._sender is not None:
            self._sender.join(timeout=2.0)
        self.connected.clear()

    # ------------------------------------------------------------------------------------------- other traffic
    def subscribe(self, topic_filter: str, handler: Callable[[str, bytes], None]) -> None:
        """Call ``handler(topic, payload)`` (on paho's thread: return quickly, never raise on bad input) for every
        message matching ``topic_filter`` (QoS 1); the subscription is renewed after every reconnect."""
        self._subscriptions[topic_filter] = handler
        if self.connected.is_set():
            self._client.subscribe(topic_filter, qos=1)

    def on_connect(self, hook: Callable[[], None]) -> None:
        """Run ``hook()`` after every (re)connect, e.g. to publish retained announcements (paho's thread)."""
        self._connect_hooks.append(hook)
        if self.connected.is_set():
            hook()

    def publish_retained(self, topic: str, payload: bytes | str) -> None:
        """A retained QoS 1 message outside the event queue (state and announcements, never door events); an empty
        payload clears the retained message. Dropped silently while disconnected: the connect hooks re-send."""
        self._client.publish(topic, payload, qos=1, retain=True)

    # ------------------------------------------------------------------------------------------- publishing
    def publish_health(self) -> None:
        """Publish the retained ``<prefix>/health`` snapshot and ``<prefix>/status`` ("online"/"degraded") now,
        if connected (``on_connect`` publishes them after every reconnect). Serialised, and the snapshot is read
        inside the lock, so the last message retained is never older than the last change (``Health``
        listener)."""
        with self._status_lock:
            if not self.connected.is_set() or self._stopped:
                return
            snap = self.health.snapshot()
            self._client.publish(health_topic(self.topic_prefix), json.dumps(snap, sort_keys=True), qos=1,
                                 retain=True)
            self._client.publish(status_topic(self.topic_prefix), ONLINE if snap["state"] == "ok" else DEGRADED,
                                 qos=1, retain=True)

    def publish_event(self, payload: dict[str, Any]) -> None:
        """Queue a signed payload for ``<prefix>/<payload['door']>/event``; returns at once."""
        expires = parse_rfc3339(payload["expires_at"]) if payload.get("type") == "grant" else None
        if payload.get("type") == "grant" and expires is None:
            raise ValueError("a grant payload needs expires_at")
        item = _Item(event_topic(self.topic_prefix, str(payload["door"])), encode_payload(payload), expires,
                     str(payload.get("event_id")))
        with self._cond:
            if len(self._queue) >= self.queue_max:
                self._drop_one()
            self._queue.append(item)
            self._cond.notify_all()

    def pending(self) -> int:
        """Events queued or sent but not yet acknowledged."""
        with self._cond:
            return len(self._queue) + len(self._inflight) + int(self._sending)

    @property
    def queued(self) -> int:
        """Events waiting in the queue (not yet handed to paho)."""
        with self._cond:
            return len(self._queue)

    def _drop_one(self) -> None:
        now = datetime.now(UTC)
        victim = next((it for it in self._queue if it.expires is not None and it.expires <= now), None)
        if victim is None:
            victim = next((it for it in self._queue if it.expires is None), self._queue[0])
        self._queue.remove(victim)
        self.stats["dropped"] += 1
        log.warning("event=mqtt_queue_full dropped=%s total_dropped=%d", victim.event_id, self.stats["dropped"])

    def _reap(self) -> None:
        """Match PUBACKs (mids from ``_on_publish``) to in-flight events; call with ``_cond`` held, sender only.

        Only the sender thread reaps, and it registers a mid right after ``publish`` returns and before reaping,
        so an acknowledgement that overtakes the registration is still matched; mids of other messages
        (status) are dropped.
        """
        acked = set()
        while True:
            try:
                acked.add(self._acks.get_nowait())
            except queue.Empty:
                break
        for mid in acked:
            if self._inflight.pop(mid, None) is not None:
                self.stats["sent"] += 1

    def _send_loop(self) -> None:
        while True:
            with self._cond:
                self._reap()
                while not self._stopping and not (self._queue and self.connected.is_set()):
                    self._cond.wait(0.05 if self._inflight else 0.5)
                    self._reap()
                    self._cond.notify_all()
                if self._stopping:
                    return
                item = self._queue.popleft()
                if item.expires is not None and item.expires <= datetime.now(UTC):
                    self.stats["expired"] += 1
                    log.warning("event=grant_expired_not_sent event_id=%s", item.event_id)
                    continue
                self._sending = True
            # paho takes its own locks inside publish and calls back under them: never hold _cond here
            info = self._client.publish(item.topic, item.data, qos=self.qos, retain=False)
            with self._cond:
                self._sending = False
                if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                    self._queue.appendleft(item)
                    self._cond.wait(0.1)
                    continue
                # NO_CONN keeps the message inside paho, sent after the reconnect (expired grants purged first)
                if self.qos > 0:
                    self._inflight[info.mid] = item
                else:
                    self.stats["sent"] += 1
                self._reap()
                self._cond.notify_all()

    # ------------------------------------------------------------------------------------------- callbacks
    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self.last_error = f"connection refused: {reason}"
            log.error("event=mqtt_refused broker=%s:%d reason=%s", self.host, self.port, reason)
            return
        self.last_error = None
        self._connected_at = _mono()
        self._purge_expired_inflight()
        for topic in list(self._subscriptions):  # a clean session forgets subscriptions: renew them every time
            client.subscribe(topic, qos=1)
        with self._cond:
            self.connected.set()
            self._cond.notify_all()
        if not self._conflict:
            log.info("event=mqtt_connected broker=%s:%d client_id=%s", self.host, self.port, self.client_id)
            self.health.clear("mqtt")  # its listener publishes the status when it changed …
        else:  # the conflict is over if this connection lasts (checked off paho's thread, holding no lock)
            timer = threading.Timer(SHORT_CONNECTION_S, self._check_connection, args=(self._connected_at,))
            timer.daemon = True
            timer.start()
        self.publish_health()  # … and the retained status and health are refreshed after every connect anyway
        for hook in list(self._connect_hooks):
            try:
                hook()
            except Exception:  # an announcement must not break the connection that events need
                log.exception("event=mqtt_connect_hook_failed hook=%s", getattr(hook, "__qualname__", hook))

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        if was or self.last_error is None:  # keep a refusal's reason: it says more than the disconnect after it
            self.last_error = f"disconnected: {reason}"
        if not was or self._stopped:
            return
        short = _mono() - self._connected_at < SHORT_CONNECTION_S
        self._short = self._short + 1 if short else 0
        taken_over = getattr(reason, "value", None) == SESSION_TAKEN_OVER
        if not self._conflict and (taken_over or self._short >= CONFLICT_AFTER):
            self._conflict = True
            log.error("event=mqtt_client_id_conflict broker=%s:%d client_id=%s short_connections=%d "
                      "note=another_client_connects_with_this_id_and_the_broker_drops_one_of_them "
                      "fix='give each daemon its own mqtt.client_id (or leave it unset for facegate-HOST-HASH)'",
                      self.host, self.port, self.client_id, self._short)
            self.health.problem("mqtt", f"client id {self.client_id} is used by another client: the broker "
                                        "disconnects one of them whenever the other connects")
        elif self._conflict:
            self.health.problem("mqtt", "client id conflict")  # counted; the episode's line was logged
            log.debug("event=mqtt_disconnected broker=%s:%d reason=%s note=client_id_conflict", self.host,
                      self.port, reason)
        else:
            log.warning("event=mqtt_disconnected broker=%s:%d reason=%s", self.host, self.port, reason)
            self.health.problem("mqtt", f"broker {self.host}:{self.port} disconnected: {reason}")

    def _check_connection(self, connected_at: float) -> None:
        """Timer: the connection made at ``connected_at`` is still up after ``SHORT_CONNECTION_S``, which ends a
        client-id conflict."""
        if self._conflict and self.connected.is_set() and self._connected_at == connected_at:
            self._conflict = False
            self._short = 0
            log.info("event=mqtt_client_id_conflict_over broker=%s:%d client_id=%s", self.host, self.port,
                     self.client_id)
            self.health.clear("mqtt")

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        self.last_error = "connection failed (broker down or unreachable)"
        log.debug("event=mqtt_connect_failed broker=%s:%d", self.host, self.port)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        for topic_filter, handler in list(self._subscriptions.items()):
            if paho.topic_matches_sub(topic_filter, message.topic):
                try:
                    handler(message.topic, bytes(message.payload))
                except Exception:  # input from the broker is untrusted: a handler's bug must not stop the loop
                    log.exception("event=mqtt_message_handler_failed topic=%s", message.topic)

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        # called with paho's message lock held: hand the mid over without taking any lock of ours
        self._acks.put(mid)

    def _purge_expired_inflight(self) -> None:
        """Drop expired grants that paho would re-transmit after this reconnect.

        paho keeps unacknowledged QoS>0 messages and resends them right after CONNACK (``_handle_connack`` calls
        ``on_connect`` first). It has no public way to withdraw a message, so this touches its ``_out_messages``
        under its own lock; without those attributes (another paho version) nothing is purged and the signed
        ``expires_at`` remains the controller's guard.
        """
        out = getattr(self._client, "_out_messages", None)
        mutex = getattr(self._client, "_out_message_mutex", None)
        if out is None or mutex is None:
            return
        now = datetime.now(UTC)
        with self._cond, mutex:
            for mid, item in list(self._inflight.items()):
                if item.expires is not None and item.expires <= now:
                    out.pop(mid, None)
                    del self._inflight[mid]
                    self.stats["expired"] += 1
                    log.warning("event=grant_expired_not_resent event_id=%s", item.event_id)


_mono = time.monotonic


def read_password(m: MqttConfig) -> str | None:
    """The broker password: first line of ``mqtt.password_file``, else ``$mqtt.password_env``, else None.
    Raises ``ConfigError`` naming the file or variable when it cannot be read."""
    if m.password_file:
        try:
            # bounded: never a device, a FIFO or more than a key file's 64 KiB
            return read_limited(m.password_file, MAX_KEY_FILE_BYTES, "a password file").decode(
                "utf-8").splitlines()[0].strip()
        except (OSError, IndexError, UnicodeDecodeError) as exc:
            raise ConfigError(f"mqtt.password_file {m.password_file}: cannot read a password ({exc})") from None
    if m.password_env:
        value = os.environ.get(m.password_env)
        if value is None:
            raise ConfigError(f"mqtt.password_env: environment variable {m.password_env} is not set")
        return value
    return None
