"""``facegate door`` end to end: the agent as a real subprocess, a real Mosquitto broker, a real local Shelly Gen2
HTTP relay (tests/shelly_server.py) or a command that records its calls, events signed by facegate.signing.

Fail-secure behaviour proven here: a grant actuates the relay exactly once; replayed, tampered, cross-door,
expired, future-dated, wrongly signed, HMAC-when-Ed25519-required and malformed events never do; the broker going
away leaves the door locked; the replay cache survives a restart; SIGTERM releases the output; after SIGKILL a
Shelly relay re-locks by itself (toggle_after) and a command output is released at the next start.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.publish as mqtt_publish
import pytest
import yaml

from facegate.signing import (
    encode_payload,
    generate_key_pair,
    load_private_key,
    load_public_key,
    rfc3339,
    sign_payload,
    sign_payload_v2,
    verify_signature,
)

sys.path.insert(0, str(Path(__file__).parent))
from cli_util import assert_user_error, run_cli  # noqa: E402
from mosquitto import Subscriber  # noqa: E402
from shelly_server import ShellyRelay  # noqa: E402
from test_door_outputs import recorder, wait_until  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


class Agent:
    """``python -m facegate.cli door --config FILE`` with its stderr in a file."""

    def __init__(self, config: Path) -> None:
        self.config, self.log_path = config, config.with_suffix(".log")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 20.0, wait_ready: bool = True) -> Agent:
        self.log_path.write_text("")
        self._mark = 0
        self.proc = subprocess.Popen([sys.executable, "-m", "facegate.cli", "door", "--config", str(self.config)],
                                     stdout=subprocess.DEVNULL, stderr=self.log_path.open("w"))
        if wait_ready:
            assert wait_until(lambda: "event=door_agent_ready" in self.log() or self.proc.poll() is not None,
                              timeout_s), self.log()
            assert self.proc.poll() is None, self.log()
        return self

    def log(self) -> str:
        return self.log_path.read_text()

    def rejections(self) -> list[str]:
        return re.findall(r"event=event_rejected door=\S+ source=\S+ reason=(\S+)", self.log())

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@pytest.fixture
def keys(tmp_path):
    pair = generate_key_pair(tmp_path / "keys", "signing")
    hmac_file = tmp_path / "keys" / "hmac.key"
    hmac_file.write_text("h" * 64)
    hmac_file.chmod(0o600)
    return {"pair": pair, "private": load_private_key(pair.private), "hmac": hmac_file,
            "other": load_private_key(generate_key_pair(tmp_path / "other", "x").private)}


@pytest.fixture
def relay():
    server = ShellyRelay().start()
    yield server
    server.stop()


def write_config(tmp_path: Path, broker, keys, output: dict, **extra) -> Path:
    config = {
        "door": "front",
        "mqtt": {"host": broker.host, "port": broker.port, "client_id": f"door-{uuid.uuid4().hex[:8]}"},
        "keys": {"public_keys": [str(keys["pair"].public)], "hmac_key_file": str(keys["hmac"])},
        "checks": {"max_ttl_s": 5, "max_skew_s": 2},
        "replay_cache": {"path": str(tmp_path / "state" / "replay.db")},
        "output": output,
    }
    config.update(extra)
    path = tmp_path / "door.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def grant(door: str = "front", ttl_s: float = 3.0, **over) -> dict:
    now = datetime.now(UTC)
    body = {"event_id": str(uuid.uuid4()), "type": "grant", "person_id": 42, "person_name": "Lin",
            "score": 0.37, "margin": 0.1, "frames_used": 4, "camera": "cam1", "door": door, "track_id": 1,
            "reason": None, "captured_at": rfc3339(now), "decided_at": rfc3339(now),
            "expires_at": rfc3339(now + timedelta(seconds=ttl_s)), "version": 1}
    body.update(over)
    return body


def publish(broker, payload: bytes, topic: str = "facegate/front/event") -> None:
    mqtt_publish.single(topic, payload, qos=1, hostname=broker.host, port=broker.port)


def test_one_grant_one_actuation_and_every_bad_event_refused(tmp_path, mosquitto_broker, keys, relay):
    agent = Agent(write_config(tmp_path, mosquitto_broker, keys, {"http": {"url": relay.url}, "pulse_s": 0.5,
                                                                   "max_hold_s": 2})).start()
    try:
        states = Subscriber(mosquitto_broker, "facegate/front/state").start()
        key = keys["private"]
        good = encode_payload(sign_payload_v2(grant(), key))
        publish(mosquitto_broker, good)
        assert wait_until(lambda: len(relay.ons()) == 1)
        assert relay.ons()[0] == {"id": 0, "on": True, "toggle_after": pytest.approx(0.5, abs=0.05)}
        now = datetime.now(UTC)
        bad = {
            "replay": good,
            "bad_signature": good.replace(b'"person_name":"Lin"', b'"person_name":"Eve"'),
            "wrong_door": encode_payload(sign_payload_v2(grant(door="back"), key)),
            "expired": encode_payload(sign_payload_v2(grant(
                decided_at=rfc3339(now - timedelta(seconds=5)), expires_at=rfc3339(now - timedelta(seconds=2))),
                key)),
            "from_future": encode_payload(sign_payload_v2(grant(
                decided_at=rfc3339(now + timedelta(seconds=4)), expires_at=rfc3339(now + timedelta(seconds=6))),
                key)),
            "ttl_too_long": encode_payload(sign_payload_v2(grant(ttl_s=3600), key)),
            "unknown_key": encode_payload(sign_payload_v2(grant(), keys["other"])),
            "hmac_not_allowed": encode_payload(sign_payload(grant(), keys["hmac"].read_bytes().strip())),
            "not_grant": encode_payload(sign_payload_v2(grant(type="deny", expires_at=None), key)),
            "bad_json": b"{not json",
            "not_object": b"[1, 2, 3]",
            "too_large": b"{" + b" " * 20000 + b"}",
            "missing_key": json.dumps({"type": "grant", "door": "front"}).encode(),
        }
        for payload in bad.values():
            publish(mosquitto_broker, payload)
        assert wait_until(lambda: len(agent.rejections()) == len(bad), 15), agent.log()
        assert sorted(agent.rejections()) == sorted(bad)
        time.sleep(1.0)  # anything the agent might still do, it does now
        assert len(relay.ons()) == 1, relay.calls
        assert relay.output[0] is False
        assert wait_until(lambda: states.payloads("facegate/front/state")[-1:] == [b"locked"])
        assert b"unlocked" in states.payloads("facegate/front/state")
        assert agent.proc.poll() is None  # none of it crashed the agent
        states.stop()
    finally:
        assert agent.stop() == 0


def test_broker_away_door_stays_locked_then_reconnects(tmp_path, mosquitto_broker, keys, relay):
    agent = Agent(write_config(tmp_path, mosquitto_broker, keys, {"http": {"url": relay.url}, "pulse_s": 0.5,
                                                                   "max_hold_s": 2})).start()
    try:
        publish(mosquitto_broker, encode_payload(sign_payload_v2(grant(), keys["private"])))
        assert wait_until(lambda: len(relay.ons()) == 1)
        mosquitto_broker.stop()
        assert wait_until(lambda: "event=broker_lost" in agent.log())
        assert wait_until(lambda: relay.output[0] is False)
        time.sleep(1.5)
        assert relay.output[0] is False and len(relay.ons()) == 1 and agent.proc.poll() is None
        mosquitto_broker.start()
        assert wait_until(lambda: agent.log().count("event=door_agent_ready") == 2, 20), agent.log()
        publish(mosquitto_broker, encode_payload(sign_payload_v2(grant(), keys["private"])))
        assert wait_until(lambda: len(relay.ons()) == 2)
    finally:
        agent.stop()


def test_replay_cache_survives_restart_and_queued_grants_arrive(tmp_path, mosquitto_broker, keys, relay):
    config = write_config(tmp_path, mosquitto_broker, keys, {"http": {"url": relay.url}, "pulse_s": 0.3,
                                                             "max_hold_s": 1})
    agent = Agent(config).start()
    first = encode_payload(sign_payload_v2(grant(ttl_s=4.5), keys["private"]))
    publish(mosquitto_broker, first)
    assert wait_until(lambda: len(relay.ons()) == 1)
    assert agent.stop() == 0
    # while the agent is away: a new grant waits in its persistent session (QoS 1, clean_session False)
    queued = encode_payload(sign_payload_v2(grant(ttl_s=4.5), keys["private"]))
    publish(mosquitto_broker, queued)
    agent.start()
    try:
        assert wait_until(lambda: len(relay.ons()) == 2), agent.log()
        publish(mosquitto_broker, first)  # still unexpired: only the on-disk replay cache stops it
        assert wait_until(lambda: agent.rejections() == ["replay"]), agent.log()
        time.sleep(0.5)
        assert len(relay.ons()) == 2
    finally:
        agent.stop()


def test_sigterm_releases_and_sigkill_is_released_at_next_start(tmp_path, mosquitto_broker, keys):
    script = recorder(tmp_path)
    calls = tmp_path / "calls.txt"
    config = write_config(tmp_path, mosquitto_broker, keys, {"command": {
        "activate": [str(script), "open", "{hold_s}"], "release": [str(script), "close"]}, "pulse_s": 30,
        "max_hold_s": 60})
    agent = Agent(config).start()
    publish(mosquitto_broker, encode_payload(sign_payload_v2(grant(), keys["private"])))
    assert wait_until(lambda: calls.exists() and "open" in calls.read_text())
    assert agent.stop(signal.SIGTERM) == 0  # long before the 30 s pulse ends
    assert calls.read_text().splitlines() == ["close", "open 30", "close"]
    # SIGKILL while open: nothing can run in a killed process; the next start releases first
    calls.unlink()
    agent.start()
    publish(mosquitto_broker, encode_payload(sign_payload_v2(grant(), keys["private"])))
    assert wait_until(lambda: calls.exists() and "open" in calls.read_text())
    agent.stop(signal.SIGKILL)
    assert calls.read_text().splitlines()[-1].startswith("open")
    agent.start()
    try:
        assert calls.read_text().splitlines()[-1] == "close"
    finally:
        agent.stop()


def test_sigkill_with_a_shelly_relay_relocks_by_itself(tmp_path, mosquitto_broker, keys, relay):
    agent = Agent(write_config(tmp_path, mosquitto_broker, keys, {"http": {"url": relay.url}, "pulse_s": 1.5,
                                                                   "max_hold_s": 3})).start()
    publish(mosquitto_broker, encode_payload(sign_payload_v2(grant(), keys["private"])))
    assert wait_until(lambda: relay.output[0] is True)
    agent.stop(signal.SIGKILL)
    n_calls = len(relay.calls)
    assert wait_until(lambda: relay.output[0] is False, 4)  # the device's own toggle_after timer
    assert len(relay.calls) == n_calls  # nobody told it: the relay did it alone


def test_home_assistant_lock_and_signed_remote_unlock(tmp_path, mosquitto_broker, keys, relay):
    remote_key = tmp_path / "keys" / "remote.key"
    remote_key.write_text("r" * 64)
    remote_key.chmod(0o600)
    seen = Subscriber(mosquitto_broker, "homeassistant/#").start()
    config = write_config(tmp_path, mosquitto_broker, keys, {"http": {"url": relay.url}, "pulse_s": 0.3,
                                                             "max_hold_s": 1},
                          homeassistant={"enabled": True, "name": "Front door",
                                         "remote_unlock": {"enabled": True, "hmac_key_file": str(remote_key)}})
    agent = Agent(config).start()
    try:
        topic = "homeassistant/lock/facegate_door_front/lock/config"
        assert wait_until(lambda: seen.payloads(topic))
        lock = json.loads(seen.payloads(topic)[-1])
        assert lock["name"] == "Front door" and lock["command_topic"] == "facegate/front/command"
        late = Subscriber(mosquitto_broker, topic).start()  # retained: a Home Assistant starting later gets it
        assert wait_until(lambda: late.payloads(topic))
        late.stop()
        publish(mosquitto_broker, b"UNLOCK", "facegate/front/command")  # what HA sends: unsigned, never opens
        event_key = keys["hmac"].read_bytes().strip()
        wrong_secret = grant(type="remote_unlock")
        publish(mosquitto_broker, encode_payload(sign_payload(wrong_secret, event_key)), "facegate/front/command")
        assert wait_until(lambda: len(agent.rejections()) == 2)
        assert agent.rejections() == ["bad_json", "bad_signature"] and relay.ons() == []
        command = sign_payload(grant(type="remote_unlock"), remote_key.read_bytes().strip())
        publish(mosquitto_broker, encode_payload(command), "facegate/front/command")
        assert wait_until(lambda: len(relay.ons()) == 1)
        # a remote-unlock command on the event topic is not a grant
        publish(mosquitto_broker, encode_payload(sign_payload_v2(grant(type="remote_unlock"), keys["private"])))
        assert wait_until(lambda: agent.rejections()[-1:] == ["not_grant"])
        # discovery turned off again: the agent removes its entity (empty retained payload)
        agent.stop()
        config.write_text(config.read_text().replace("enabled: true", "enabled: false"))
        agent.start()
        assert wait_until(lambda: seen.payloads(topic)[-1:] == [b""])
        late = Subscriber(mosquitto_broker, topic).start()
        time.sleep(0.5)
        assert late.payloads(topic) == []  # nothing retained any more
        late.stop()
    finally:
        seen.stop()
        agent.stop()


def test_contact_gives_door_state_and_passage(tmp_path, mosquitto_broker, keys, relay):
    config = write_config(tmp_path, mosquitto_broker, keys, {"http": {"url": relay.url}, "pulse_s": 1,
                                                             "max_hold_s": 2},
                          inputs={"contact": {"mqtt": {"topic": "sensors/front/contact"}}, "held_open_s": 1.5,
                                  "passage_signing_key": str(keys["pair"].private.parent / "door.key")})
    door_pair = generate_key_pair(keys["pair"].private.parent, "door")
    agent = Agent(config).start()
    sub = Subscriber(mosquitto_broker, "facegate/front/#").start()
    try:
        publish(mosquitto_broker, b"open", "sensors/front/contact")  # no grant: forced
        assert wait_until(lambda: sub.payloads("facegate/front/state")[-1:] == [b"forced"])
        publish(mosquitto_broker, b"closed", "sensors/front/contact")
        assert wait_until(lambda: sub.payloads("facegate/front/state")[-1:] == [b"locked"])
        event = grant()
        publish(mosquitto_broker, encode_payload(sign_payload_v2(event, keys["private"])))
        assert wait_until(lambda: relay.output[0] is True)
        publish(mosquitto_broker, b"open", "sensors/front/contact")
        assert wait_until(lambda: sub.payloads("facegate/front/passage"))
        [passage] = [json.loads(p) for p in sub.payloads("facegate/front/passage")]
        assert passage["event_id"] == event["event_id"] and passage["door"] == "front"
        # signed with the agent's own passage key (the daemon's confirmed anti-passback trusts only that)
        assert passage["kid"] == door_pair.kid and verify_signature(
            passage, public_keys={door_pair.kid: load_public_key(door_pair.public)}) is None
        assert wait_until(lambda: sub.payloads("facegate/front/state")[-1:] == [b"held_open"], 5)
        publish(mosquitto_broker, b"closed", "sensors/front/contact")
        assert wait_until(lambda: sub.payloads("facegate/front/state")[-1:] == [b"locked"])
        states = [p.decode() for p in sub.payloads("facegate/front/state")]
        collapsed = [x for i, x in enumerate(states) if i == 0 or x != states[i - 1]]
        # "unlocked" shows only when the relay answered before the contact message arrived: timing, not logic
        assert [x for x in collapsed if x != "unlocked"] == ["locked", "forced", "locked", "open", "held_open",
                                                            "locked"], states
    finally:
        sub.stop()
        agent.stop()


# ------------------------------------------------------------------------------------------ config & unit
def test_config_check_and_errors(tmp_path, keys):
    good = tmp_path / "door.yaml"
    good.write_text(yaml.safe_dump({"door": "front", "mqtt": {"host": "127.0.0.1"},
                                    "keys": {"public_keys": ["keys/signing.pub"]},
                                    "replay_cache": {"path": "state/replay.db"},
                                    "output": {"http": {"url": "http://127.0.0.1:9"}}}))
    ok = run_cli("door", "--config", str(good), "--check", timeout=60)
    assert ok.code == 0, ok.stderr
    assert ok.json()["kids"] == [keys["pair"].kid] and ok.json()["output"] == "http"
    bad = tmp_path / "bad.yaml"
    bad.write_text("door: front\nmqtt: {host: x, port: true}\nkeys: {public_keys: []}\nreplay_cache: {path: r}\n"
                   "output: {http: {url: http://x}, gpio: {line: 1}, pulse_s: 2}\nextra: 1\n")
    result = run_cli("door", "--config", str(bad), "--check", timeout=60)
    assert_user_error(result, "line 2: mqtt.port", "no key to verify",
                      "exactly one of gpio, http or command", "extra: unknown key", code=2)
    missing_key = tmp_path / "missing.yaml"
    missing_key.write_text(good.read_text().replace("keys/signing.pub", "keys/nope.pub"))
    assert_user_error(run_cli("door", "--config", str(missing_key), timeout=60), "nope.pub", "file not found",
                      code=2)
    assert_user_error(run_cli("door", "--config", str(tmp_path / "absent.yaml"), timeout=60), "absent.yaml", code=2)
    example = run_cli("door", "--config", str(REPO / "config" / "door.example.yaml"), "--check", timeout=60)
    assert_user_error(example, "signing.pub", code=2)  # the example names a key file an installation creates


def test_the_unlock_secret_must_not_be_the_event_key_by_any_path_or_copy(tmp_path, keys):
    """Whoever holds the remote-unlock secret must not hold the version-1 event key: refused when it is the same
    file written another way (absolute vs relative, a symlink) or a copy of its bytes. The passage signing key is
    checked at --check (its kid is shown)."""
    (tmp_path / "ev.key").write_text("ab" * 32)
    (tmp_path / "ev.key").chmod(0o600)
    shutil.copy(tmp_path / "ev.key", tmp_path / "copy.key")
    (tmp_path / "link.key").symlink_to(tmp_path / "ev.key")
    pair = generate_key_pair(tmp_path / "door-keys", "door-front")
    base = {"door": "front", "mqtt": {"host": "127.0.0.1"},
            "keys": {"public_keys": ["keys/signing.pub"], "hmac_key_file": "ev.key", "allow_hmac": True},
            "replay_cache": {"path": "state/replay.db"}, "output": {"http": {"url": "http://127.0.0.1:9"}},
            "inputs": {"passage_signing_key": "door-keys/door-front.key"}}
    for unlock in (str(tmp_path / "ev.key"), "./ev.key", "link.key", "copy.key"):
        cfg = tmp_path / "door.yaml"
        cfg.write_text(yaml.safe_dump({**base, "homeassistant": {"remote_unlock": {
            "enabled": True, "hmac_key_file": unlock}}}))
        assert_user_error(run_cli("door", "--config", str(cfg), "--check", timeout=60),
                          "remote_unlock.hmac_key_file", "not the event key", code=2)
    (tmp_path / "own.key").write_text("cd" * 32)
    (tmp_path / "own.key").chmod(0o600)
    cfg.write_text(yaml.safe_dump({**base, "homeassistant": {"remote_unlock": {"enabled": True,
                                                                                "hmac_key_file": "own.key"}}}))
    ok = run_cli("door", "--config", str(cfg), "--check", timeout=60)
    assert ok.code == 0, ok.stderr
    assert ok.json()["passage_kid"] == pair.kid
    # the daemon's event key as the passage key: that door could forge grants for every door (second attack)
    cfg.write_text(yaml.safe_dump({**base, "inputs": {"passage_signing_key": str(keys["pair"].private)}}))
    assert_user_error(run_cli("door", "--config", str(cfg), "--check", timeout=60),
                      "inputs.passage_signing_key", "the daemon's event signing key", code=2)


def test_example_config_validates():
    from facegate.door.config import parse_door_config

    config, problems = parse_door_config((REPO / "config" / "door.example.yaml").read_text())
    assert problems == [] and config is not None
    assert config.client_id == "facegate-door-front" and config.output.kind == "http"
    assert not config.keys.allow_hmac and not config.homeassistant.enabled
    assert not config.homeassistant.remote_unlock.enabled


def test_systemd_unit_verifies():
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("needs systemd-analyze (apt-get install systemd)")
    unit = (REPO / "systemd" / "facegate-door.service").read_text()
    for key in ("Type=notify", "WatchdogSec=", "Restart=always", "StateDirectory=facegate-door", "User=facegate-door",
                "NoNewPrivileges=yes", "ProtectSystem=strict", "KillSignal=SIGTERM", "DeviceAllow=char-gpiochip rw",
                "ExecStart=/usr/bin/facegate door --config /etc/facegate-door/door.yaml"):
        assert key in unit, key
    exe = shutil.which("facegate")
    if exe is None:
        pytest.skip("the facegate console script is not on PATH (pip install -e .)")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "facegate-door.service"
        path.write_text(unit.replace("/usr/bin/facegate", str(Path(exe).resolve())))
        run = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "facegate-door.service" not in run.stderr, run.stderr
