"""MQTT transport for door events (paho-mqtt ≥ 2, callback API VERSION2, MQTT 3.1.1).

* ``<prefix>/status``: retained "online" after every (re)connect; the last will (retained, QoS 1) says "offline"
  when the connection dies without a DISCONNECT (crash, SIGKILL, network loss); a clean ``stop`` publishes
  "offline" itself.
* ``<prefix>/<door>/event``: signed event payloads (events.py), QoS 1 by default, never retained.

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
import logging
import os
import queue
import socket
import ssl
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from facegate.errors import BrokerError, ConfigError

if TYPE_CHECKING:
    from facegate.config import MqttConfig
    from facegate.runtime.events import SignedEvent
from facegate.fileio import read_limited
from facegate.runtime.events import event_topic, status_topic
from facegate.signing import MAX_KEY_FILE_BYTES, encode_payload, parse_rfc3339

log = logging.getLogger(__name__)

ONLINE, OFFLINE = b"online", b"offline"


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
    ``reconnect_max_s`` (1 / 30 s, paho's exponential backoff; whole seconds). The values are trusted: the
    ``mqtt:`` config section (``from_config``) validated them.

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
        reconnect_min_s: int = 1,
        reconnect_max_s: int = 30,
    ) -> None:
        self.host, self.port, self.qos = host, int(port), qos
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
        c.reconnect_delay_set(min_delay=max(1, int(reconnect_min_s)), max_delay=max(1, int(reconnect_max_s)))
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_connect_fail = self._on_connect_fail
        c.on_publish = self._on_publish
        self._client = c

    @classmethod
    def from_config(cls, m: MqttConfig) -> EventPublisher:
        """A publisher for the ``mqtt:`` section (``m.host`` must be set); the password comes from
        ``password_file``/``password_env`` (``read_password``)."""
        assert m.host is not None, "from_config needs mqtt.host"
        tls = m.tls
        return cls(
            host=m.host, port=m.port, client_id=m.client_id, username=m.username, password=read_password(m),
            tls=tls is not None, ca_file=tls.ca if tls else None, cert_file=tls.cert if tls else None,
            key_file=tls.key if tls else None, tls_insecure=bool(tls and tls.insecure), topic_prefix=m.topic_prefix,
            qos=m.qos, keepalive_s=m.keepalive_s, queue_max=m.queue_max,
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

    # ------------------------------------------------------------------------------------------- publishing
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
        self._purge_expired_inflight()
        client.publish(status_topic(self.topic_prefix), ONLINE, qos=1, retain=True)
        log.info("event=mqtt_connected broker=%s:%d", self.host, self.port)
        with self._cond:
            self.connected.set()
            self._cond.notify_all()

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        if was or self.last_error is None:  # keep a refusal's reason: it says more than the disconnect after it
            self.last_error = f"disconnected: {reason}"
        if was:
            log.warning("event=mqtt_disconnected broker=%s:%d reason=%s", self.host, self.port, reason)

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        self.last_error = "connection failed (broker down or unreachable)"
        log.debug("event=mqtt_connect_failed broker=%s:%d", self.host, self.port)

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
