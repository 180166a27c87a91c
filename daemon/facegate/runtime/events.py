"""Door events: the payload built from a decision, and the emitter that signs it and hands it to the sinks in order.

The emitter owns an ordered list of sinks (``Sink``): the audit log first (``runtime/audit.py``; critical: when it
cannot make the record durable, the event goes no further, so nothing is published that is not in the audit log),
then the MQTT publisher (``runtime/mqtt.py``), then stdout and the statistics (``runtime/stats.py``). A failing
non-critical sink is logged and the others still get the event.

Payload (a JSON object, every key always present; times RFC 3339 UTC with microseconds and a ``Z``):

``event_id`` (uuid4 string), ``type`` ("grant" | "deny" | "unknown"), ``person_id`` and ``person_name`` (null for
unknown), ``score`` and ``margin`` (rounded to 6 decimals; margin null when the gallery had no second identity),
``frames_used``, ``camera``, ``door``, ``track_id``, ``reason`` (deny reason or null), ``captured_at``,
``decided_at``, ``expires_at`` (grants: ``decided_at`` + the grant TTL; null for deny/unknown, which open nothing),
``version``, and ``signature``; version 2 (Ed25519, the default) adds ``alg`` and ``kid`` (``facegate.signing``: the
canonical form, both versions, and how a door verifies them).
"""

from __future__ import annotations

import logging
import secrets
import sys
import threading
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

from facegate.errors import ConfigError
from facegate.fileio import PRIVATE_FILE_MODE, create_new_file
from facegate.signing import (
    Ed25519Signer,
    HmacSigner,
    encode_payload,
    generate_key_pair,
    load_private_key,
    load_signing_key,
    rfc3339,
)

if TYPE_CHECKING:
    from pathlib import Path

    from facegate.config import Config
    from facegate.runtime.decision import Decision

log = logging.getLogger(__name__)

PAYLOAD_VERSION = 1


def event_topic(prefix: str, door: str) -> str:
    """``<prefix>/<door>/event``: where a door's events go."""
    return f"{prefix.rstrip('/')}/{door}/event"


def status_topic(prefix: str) -> str:
    """``<prefix>/status``: retained "online" / "degraded" / "offline" (``runtime/mqtt.py``)."""
    return f"{prefix.rstrip('/')}/status"


def health_topic(prefix: str) -> str:
    """``<prefix>/health``: retained JSON of ``Health.snapshot()`` (``runtime/health.py``)."""
    return f"{prefix.rstrip('/')}/health"


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


def build_payload(decision: Decision, *, grant_ttl_s: float = 2.0, event_id: str | None = None) -> dict[str, Any]:
    """The unsigned payload of a ``Decision`` (see the module docstring); grants expire ``grant_ttl_s`` seconds
    after ``decided_at``."""
    expires = rfc3339(decision.decided_at + timedelta(seconds=grant_ttl_s)) if decision.type == "grant" else None
    ident = decision.identity_id
    return {
        "version": PAYLOAD_VERSION,
        "event_id": event_id or str(uuid.uuid4()),
        "type": decision.type,
        "person_id": ident if ident is None or isinstance(ident, int | str) else str(ident),
        "person_name": decision.identity_name,
        "score": _round(decision.score),
        "margin": _round(decision.margin),
        "frames_used": int(decision.frames_used),
        "camera": decision.camera,
        "door": decision.door,
        "track_id": int(decision.track_id),
        "reason": decision.reason,
        "captured_at": rfc3339(decision.captured_at),
        "decided_at": rfc3339(decision.decided_at),
        "expires_at": expires,
    }


@dataclass(frozen=True, slots=True)
class SignedEvent:
    """What every sink receives: the signed ``payload`` (a dict, see the module docstring), the ``decision`` it came
    from, and the MQTT ``topic`` it goes to (None when the daemon has no broker)."""

    payload: dict[str, Any]
    decision: Decision
    topic: str | None


class Sink(Protocol):
    """A consumer of signed events. ``critical``: an exception from ``emit`` stops the event there (the later
    sinks never see it); otherwise it is logged and the event goes on. A sink that writes a file may also have a
    ``reopen()`` method, called on SIGHUP (``EventEmitter.reopen``)."""

    name: str
    critical: bool

    def emit(self, event: SignedEvent) -> None: ...


class StdoutSink:
    """One JSON line per event on stdout (``service.stdout_events``). A reader that goes away (``run | head``)
    ends the lines, not the daemon."""

    name = "stdout"
    critical = False

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.closed = False
        self._lock = threading.Lock()

    def emit(self, event: SignedEvent) -> None:
        if self.closed:
            return
        with self._lock:
            try:
                # the wire form, byte for byte what MQTT carries: a line verifies as it stands
                self.stream.write(encode_payload(event.payload).decode() + "\n")
                self.stream.flush()
            except (OSError, ValueError) as exc:  # e.g. `facegate run | head`: the reader went away
                self.closed = True
                log.warning("event=stdout_closed error=%r note=events_still_audited_and_published", str(exc))


class Signer(Protocol):
    """``facegate.signing.HmacSigner`` or ``Ed25519Signer``."""

    version: int
    algorithm: str

    def sign(self, payload: dict[str, Any]) -> dict[str, Any]: ...


def signer_from_config(config: Config, state: Path) -> Signer:
    """The signer of the ``signing:`` section. Without ``signing.key_file`` the key lives in the state folder and is
    created on first run: ``event-signing.key`` + ``event-signing.pub`` (Ed25519; give the .pub to the doors) or
    ``signing.key`` (HMAC: 32 random bytes as hex, 0600). Raises ``ConfigError`` naming the file."""
    from pathlib import Path

    s = config.signing
    if s.algorithm == "ed25519":
        path = Path(s.key_file) if s.key_file else state / "event-signing.key"
        if s.key_file is None and not path.exists():
            pair = generate_key_pair(state, "event-signing")
            log.warning("event=signing_key_created path=%s public_key=%s kid=%s note=give_the_public_key_to_the_doors",
                        pair.private, pair.public, pair.kid)
        ed = Ed25519Signer(load_private_key(path))
        log.info("event=signing alg=ed25519 version=2 kid=%s key=%s", ed.kid, path)
        return ed
    path = Path(s.key_file) if s.key_file else state / "signing.key"
    if s.key_file is None and not path.exists():
        try:  # 0600 whatever the umask, never over a key another process just wrote
            create_new_file(path, (secrets.token_hex(32) + "\n").encode(), PRIVATE_FILE_MODE)
            log.warning("event=signing_key_created path=%s note=give_this_key_to_the_door_controllers", path)
        except FileExistsError:
            pass
        except OSError as exc:
            raise ConfigError(f"signing key {path}: cannot create ({exc.strerror or exc}); check the state "
                              "folder (service.state_dir)") from None
    log.info("event=signing alg=hmac-sha256 version=1 key=%s", path)
    return HmacSigner(load_signing_key(path))


class EventEmitter:
    """Decision → signed payload → each sink in order. Keyword-only constructor:

    * ``signer``: ``Signer`` (``signer_from_config``);
    * ``sinks``: ordered ``Sink`` objects (audit log first);
    * ``topic_prefix``: the MQTT prefix, or None without a broker (the events then carry no topic);
    * ``grant_ttl_s``: grant lifetime in seconds (``decision.grant_ttl_s``).

    ``emit`` returns the signed payload, or None when a critical sink could not take it (an ``OSError``: e.g. the
    audit log's file system is full): the event then goes to no later sink (every published event must be in the
    audit log) and nothing is logged here, as the critical sink reports its own failures once per episode
    (``runtime/health.py``). Any other exception of a critical sink propagates.
    """

    def __init__(self, *, signer: Signer, sinks: list[Sink], topic_prefix: str | None = None,
                 grant_ttl_s: float = 2.0) -> None:
        self.signer = signer
        self.sinks = list(sinks)
        self.topic_prefix = topic_prefix
        self.grant_ttl_s = grant_ttl_s

    @classmethod
    def from_config(cls, config: Config, *, signer: Signer, sinks: list[Sink]) -> EventEmitter:
        """The emitter of ``config`` (``decision.grant_ttl_s``; topics only when ``mqtt.host`` is set)."""
        return cls(signer=signer, sinks=sinks, grant_ttl_s=config.decision.grant_ttl_s,
                   topic_prefix=config.mqtt.topic_prefix if config.mqtt.host else None)

    def reconfigure(self, config: Config) -> None:
        """SIGHUP: the grant lifetime follows the new config (the sinks need a restart to change)."""
        self.grant_ttl_s = config.decision.grant_ttl_s

    def reopen(self) -> None:
        """SIGHUP: sinks that write files (``reopen`` method, e.g. the audit log after logrotate) open them again."""
        for sink in self.sinks:
            reopen = getattr(sink, "reopen", None)
            if callable(reopen):
                reopen()

    def emit(self, decision: Decision) -> dict[str, Any] | None:
        payload = self.signer.sign(build_payload(decision, grant_ttl_s=self.grant_ttl_s))
        topic = event_topic(self.topic_prefix, decision.door) if self.topic_prefix is not None else None
        event = SignedEvent(payload, decision, topic)
        for sink in self.sinks:
            if sink.critical:
                try:
                    sink.emit(event)
                except OSError:  # not durable: no later sink may see it; the sink reported it (once per episode)
                    return None
                continue
            try:
                sink.emit(event)
            except Exception:  # one consumer's bug must not keep the event from the others
                log.exception("event=sink_failed sink=%s type=%s camera=%s", sink.name, decision.type, decision.camera)
        return payload
