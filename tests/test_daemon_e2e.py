"""End to end: `facegate run` as a real process, real models, real videos, a real Mosquitto broker and a real RTSP
server (GStreamer). Issue 5, item 7 (a)-(f), plus systemd notifications and the unit file.

The gallery is enrolled once per module with `facegate enroll` (Lin-Manuel Miranda, group staff; Barack Obama,
group guests). Clips are played at their own rate, cut to the seconds that matter (camera start_s/stop_s).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import yaml

from facegate.runtime.audit import read_audit
from facegate.signing import parse_rfc3339, verify_payload

sys.path.insert(0, str(Path(__file__).parent))
from conftest import DATA, need_shared  # noqa: E402
from mosquitto import Mosquitto, Subscriber, find_mosquitto  # noqa: E402
from rtsp_server import RtspServer, free_port, gst_available  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STAGE = "data/videos/stage_clip_640x360.mp4"
CORRIDOR = "data/videos/corridor/one-by-one-person-detection.mp4"
CROWD = "data/videos/crowd_walking_1080p.mp4"
MIRANDA = "Lin-Manuel Miranda"
PREFIX = "fg"
KEY = "9f1c2e3d4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff"  # test-only HMAC key


def _facegate(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "facegate.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> Path:
    need_shared(STAGE)
    folder = tmp_path_factory.mktemp("gallery")
    single = DATA / "enroll_examples" / "single"
    for name, group, photo in ((MIRANDA, "staff", "lin-manuel-miranda.png"), ("Barack Obama", "guests",
                                                                               "obama-480p.jpg")):
        run = _facegate("enroll", "--gallery", str(folder), "--name", name, "--group", group, str(single / photo))
        assert run.returncode == 0, run.stderr
    return folder


@pytest.fixture
def broker(tmp_path):
    binary = find_mosquitto()
    if binary is None:
        pytest.skip("needs the mosquitto broker binary (apt-get install mosquitto)")
    b = Mosquitto(tmp_path / "mosquitto", binary)
    b.start()
    yield b
    b.stop()


@pytest.fixture
def rtsp():
    reason = gst_available()
    if reason:
        pytest.skip(reason)
    server = RtspServer(need_shared(STAGE)).start()
    yield server
    server.stop()


class Daemon:
    """`facegate run --config FILE` in a subprocess, with its stderr log and stdout event lines captured."""

    def __init__(self, tmp: Path, config: dict, env: dict | None = None) -> None:
        self.tmp = tmp
        self.key = tmp / "signing.key"
        self.key.write_text(KEY + "\n")
        self.key.chmod(0o600)
        self.audit = tmp / "audit.jsonl"
        config.setdefault("signing", {"key_file": str(self.key)})
        config.setdefault("audit", {"path": str(self.audit)})
        config.setdefault("service", {}).setdefault("state_dir", str(tmp / "state"))
        self.config = tmp / "facegate.yaml"
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))
        self.stdout = tmp / "stdout.jsonl"
        self.stderr = tmp / "stderr.log"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self) -> Daemon:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "facegate.cli", "run", "--config", str(self.config)],
            stdout=self.stdout.open("w"), stderr=self.stderr.open("w"), env=self.env)
        return self

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return True
            if self.proc.poll() is not None:
                return text in self.log()
            time.sleep(0.1)
        return False

    def wait_count(self, text: str, count: int, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if self.log().count(text) >= count:
                return True
            time.sleep(0.1)
        return self.log().count(text) >= count

    def wait_exit(self, timeout: float = 120.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"daemon did not exit within {timeout} s; log:\n{self.log()[-3000:]}") from None

    def terminate(self) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds it took)."""
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.wait_exit(30)
        return code, time.monotonic() - t0

    def events(self) -> list[dict]:
        return [json.loads(line) for line in self.stdout.read_text().splitlines() if line.startswith("{")]

    def audited(self) -> list[dict]:
        """The signed payloads in the audit log, in order."""
        return [r["event"] for r in read_audit(self.audit)] if self.audit.exists() else []

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _camera(cid: str, video: str, door: str, **kw) -> dict:
    return {"id": cid, "file": str(need_shared(video)), "door": door, **kw}


def _base(gallery: Path, cameras: list[dict], doors: list[dict], broker: Mosquitto | None = None,
          **decision) -> dict:
    cfg: dict = {"cameras": cameras, "doors": doors, "gallery": {"path": str(gallery)},
                 "decision": {"k": 3, "n": 5, "max_frame_age_s": 1.5, **decision}}
    if broker is not None:
        cfg["mqtt"] = {"host": broker.host, "port": broker.port, "topic_prefix": PREFIX, "client_id": "facegate-e2e",
                       "keepalive_s": 5}
    return cfg


def _key() -> bytes:
    return KEY.encode()


def _grants(events: list[dict]) -> list[dict]:
    return [e for e in events if e["type"] == "grant"]


# ------------------------------------------------------------------------------------------------------------ (a)
def test_enrolled_performer_is_granted_with_a_valid_signature(gallery, broker, tmp_path):
    sub = Subscriber(broker, f"{PREFIX}/#").start()
    cfg = _base(gallery, [_camera("stage", STAGE, "front", start_s=2.6, stop_s=7.0, loop=True)],
                [{"id": "front", "allowed_groups": ["staff"], "cooldown_s": 0}], broker, repeat_after_s=1)
    daemon = Daemon(tmp_path, cfg).start()
    try:  # looped so that a slow (shared) CPU still sees enough frames; stopped once a grant is out
        assert daemon.wait_log("event=ready", 90), daemon.log()[-3000:]
        sub.wait_for(lambda s: _grants(s.events()), 90)
        # SIGHUP with a broken config: refused, the running one kept
        good_config = daemon.config.read_text()
        daemon.config.write_text(good_config.replace("k: 3", "k: 30"))
        daemon.proc.send_signal(signal.SIGHUP)
        assert daemon.wait_log("event=reload_refused", 20), daemon.log()[-3000:]
        # SIGHUP with the door now for guests only: Miranda (staff) is refused from then on
        daemon.config.write_text(good_config.replace("- staff", "- guests"))
        daemon.proc.send_signal(signal.SIGHUP)
        assert daemon.wait_log("event=config_reloaded", 20), daemon.log()[-3000:]
        reloaded = datetime.now(UTC)
        assert sub.wait_for(lambda s: any(e["reason"] == "not_in_group" for e in s.events()), 60), \
            daemon.log()[-3000:]
        code, took = daemon.terminate()
    finally:
        daemon.kill()
    assert code == 0 and took < 10.0, daemon.log()[-3000:]
    sub.wait_for(lambda s: s.payloads(f"{PREFIX}/status")[-1:] == [b"offline"], 5)
    sub.stop()
    published = sub.events()
    grants = _grants(published)
    assert grants, f"no grant published; events: {published}\n{daemon.log()[-3000:]}"
    g = grants[0]
    assert g["person_name"] == MIRANDA and g["camera"] == "stage" and g["door"] == "front"
    assert isinstance(g["person_id"], int) and g["frames_used"] >= 3
    assert verify_payload(g, _key())
    assert not verify_payload({**g, "person_name": "Somebody Else"}, _key())
    assert parse_rfc3339(g["captured_at"]) <= parse_rfc3339(g["decided_at"]) < parse_rfc3339(g["expires_at"])
    assert all(e["person_name"] in (MIRANDA, None) for e in grants)
    assert all(parse_rfc3339(e["decided_at"]) < reloaded for e in grants)  # the reloaded rules took effect
    audit_ids = [r["event_id"] for r in daemon.audited()]
    assert {e["event_id"] for e in published} <= set(audit_ids)
    assert [e["event_id"] for e in daemon.events()] == audit_ids  # stdout lines = audit log, in order
    assert sub.payloads(f"{PREFIX}/status")[0] == b"online"
    assert "event=ready" in daemon.log() and "event=models_loaded" in daemon.log()


# ------------------------------------------------------------------------------------------------------ (b) + (c)
def test_backs_of_heads_and_strangers_never_open_a_door(gallery, broker, tmp_path):
    sub = Subscriber(broker, f"{PREFIX}/#").start()
    cams = [_camera("corridor", CORRIDOR, "corridor", start_s=9.0, stop_s=17.0),
            _camera("crowd", CROWD, "arcade", loop=True)]  # 4.2 s: looped until it has produced decisions
    doors = [{"id": "corridor", "allowed_groups": None}, {"id": "arcade", "allowed_groups": None}]
    daemon = Daemon(tmp_path, _base(gallery, cams, doors, broker)).start()
    try:
        assert daemon.wait_log("camera=corridor event=ended", 120), daemon.log()[-3000:]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(e["camera"] == "crowd" for e in daemon.events()):
            time.sleep(0.2)
        code, _ = daemon.terminate()
        assert code == 0, daemon.log()[-3000:]
    finally:
        daemon.kill()
    sub.stop()
    events = daemon.events()
    assert _grants(events) == [] and _grants(sub.events()) == []
    crowd = [e for e in events if e["camera"] == "crowd"]
    assert crowd and all(e["type"] in ("unknown", "deny") for e in crowd)
    assert all(verify_payload(e, _key()) for e in sub.events())
    assert len(sub.events()) == len(events)


# ------------------------------------------------------------------------------------------------------------ (d)
def test_rtsp_camera_reconnects_and_keeps_deciding(gallery, broker, rtsp, tmp_path):
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_path = str(tmp_path / "notify.sock")
    notify.bind(notify_path)
    notes: list[str] = []

    def listen() -> None:
        notify.settimeout(0.5)
        while True:
            try:
                notes.append(notify.recv(4096).decode())
            except TimeoutError:
                continue
            except OSError:
                return

    threading.Thread(target=listen, daemon=True).start()
    sub = Subscriber(broker, f"{PREFIX}/#").start()
    cam = {"id": "rtsp", "url": rtsp.url, "door": "front", "open_timeout_s": 3, "read_timeout_s": 2,
           "stall_timeout_s": 5, "backoff_initial_s": 0.2, "backoff_max_s": 1.0}
    cfg = _base(gallery, [cam], [{"id": "front", "cooldown_s": 0}], broker, repeat_after_s=2)
    daemon = Daemon(tmp_path, cfg, env={"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "1000000"}).start()
    try:
        assert daemon.wait_log("event=ready", 90), daemon.log()[-3000:]
        assert sub.wait_for(lambda s: len(s.events()) >= 1, 30), daemon.log()[-3000:]
        rtsp.stop()
        assert daemon.wait_log("event=failure", 20)
        time.sleep(1.0)
        restarted = datetime.now(UTC)
        rtsp.start()
        assert daemon.wait_log("opens=2", 30), daemon.log()[-3000:]
        assert sub.wait_for(
            lambda s: any(parse_rfc3339(e["captured_at"]) > restarted for e in s.events()), 40), daemon.log()[-3000:]
        code, took = daemon.terminate()
    finally:
        daemon.kill()
        notify.close()
    assert code == 0 and took < 10.0
    sub.wait_for(lambda s: s.payloads(f"{PREFIX}/status")[-1:] == [b"offline"], 5)
    sub.stop()
    assert sub.payloads(f"{PREFIX}/status")[-1] == b"offline"  # clean stop says offline itself
    assert "READY=1" in notes and "WATCHDOG=1" in notes and "STOPPING=1" in notes
    assert notes.index("READY=1") < notes.index("WATCHDOG=1")


# ------------------------------------------------------------------------------------------------------------ (e)
def test_broker_outage_keeps_audit_complete_and_never_sends_expired_grants(gallery, broker, tmp_path):
    sub = Subscriber(broker, f"{PREFIX}/#", persistent=True).start()
    received: list[tuple[dict, datetime]] = []
    seen: set[str] = set()
    stop_watch = threading.Event()

    def watch() -> None:  # receipt time of every event (checks that no grant arrives after its expiry)
        while not stop_watch.is_set():
            for e in sub.events():
                if e["event_id"] not in seen:
                    seen.add(e["event_id"])
                    received.append((e, datetime.now(UTC)))
            time.sleep(0.02)

    threading.Thread(target=watch, daemon=True).start()
    cfg = _base(gallery, [_camera("stage", STAGE, "front", start_s=2.6, stop_s=7.0, loop=True)],
                [{"id": "front", "cooldown_s": 0}], broker, repeat_after_s=0.5, grant_ttl_s=1.0)
    daemon = Daemon(tmp_path, cfg).start()
    try:
        assert daemon.wait_log("event=ready", 90), daemon.log()[-3000:]
        assert sub.wait_for(lambda s: len(_grants(s.events())) >= 1, 40), daemon.log()[-3000:]
        broker.stop()
        down_at = datetime.now(UTC)
        assert daemon.wait_log("event=mqtt_disconnected", 10)
        time.sleep(5.0)  # decisions keep coming while the broker is away; grants expire after 1 s
        broker.start()
        back_at = datetime.now(UTC)
        assert daemon.wait_count("event=mqtt_connected", 2, 40), daemon.log()[-3000:]  # paho's backoff ≤ 30 s
        online_again = sub.wait_for(lambda s: s.payloads(f"{PREFIX}/status").count(b"online") >= 2, 15)
        time.sleep(2.0)
        daemon.proc.send_signal(signal.SIGKILL)  # a crash: the broker publishes the last will
        daemon.proc.wait(10)
        went_offline = sub.wait_for(lambda s: s.payloads(f"{PREFIX}/status")[-1:] == [b"offline"], 15)
    finally:
        daemon.kill()
        stop_watch.set()
    sub.stop()
    assert online_again and went_offline, sub.payloads(f"{PREFIX}/status")
    audit = {r["event_id"]: r for r in daemon.audited()}
    assert {e["event_id"] for e, _ in received} <= set(audit)  # everything published was audited first
    for e, at in received:
        if e["type"] == "grant":
            assert (at - parse_rfc3339(e["expires_at"])).total_seconds() < 0.3, (e, at)  # never sent late
    during = [r for r in audit.values() if r["type"] == "grant"
              and down_at < parse_rfc3339(r["decided_at"]) and parse_rfc3339(r["expires_at"]) < back_at]
    assert during, "expected grants decided while the broker was down"
    assert not {r["event_id"] for r in during} & seen  # expired grants stayed in the audit log only


def test_quick_start_command_on_a_video_file_without_broker(gallery, tmp_path):
    # README's quick start: built-in defaults, a file on the command line; exits 0 when the file has ended
    env = {**os.environ, "FACEGATE_GALLERY": str(gallery), "XDG_STATE_HOME": str(tmp_path / "state")}
    run = _facegate("run", "--camera", str(need_shared(CROWD)), timeout=180, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "event=no_broker note=no_door_can_be_driven" in run.stderr and "event=all_cameras_ended" in run.stderr
    audit = tmp_path / "state" / "facegate" / "audit.jsonl"
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert audit.exists() and [e["event_id"] for e in lines] == [r["event"]["event_id"] for r in read_audit(audit)]
    assert not _grants(lines)


# ------------------------------------------------------------------------------------------------------------ (f)
def test_bad_config_is_reported_with_key_path_and_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("cameras:\n  - id: a\n    url: rtsp://127.0.0.1/x\n    fps_limit: -1\nmqtt:\n  prot: 1883\n")
    run = _facegate("run", "--config", str(bad), timeout=120)
    assert run.returncode == 2
    assert "line 4: cameras[0].fps_limit" in run.stderr and "line 6: mqtt.prot: unknown key" in run.stderr
    assert "Traceback" not in run.stderr


def test_missing_model_is_named(tmp_path):
    manifest = yaml.safe_load((REPO / "models" / "default.yaml").read_text())
    manifest["name"] = "broken"
    manifest["recogniser"] = {**manifest["recogniser"], "source": {"file": str(tmp_path / "missing_resnet.dat")}}
    pack = tmp_path / "broken.yaml"
    pack.write_text(yaml.safe_dump(manifest))
    video = need_shared(CROWD)
    env = {**os.environ, "FACEGATE_CACHE_DIR": str(tmp_path / "cache"), "XDG_STATE_HOME": str(tmp_path / "state")}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"pack": str(pack), "cameras": [{"id": "a", "file": str(video)}],
                                   "signing": {"key_file": None}}))
    run = _facegate("run", "--config", str(cfg), timeout=120, env=env)
    assert run.returncode == 1, run.stderr[-2000:]
    assert "missing_resnet.dat" in run.stderr and "Traceback" not in run.stderr


def test_dead_camera_does_not_stop_the_others_and_no_broker_still_audits(gallery, tmp_path):
    dead = {"id": "dead", "url": f"rtsp://127.0.0.1:{free_port()}/nothing", "door": "front", "open_timeout_s": 1,
            "backoff_initial_s": 0.2, "backoff_max_s": 1}
    own_gallery = tmp_path / "gallery"
    shutil.copytree(gallery, own_gallery)
    cfg = _base(own_gallery, [dead, _camera("crowd", CROWD, "front", loop=True)], [{"id": "front"}])
    cfg["service"] = {"ready_timeout_s": 3, "state_dir": str(tmp_path / "state")}
    daemon = Daemon(tmp_path, cfg).start()
    try:
        assert daemon.wait_log("event=ready", 90), daemon.log()[-3000:]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not daemon.events():
            time.sleep(0.2)
        # enrol a third person while the daemon runs; SIGHUP makes it re-read the gallery
        photo = DATA / "enroll_examples" / "single" / "alex-lacamoire.png"
        enrol = _facegate("enroll", "--gallery", str(own_gallery), "--name", "Alex Lacamoire", str(photo))
        assert enrol.returncode == 0, enrol.stderr
        daemon.proc.send_signal(signal.SIGHUP)
        assert daemon.wait_log("event=gallery_reloaded identities=3", 20), daemon.log()[-3000:]
        code, took = daemon.terminate()
    finally:
        daemon.kill()
    log = daemon.log()
    assert code == 0 and took < 10.0
    assert "event=camera_not_delivering camera=dead" in log and "cannot open rtsp://127.0.0.1" in log
    assert "event=no_broker note=no_door_can_be_driven" in log
    events = daemon.events()
    assert events and {e["camera"] for e in events} == {"crowd"}
    assert [e["event_id"] for e in events] == [r["event_id"] for r in daemon.audited()]


# ------------------------------------------------------------------------------------------------------- systemd
def test_systemd_unit_verifies():
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("needs systemd-analyze (apt-get install systemd)")
    unit = (REPO / "systemd" / "facegate.service").read_text()
    for key in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "StateDirectory=facegate", "User=facegate",
                "NoNewPrivileges=yes", "ProtectSystem=strict", "ExecReload=/bin/kill -HUP $MAINPID"):
        assert key in unit
    exe = shutil.which("facegate")
    if exe is None:
        pytest.skip("the facegate console script is not on PATH (pip install -e .)")
    # verify checks that ExecStart exists: point it at this machine's facegate
    with_local = unit.replace("/usr/bin/facegate", str(Path(exe).resolve()))
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "facegate.service"
        path.write_text(with_local)
        run = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "facegate.service" not in run.stderr, run.stderr


# ------------------------------------------------------------------------------------------- erasure and reload
def test_erasure_reaches_the_running_daemon_and_a_bad_reload_is_refused(gallery, tmp_path):
    own_gallery = tmp_path / "gallery"
    shutil.copytree(gallery, own_gallery)
    ghost = {"id": "ghost", "device": "/dev/video7", "door": "front"}  # a device that does not exist
    if Path(ghost["device"]).exists():
        pytest.skip("this machine has a /dev/video7")
    cams = [_camera("stage", STAGE, "front", start_s=2.6, stop_s=7.0, loop=True), ghost]
    cfg = _base(own_gallery, cams, [{"id": "front", "cooldown_s": 0}], repeat_after_s=0.5)
    daemon = Daemon(tmp_path, cfg).start()  # gallery.refresh_s: the default, 2 s
    try:
        assert daemon.wait_log("event=ready", 90), daemon.log()[-3000:]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _grants(daemon.events()):
            time.sleep(0.1)
        assert _grants(daemon.events()), daemon.log()[-3000:]
        remove = _facegate("gallery", "remove", "--gallery", str(own_gallery), MIRANDA)
        assert remove.returncode == 0, remove.stderr
        removed = datetime.now(UTC)
        assert daemon.wait_log(f"event=gallery_identity_removed id=1 name='{MIRANDA}'", 10), daemon.log()[-3000:]
        # votes already cast may still count for max_frame_age_s (1.5 s); later ones cannot name him
        settled = datetime.now(UTC).timestamp() + 1.6
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not [
                e for e in daemon.events() if e["type"] == "unknown" and
                parse_rfc3339(e["decided_at"]).timestamp() > settled]:
            time.sleep(0.2)
        # SIGHUP with a key file that does not exist: refused whole, naming the key; the daemon keeps running
        daemon.config.write_text(daemon.config.read_text().replace(str(daemon.key), str(tmp_path / "gone.key")))
        daemon.proc.send_signal(signal.SIGHUP)
        assert daemon.wait_log("event=reload_refused key=signing.key_file", 20), daemon.log()[-3000:]
        code, _ = daemon.terminate()
    finally:
        daemon.kill()
    log = daemon.log()
    assert code == 0, log[-3000:]
    assert "camera=ghost event=device_missing device=/dev/video7" in log
    assert "event=camera_not_delivering camera=ghost" in log and "event=config_reloaded" not in log
    events = daemon.events()
    late = [e for e in events if parse_rfc3339(e["decided_at"]).timestamp() > settled]
    assert late and all(e["type"] == "unknown" for e in late), (removed, late)
    assert all(e["camera"] == "stage" for e in events)


def test_a_gallery_that_cannot_be_refreshed_fails_closed(gallery, tmp_path):
    """Another process writes a corrupt template: the refresh fails, and until it recovers nobody matches (an erasure
    might be among the changes the daemon cannot read), so no door opens; the daemon keeps running and says so."""
    import sqlite3

    own_gallery = tmp_path / "gallery"
    shutil.copytree(gallery, own_gallery)
    cams = [_camera("stage", STAGE, "front", start_s=2.6, stop_s=7.0, loop=True)]
    cfg = _base(own_gallery, cams, [{"id": "front", "cooldown_s": 0}], repeat_after_s=0.5)
    daemon = Daemon(tmp_path, cfg).start()
    try:
        assert daemon.wait_log("event=ready", 90), daemon.log()[-3000:]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _grants(daemon.events()):
            time.sleep(0.1)
        assert _grants(daemon.events()), daemon.log()[-3000:]
        with sqlite3.connect(own_gallery / "gallery.db") as db:
            pack, metric = db.execute("SELECT pack, metric FROM templates LIMIT 1").fetchone()
            iid = db.execute("INSERT INTO identities(name, groups, created_at, updated_at) "
                             "VALUES ('Corrupt', '[]', '2026-11-30', '2026-11-30')").lastrowid
            db.execute("INSERT INTO templates(identity_id, embedding, pack, metric, image_sha256, quality, created_at)"
                       " VALUES (?, ?, ?, ?, ?, '{}', '2026-11-30')",
                       (iid, np.full(128, np.nan, np.float32).tobytes(), pack, metric, "ab" * 32))
            db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key='generation'")
        assert daemon.wait_log("event=gallery_refresh_failed", 15), daemon.log()[-3000:]
        settled = datetime.now(UTC).timestamp() + 1.6  # votes cast before the failure may still complete
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not [
                e for e in daemon.events() if parse_rfc3339(e["decided_at"]).timestamp() > settled]:
            time.sleep(0.2)
        code, _ = daemon.terminate()
    finally:
        daemon.kill()
    assert code == 0, daemon.log()[-3000:]
    late = [e for e in daemon.events() if parse_rfc3339(e["decided_at"]).timestamp() > settled]
    assert late and all(e["type"] == "unknown" for e in late), late


@pytest.mark.parametrize("source", ["/dev/video7", "notes.mp4"])
def test_unusable_only_camera_exits_1_at_once(tmp_path, source):
    if source.startswith("/dev/") and Path(source).exists():
        pytest.skip(f"this machine has a {source}")
    if not source.startswith("/dev/"):
        source = str(tmp_path / source)
        Path(source).write_text("not a video\n")
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state"), "FACEGATE_GALLERY": str(tmp_path / "g")}
    t0 = time.monotonic()
    run = _facegate("run", "--camera", source, timeout=120, env=env)
    took = time.monotonic() - t0
    assert run.returncode == 1, run.stderr[-3000:]
    assert "no camera delivered a frame" in run.stderr and "Traceback" not in run.stderr
    assert (f"no such video device {source}" if source.startswith("/dev/") else
            f"cannot open video file {source}") in run.stderr
    assert took < 25, took  # models load, then no 30 s wait for a camera that cannot appear


def test_audit_path_under_a_file_is_named(tmp_path):
    (tmp_path / "plain").write_text("x")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"cameras": [{"id": "a", "file": str(need_shared(STAGE))}],
                                   "audit": {"path": str(tmp_path / "plain" / "audit.jsonl")},
                                   "service": {"state_dir": str(tmp_path / "state")}}))
    run = _facegate("run", "--config", str(cfg), timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "audit.path: cannot create" in run.stderr and "parent is not a folder" in run.stderr
    assert "File exists" not in run.stderr


def test_stdout_reader_going_away_is_not_a_crash(gallery, tmp_path):
    # `facegate run … | head -1`: the pipe closes after the first event; decisions are still audited
    env = {**os.environ, "FACEGATE_GALLERY": str(gallery), "XDG_STATE_HOME": str(tmp_path / "state")}
    proc = subprocess.Popen([sys.executable, "-m", "facegate.cli", "run", "--camera", str(need_shared(CROWD))],
                            stdout=subprocess.PIPE, stderr=(tmp_path / "err.log").open("w"), env=env)
    first = json.loads(proc.stdout.readline())
    proc.stdout.close()
    code = proc.wait(120)
    err = (tmp_path / "err.log").read_text()
    assert code == 0 and "event=stdout_closed" in err and "Traceback" not in err, err[-3000:]
    audited = read_audit(tmp_path / "state" / "facegate" / "audit.jsonl")
    assert audited[0]["event"]["event_id"] == first["event_id"] and len(audited) > 1
