"""The door agent's configuration (``facegate door --config door.yaml``): its own pydantic model, apart from the
daemon's, because the agent runs on another machine with other secrets (public keys only).

Same conventions as the daemon's config: one model per section, ``extra="forbid"``, a description on every field,
validators that do no I/O; key files are loaded after validation (``facegate.door.agent``). Problems are reported
with their key path and YAML line. ``config/door.example.yaml`` documents every key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from facegate.config_file import node_line
from facegate.errors import ConfigError
from facegate.fileio import read_limited
from facegate.limits import StrictSection, host_problem
from facegate.signing import key_id, load_private_key, load_public_key, load_signing_key

_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_TOPIC_PREFIX = r"^[^#+\x00]+$"  # MQTT 3.1.1 §4.7: no wildcards in a topic we publish to
#: Longest path a setting may name (Linux's PATH_MAX, 4096 bytes with the NUL).
_PATH_MAX = 4095
#: Largest door config file read (bytes): a real one is a few KB.
MAX_CONFIG_BYTES = 1 << 20


class _Section(StrictSection):
    """Every section: unknown keys are errors, no inf/NaN, no boolean for a number (pydantic's lax mode takes
    `pulse_s: yes` as 1.0), no number for a boolean, no NUL in text (``facegate.limits.StrictSection``)."""


class TlsSection(_Section):
    """TLS to the broker."""

    ca: str | None = Field(None, min_length=1, max_length=_PATH_MAX,
                           description="CA certificate (PEM) that signed the broker's; None = system CAs")
    cert: str | None = Field(None, min_length=1, max_length=_PATH_MAX,
                             description="Client certificate (PEM), with key")
    key: str | None = Field(None, min_length=1, max_length=_PATH_MAX,
                            description="Client private key (PEM), with cert")

    @model_validator(mode="after")
    def _pair(self) -> TlsSection:
        if (self.cert is None) != (self.key is None):
            raise ValueError("give cert and key together")
        return self


class MqttSection(_Section):
    """The broker the daemon publishes door events to."""

    # bounds: a DNS name has at most 253 characters; MQTT strings are UTF-8 without U+0000, its keep-alive is a
    # 16-bit number of seconds (this agent allows at most an hour, so a dead link is noticed)
    host: str = Field(..., min_length=1, max_length=253, description="Broker host name or IP")
    port: int = Field(1883, ge=1, le=65535, strict=True, description="Broker port (1883 plain, 8883 TLS)")
    tls: TlsSection | None = Field(None, description="TLS settings; None = plain TCP")
    username: str | None = Field(None, min_length=1, max_length=1024, description="User name for the broker")
    password_file: str | None = Field(None, min_length=1, max_length=_PATH_MAX,
                                      description="File holding the password (first line)")
    client_id: str | None = Field(
        None, min_length=1, max_length=64, description="Fixed MQTT client id (the broker keeps this door's session "
        "and queued events under it while the agent restarts); None = facegate-door-<door>")
    topic_prefix: str = Field("facegate", max_length=1024, pattern=_TOPIC_PREFIX, description="Same prefix as the "
                              "daemon's mqtt.topic_prefix; the agent listens on <prefix>/<door>/event")
    keepalive_s: int = Field(30, ge=5, le=3600, strict=True, description="MQTT keep-alive (seconds)")
    reconnect_max_s: int = Field(5, ge=1, le=300, strict=True, description="Longest wait between reconnects (s)")

    @model_validator(mode="after")
    def _password(self) -> MqttSection:
        if self.password_file and not self.username:
            raise ValueError("a password (password_file) needs a username")
        return self

    @field_validator("host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        if value is not None and (problem := host_problem(value)):
            raise ValueError(problem)
        return value



class KeysSection(_Section):
    """Which signatures the door trusts."""

    public_keys: list[str] = Field(
        default_factory=list, max_length=64, description="Ed25519 public key files (NAME.pub from `facegate keys "
        "generate`); list the old and the new key while rotating")
    hmac_key_file: str | None = Field(None, min_length=1, max_length=_PATH_MAX,
                                      description="Shared HMAC key file of version-1 events (legacy)")
    allow_hmac: bool = Field(
        False, description="Accept version-1 (HMAC) events; anyone holding that key can forge grants for every door, "
        "so leave it off once the daemon signs with Ed25519")

    @model_validator(mode="after")
    def _some_key(self) -> KeysSection:
        if self.allow_hmac and not self.hmac_key_file:
            raise ValueError("allow_hmac needs hmac_key_file")
        if not self.public_keys and not self.allow_hmac:
            raise ValueError("no key to verify events with: list public_keys (or set hmac_key_file and allow_hmac)")
        return self


class ChecksSection(_Section):
    """Limits of the verifier (facegate.door.verify)."""

    max_ttl_s: float = Field(5.0, gt=0, le=300, description="Longest grant lifetime accepted (expires_at - "
                             "decided_at, seconds); the daemon's decision.grant_ttl_s must not exceed it")
    max_skew_s: float = Field(2.0, ge=0, le=60, description="Tolerated clock difference daemon ↔ door (seconds)")
    max_bytes: int = Field(8192, ge=512, le=1 << 20, strict=True, description="Longer messages are refused unread")


class ReplaySection(_Section):
    """The on-disk memory of grants already used."""

    path: str = Field(..., min_length=1, max_length=_PATH_MAX,
                      description="SQLite file (created 0600), e.g. /var/lib/facegate-door/replay.db")
    max_entries: int = Field(100_000, ge=100, le=10_000_000, strict=True, description="Live grants remembered; "
                             "when full, new grants are refused")


class GpioLine(_Section):
    """One GPIO line through libgpiod (character device)."""

    chip: str = Field("/dev/gpiochip0", min_length=1, max_length=_PATH_MAX, description="GPIO chip device")
    line: int = Field(..., ge=0, le=4095, strict=True, description="Line offset on that chip")
    active_low: bool = Field(False, description="The line is active (relay on / contact open / button pressed) "
                             "when electrically low")


class HttpRelay(_Section):
    """A relay with the Shelly Gen2 RPC API (Switch.Set)."""

    url: str = Field(..., max_length=2048, pattern=r"^https?://",
                     description="Base URL of the relay, e.g. http://192.0.2.7")
    switch_id: int = Field(0, ge=0, le=255, strict=True, description="Switch component id (switch:<id>)")
    timeout_s: float = Field(2.0, ge=0.01, le=30, description="HTTP request timeout (seconds, 0.01…30)")


class CommandRelay(_Section):
    """Commands (argv lists, run without a shell) that switch the lock."""

    activate: list[str] = Field(..., min_length=1, max_length=256, description="Run to unlock; '{hold_s}' in an "
                                "argument is replaced by the seconds the lock should stay open")
    release: list[str] = Field(..., min_length=1, max_length=256, description="Run to lock again")
    timeout_s: float = Field(5.0, ge=0.01, le=60, description="A command running longer is killed and counts as "
                             "failed (s, 0.01…60)")


class OutputSection(_Section):
    """What opens the lock: exactly one of gpio, http, command."""

    gpio: GpioLine | None = Field(None, description="A relay driven by a GPIO line")
    http: HttpRelay | None = Field(None, description="A Shelly Gen2 relay (Switch.Set with toggle_after)")
    command: CommandRelay | None = Field(None, description="Commands to run")
    pulse_s: float = Field(3.0, ge=0.01, le=60, description="How long one grant holds the lock open (seconds, "
                           "0.01…60)")
    max_hold_s: float = Field(10.0, ge=0.01, le=300, description="Never hold the lock open longer than this in one "
                              "go, however many grants arrive (seconds)")
    retry_release_s: float = Field(2.0, ge=0.05, le=60, description="A failed release is retried this often (s, "
                                   "0.05…60: faster would hammer the relay)")

    @model_validator(mode="after")
    def _one(self) -> OutputSection:
        given = [k for k in ("gpio", "http", "command") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of gpio, http or command (got {', '.join(given) or 'none'})")
        if self.max_hold_s < self.pulse_s:
            raise ValueError("max_hold_s must be ≥ pulse_s")
        return self

    @property
    def kind(self) -> Literal["gpio", "http", "command"]:
        return "gpio" if self.gpio else "http" if self.http else "command"


class MqttInput(_Section):
    """An input read from an MQTT topic (e.g. a Zigbee contact sensor bridged by zigbee2mqtt)."""

    topic: str = Field(..., min_length=1, max_length=1024, description="Topic to subscribe to")
    active_payload: str = Field("open", max_length=1024, description="Payload meaning contact open / button pressed")
    inactive_payload: str = Field("closed", max_length=1024,
                                  description="Payload meaning contact closed / button released")


class InputSource(_Section):
    """One input: exactly one of gpio or mqtt."""

    gpio: GpioLine | None = Field(None, description="Read from a GPIO line")
    mqtt: MqttInput | None = Field(None, description="Read from an MQTT topic")

    @model_validator(mode="after")
    def _one(self) -> InputSource:
        if (self.gpio is None) == (self.mqtt is None):
            raise ValueError("give exactly one of gpio or mqtt")
        return self


class InputsSection(_Section):
    """Door contact and request-to-exit (REX); both optional."""

    contact: InputSource | None = Field(None, description="Door contact (active = door open)")
    rex: InputSource | None = Field(None, description="Request-to-exit button (active = pressed)")
    rex_unlocks: bool = Field(True, description="A GPIO REX press pulses the output (an MQTT REX never does: an "
                              "unsigned message must not open a door)")
    held_open_s: float = Field(30.0, gt=0, le=86_400, description="Open longer than this → state held_open "
                               "(seconds, at most a day)")
    passage_window_s: float = Field(10.0, gt=0, le=300, description="The door opening this long after a grant "
                                    "(or REX) is authorised; after a grant it is that grant's passage (seconds)")
    passage_signing_key: str | None = Field(
        None, min_length=1, max_length=_PATH_MAX, description="Ed25519 private key (PEM, `facegate keys generate "
        "--name door-<id>`) this agent signs its passages with; the daemon's door holds the .pub as "
        "passage_public_key and, with anti_passback_confirmed, counts only passages signed with it")
    poll_ms: int = Field(20, ge=5, le=1000, strict=True, description="GPIO input sampling period (ms)")
    debounce_ms: int = Field(50, ge=0, le=5000, strict=True, description="A GPIO input must hold a new value this "
                             "long to count (ms)")


class RemoteUnlock(_Section):
    """Unlock commands from Home Assistant or another system: off unless enabled, always signed."""

    enabled: bool = Field(False, description="Accept signed unlock commands on <prefix>/<door>/command")
    hmac_key_file: str | None = Field(None, min_length=1, max_length=_PATH_MAX, description="Secret for the "
                                      "commands' HMAC (version-1 form, "
                                      "type remote_unlock); must not be the event signing key")

    @model_validator(mode="after")
    def _key(self) -> RemoteUnlock:
        if self.enabled and not self.hmac_key_file:
            raise ValueError("enabled remote unlock needs its own hmac_key_file (an unsigned command must never open "
                             "a door)")
        return self


class HomeAssistantSection(_Section):
    """Home Assistant MQTT discovery of this door's lock entity."""

    enabled: bool = Field(False, description="Announce a lock entity (retained discovery config)")
    discovery_prefix: str = Field("homeassistant", max_length=1024, pattern=_TOPIC_PREFIX,
                                  description="Home Assistant's discovery prefix")
    name: str | None = Field(None, max_length=255, description="Entity name; None = 'Door <door>'")
    remote_unlock: RemoteUnlock = Field(default_factory=RemoteUnlock, description="Signed unlock commands")


class DoorAgentConfig(_Section):
    """``facegate door`` config file."""

    door: str = Field(..., pattern=_ID, description="This door's id, as in the daemon's doors[].id")
    mqtt: MqttSection = Field(..., description="Broker connection")
    keys: KeysSection = Field(..., description="Trusted signing keys")
    checks: ChecksSection = Field(default_factory=ChecksSection, description="Verifier limits")
    replay_cache: ReplaySection = Field(..., description="Replay memory on disk")
    output: OutputSection = Field(..., description="What opens the lock")
    inputs: InputsSection = Field(default_factory=InputsSection, description="Door contact and REX")
    homeassistant: HomeAssistantSection = Field(default_factory=HomeAssistantSection, description="HA discovery")

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"facegate-door-{self.door}"


# ---------------------------------------------------------------------------------------------------------------


def parse_door_config(text: str) -> tuple[DoorAgentConfig | None, list[str]]:
    """YAML text → (config, []) or (None, ["line N: key.path: message", ...]). Never raises."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        return None, [f"line {mark.line + 1 if mark else '?'}: not valid YAML: {exc}"]
    except RecursionError:
        return None, ["not a config file: YAML nested too deeply"]
    if not isinstance(raw, dict):
        return None, ["the top level must be a mapping with door, mqtt, keys, replay_cache and output"]
    try:
        return DoorAgentConfig.model_validate(raw), []
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if isinstance(p, int) or not str(p).startswith("function-"))
            path = ".".join(str(p) for p in loc) or "<top>"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key (misspelt? see config/door.example.yaml for every key)"
            elif err["type"] != "missing" and not isinstance(err.get("input"), dict | list):
                msg += f" (got {err.get('input')!r})"
            line = node_line(root, loc)
            problems.append(f"{f'line {line}: ' if line else ''}{path}: {msg}")
        return None, problems


def load_door_config(path: str | Path) -> DoorAgentConfig:
    """Read, validate and resolve relative file paths against the file's folder. Raises ``ConfigError`` listing
    every problem with its key path and line."""
    p = Path(path)
    try:
        text = read_limited(p, MAX_CONFIG_BYTES, "a door config file").decode("utf-8")
    except OSError as exc:  # InputRefused (a device, a FIFO, over 1 MiB) included
        raise ConfigError(f"{p}: cannot read the config file ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a UTF-8 text file; a door config is YAML (see config/door.example.yaml)") \
            from None
    config, problems = parse_door_config(text)
    if config is None:
        raise ConfigError(f"{p}: {len(problems)} problem(s):\n" + "\n".join(f"  {p}:{m}" for m in problems))
    config = _resolve(config, p.parent)
    _separate_secrets(config)
    return config


def _separate_secrets(config: DoorAgentConfig) -> None:
    """The remote-unlock secret must not be the event key, by path (after resolving, links followed) or by content
    (a copy): whoever holds the unlock secret would otherwise hold the version-1 event key and could forge grants
    for every door sharing it. Raises ``ConfigError``; an unreadable file is left to the key loader's message."""
    ru, event_key = config.homeassistant.remote_unlock, config.keys.hmac_key_file
    if not (ru.enabled and ru.hmac_key_file and event_key):
        return
    same = os.path.realpath(ru.hmac_key_file) == os.path.realpath(event_key)
    if not same:
        try:
            same = load_signing_key(ru.hmac_key_file) == load_signing_key(event_key)
        except ConfigError:
            return
    if same:
        raise ConfigError("homeassistant.remote_unlock.hmac_key_file: must be a secret of its own, not the event key "
                          "(keys.hmac_key_file): whoever holds it could forge grants; generate another with "
                          "'umask 077; openssl rand -hex 32 > unlock.key'")


def _resolve(config: DoorAgentConfig, base: Path) -> DoorAgentConfig:
    def fix(value: str | None) -> str | None:
        if value is None:
            return None
        q = Path(value).expanduser()
        return str(q if q.is_absolute() else (base / q).resolve())

    mqtt = config.mqtt
    if mqtt.tls is not None:
        mqtt = mqtt.model_copy(update={"tls": mqtt.tls.model_copy(update={
            "ca": fix(mqtt.tls.ca), "cert": fix(mqtt.tls.cert), "key": fix(mqtt.tls.key)})})
    mqtt = mqtt.model_copy(update={"password_file": fix(mqtt.password_file)})
    keys = config.keys.model_copy(update={"public_keys": [fix(k) for k in config.keys.public_keys],
                                          "hmac_key_file": fix(config.keys.hmac_key_file)})
    inputs = config.inputs.model_copy(update={"passage_signing_key": fix(config.inputs.passage_signing_key)})
    ha = config.homeassistant
    ha = ha.model_copy(update={"remote_unlock": ha.remote_unlock.model_copy(
        update={"hmac_key_file": fix(ha.remote_unlock.hmac_key_file)})})
    return config.model_copy(update={
        "mqtt": mqtt, "keys": keys, "homeassistant": ha, "inputs": inputs,
        "replay_cache": config.replay_cache.model_copy(update={"path": fix(config.replay_cache.path)}),
    })


def load_passage_key(config: DoorAgentConfig):
    """The agent's passage signing key (``inputs.passage_signing_key``; an Ed25519 private key) or None. Raises
    ``ConfigError`` when it does not load, or when it is the daemon's event key (its kid is among
    ``keys.public_keys``): a door holding that key could forge grants for every door."""
    path = config.inputs.passage_signing_key
    if path is None:
        return None
    key = load_private_key(path)
    kid = key_id(key.public_key())
    for pub in config.keys.public_keys:
        try:
            same = key_id(load_public_key(pub)) == kid
        except ConfigError:
            continue  # the verifier's own loading reports it
        if same:
            raise ConfigError(f"inputs.passage_signing_key {path}: this is the daemon's event signing key (kid {kid}, "
                              f"the key of {pub}); a door holding it could forge grants for every door: generate "
                              f"one for this door (facegate keys generate --name door-{config.door})")
    return key
