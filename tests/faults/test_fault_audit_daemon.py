"""Audit first under a running `facegate run` (real models, the stage clip, a real Mosquitto): the audit log on a
small tmpfs filled by the test (root only; CI runs as root) → no event on MQTT or stdout without its complete audit
line, no traceback, one log line per degraded episode (status ``degraded``), recovery by itself when space returns
(time to the first audited event measured); and the shipped logrotate snippet run by real logrotate → the daemon
reopens the audit log on its SIGHUP and the new file gets the records."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from daemon_process import Daemon
from faultkit import (  # noqa: F401  (the *_fixture function is a session fixture)
    PREFIX,
    fill,
    miranda_gallery_fixture,
    record_recovery,
    small_tmpfs,
    stage_config,
    wall_ts,
)
from mosquitto import Subscriber

from facegate.runtime.audit import read_audit

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def _records(path: Path) -> list[dict]:
    """Every non-empty line parsed: a torn or glued line fails the test here."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def test_full_audit_file_system_publishes_nothing_unaudited_and_recovers(miranda_gallery, mosquitto_broker,
                                                                         tmp_path):
    gallery = tmp_path / "gallery"
    shutil.copytree(miranda_gallery, gallery)
    with small_tmpfs(tmp_path / "auditfs", 128) as fs:
        audit = fs / "audit.jsonl"
        cfg = stage_config(gallery, mosquitto_broker)
        cfg["audit"] = {"path": str(audit)}
        sub = Subscriber(mosquitto_broker, f"{PREFIX}/#").start()
        daemon = Daemon(tmp_path, cfg).start()
        try:
            assert daemon.wait_record("ready", 120), daemon.tail()
            assert daemon.wait_events(lambda ev: len(ev) >= 3, 90), daemon.tail()
            filler = fill(fs)
            assert daemon.wait_record("degraded", 30, part="audit"), daemon.tail()
            assert sub.wait_for(lambda s: s.payloads(f"{PREFIX}/status")[-1:] == [b"degraded"], 10)
            time.sleep(5.0)  # decisions go on and cannot be recorded
            filler.unlink()
            freed = time.time()
            assert daemon.wait_record("recovered", 30, part="audit"), daemon.tail()
            # (read_audit while the daemon writes: a line being appended may be caught half-way by this reader)
            assert daemon.wait_until(lambda: [r for r in read_audit(audit) if wall_ts(r["logged_at"]) > freed], 30)
            assert sub.wait_for(lambda s: s.payloads(f"{PREFIX}/status")[-1:] == [b"online"], 10)
            time.sleep(2.0)
            code, _ = daemon.terminate()
        finally:
            daemon.kill()
            sub.stop()
        records = _records(audit)
    assert code == 0, daemon.tail()
    first = min(wall_ts(r["logged_at"]) for r in records if wall_ts(r["logged_at"]) > freed)
    record_recovery("disk_space_back_to_first_audited_event", first - freed)
    audited = [r["event"]["event_id"] for r in records]
    assert [e["event_id"] for e in daemon.events()] == audited  # stdout = audit log, in order, nothing more
    published = {e["event_id"] for e in sub.events()}
    assert published <= set(audited) and published
    # One line per episode, not per decision. Usually one episode; a second one happens when the filler finished
    # while a torn record had just taken a page: truncating that record frees the page and the next record fits.
    degraded, recovered = daemon.records("degraded", part="audit"), daemon.records("recovered", part="audit")
    lost = sum(int(r["count"]) for r in recovered)  # decided while the disk was full: not recorded, not published
    assert 1 <= len(degraded) == len(recovered) <= 2 and lost > len(degraded), (degraded, recovered)
    assert "Traceback" not in daemon.log()


def test_logrotate_snippet_rotates_and_sighup_reopens(miranda_gallery, tmp_path):
    tool = shutil.which("logrotate") or ("/usr/sbin/logrotate" if Path("/usr/sbin/logrotate").exists() else None)
    if tool is None:
        pytest.skip("needs logrotate (apt-get install logrotate)")
    shipped = (REPO / "systemd" / "facegate.logrotate").read_text()
    rules = [line.split("#")[0].strip() for line in shipped.splitlines()]
    assert "copytruncate" not in rules and "create 0600 facegate facegate" in rules
    assert "systemctl reload facegate >/dev/null 2>&1 || true" in rules
    gallery = tmp_path / "gallery"
    shutil.copytree(miranda_gallery, gallery)
    daemon = Daemon(tmp_path, stage_config(gallery)).start()
    audit = daemon.audit
    try:
        assert daemon.wait_record("ready", 120), daemon.tail()
        assert daemon.wait_events(lambda ev: len(ev) >= 2, 90), daemon.tail()
        # the shipped snippet, pointed at this test's file, user and process instead of /var/lib and systemctl
        conf = tmp_path / "facegate.logrotate"
        conf.write_text(shipped.replace("/var/lib/facegate/audit.jsonl", str(audit))
                        .replace("facegate facegate", "root root")
                        .replace("systemctl reload facegate", f"kill -HUP {daemon.proc.pid}"))
        run = subprocess.run([tool, "--force", "--state", str(tmp_path / "logrotate.state"), str(conf)],
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        rotated = audit.with_name(audit.name + ".1")
        assert rotated.exists(), list(tmp_path.iterdir())
        assert daemon.wait_record("audit_reopened", 30), daemon.tail()
        assert daemon.wait_until(lambda: len(read_audit(audit)) >= 2, 60), daemon.tail()
        code, _ = daemon.terminate()
    finally:
        daemon.kill()
    assert code == 0, daemon.tail()
    assert oct(audit.stat().st_mode & 0o777) == oct(0o600)
    old, new = _records(rotated), _records(audit)
    assert old and new
    assert [e["event_id"] for e in daemon.events()] == [r["event"]["event_id"] for r in old + new]
