"""The console against a real daemon: `facegate run` and `facegate admin` as two processes on one config file, the
stage clip, real models, a real Mosquitto broker. Enrol Lin-Manuel Miranda through the API → he is granted at the
door (the MQTT event, and the console's live stream); erase him through the API → he is no longer granted. Along
the way: the daemon's state as the console shows it, its Prometheus metrics, snapshots of decisions."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime

import pytest
from conftest import DATA, need_shared
from console_process import ConsoleProcess
from daemon_process import Daemon
from mosquitto import Subscriber
from rtsp_server import free_port

from facegate.signing import parse_rfc3339

pytestmark = pytest.mark.slow

STAGE = "data/videos/stage_clip_640x360.mp4"
MIRANDA = "Lin-Manuel Miranda"
PREFIX = "fg"


def site_config(tmp, broker) -> dict:
    """The daemon's config: the stage clip looped (Miranda faces the camera from 2.6 s to 7 s), one door for
    staff, an empty gallery followed every 0.5 s, metrics and snapshots on, and the console's section."""
    return {
        "cameras": [{"id": "stage", "file": str(need_shared(STAGE)), "door": "front", "start_s": 2.6, "stop_s": 7.0,
                     "loop": True}],
        "doors": [{"id": "front", "allowed_groups": ["staff"], "cooldown_s": 0}],
        "gallery": {"path": str(tmp / "gallery"), "refresh_s": 0.5},
        "decision": {"k": 3, "n": 5, "max_frame_age_s": 1.5, "repeat_after_s": 1},
        "mqtt": {"host": broker.host, "port": broker.port, "topic_prefix": PREFIX, "client_id": "facegate-console",
                 "keepalive_s": 5},
        "metrics": {"port": free_port()},
        "snapshots": {"enabled": True, "retention_hours": 1},
        "admin": {"port": free_port(), "tokens_file": str(tmp / "tokens.json")},
        "service": {"state_dir": str(tmp / "state"), "stdout_events": True},
    }


class StreamReader:
    """A client of the console's live stream, collecting the decisions it receives."""

    def __init__(self, console: ConsoleProcess, token: str) -> None:
        self.events: list[dict] = []
        self.connected = threading.Event()
        self._client = console.client(token, timeout=None)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with self._client.stream("GET", "/api/decisions/stream") as answer:
                for line in answer.iter_lines():
                    self.connected.set()
                    if line.startswith("data: "):
                        record = json.loads(line[6:])
                        if "event" in record:
                            self.events.append(record["event"])
        except Exception:  # the client closed under us at the end of the test
            return

    def start(self) -> StreamReader:
        self._thread.start()
        assert self.connected.wait(15), "the live stream did not open"
        return self

    def close(self) -> None:
        self._client.close()


def test_enrol_through_the_api_grants_and_erasure_stops_it(mosquitto_broker, tmp_path):
    sub = Subscriber(mosquitto_broker, f"{PREFIX}/#").start()
    daemon = Daemon(tmp_path, site_config(tmp_path, mosquitto_broker))
    console = ConsoleProcess(daemon.config)
    operator, admin = console.token("olga", "operator"), console.token("ada", "admin")
    daemon.start()
    stream = None
    try:
        assert daemon.wait_record("ready", 120), daemon.tail()
        console.start()
        with console.client(operator) as op, console.client(admin) as adm:
            status = op.get("/api/status").json()
            assert status["daemon"] == "up" and status["token"] == {"name": "olga", "role": "operator"}
            cams = op.get("/api/cameras").json()["cameras"]
            assert cams[0]["id"] == "stage" and cams[0]["state"] == "reading" and cams[0]["door"] == "front"
            pack = op.get("/api/pack").json()["in_force"]["pack"]
            assert pack["metric"] == "fused" and pack["threshold_source"] == "operating_point"
            # the face is seen but nobody is enrolled: unknown, never granted
            assert daemon.wait_events(lambda ev: any(e["type"] == "unknown" for e in ev), 90), daemon.tail()
            assert not [e for e in daemon.events() if e["type"] == "grant"]
            stream = StreamReader(console, operator).start()

            photo = (DATA / "enroll_examples" / "single" / "lin-manuel-miranda.png").read_bytes()
            enrolled = op.post("/api/identities", data={"name": MIRANDA, "groups": ["staff"]},
                               files=[("photos", ("lin-manuel-miranda.png", photo, "image/png"))])
            assert enrolled.status_code == 200 and enrolled.json()["enrolled"] == 1, enrolled.text
            identity_id = enrolled.json()["identity"]["id"]
            assert sub.wait_for(lambda s: any(e["type"] == "grant" and e["person_name"] == MIRANDA
                                              for e in s.events()), 90), daemon.tail()
            grant = next(e for e in sub.events() if e["type"] == "grant")
            assert grant["door"] == "front" and grant["camera"] == "stage"
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not any(e["event_id"] == grant["event_id"] for e in stream.events):
                time.sleep(0.1)
            assert any(e["event_id"] == grant["event_id"] for e in stream.events), "the grant never reached the stream"

            logged = op.get("/api/decisions", params={"type": "grant", "person": MIRANDA}).json()["decisions"]
            assert grant["event_id"] in [r["event"]["event_id"] for r in logged]
            snap = op.get(f"/api/decisions/{grant['event_id']}/snapshot")
            assert snap.status_code == 200 and snap.content[:3] == b"\xff\xd8\xff"
            metrics = op.get("/api/metrics")
            assert metrics.status_code == 200
            assert 'facegate_decisions_total{door="front",reason="",type="grant"}' in metrics.text
            doors = op.get("/api/doors").json()["doors"]
            assert doors[0]["id"] == "front" and doors[0]["last_decision"]["type"] in ("grant", "unknown", "deny")

            removed = adm.delete(f"/api/identities/{identity_id}")
            assert removed.status_code == 200, removed.text
            assert daemon.wait_record("gallery_identity_removed", 30), daemon.tail()
            forgotten = datetime.now(UTC)  # the daemon's gallery no longer holds him from here on
            # he keeps walking past the camera: decisions go on, now as unknown
            assert daemon.wait_events(lambda ev: any(e["type"] == "unknown" and parse_rfc3339(e["decided_at"])
                                                     > forgotten for e in ev), 90), daemon.tail()
            time.sleep(3)
        code, _ = daemon.terminate()
        assert code == 0, daemon.tail()
    finally:
        if stream is not None:
            stream.close()
        console.stop()
        daemon.kill()
        sub.stop()
    events = daemon.events()
    late = [e for e in events if e["type"] == "grant" and parse_rfc3339(e["decided_at"]) > forgotten]
    assert late == [], "granted after the erasure"
    audit = [json.loads(line) for line in daemon.audit.read_text().splitlines()]
    actions = [(r["admin"]["action"], r["admin"]["token"]) for r in audit if "admin" in r]
    assert actions == [("identity.enrol", "olga"), ("identity.remove", "ada")]
    assert len([r for r in audit if "event" in r]) == len(events)  # one log, both kinds of record
