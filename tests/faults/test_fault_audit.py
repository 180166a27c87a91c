"""Audit first under real I/O faults, in process: the audit log on a small tmpfs that the test fills (root only; CI
runs as root), a torn write repaired before the next record (truncated back, or — when truncation is refused, an
append-only file — a fresh line), one degraded episode with its count, recovery when space returns, and the emitter
handing nothing to the later sinks while the audit log cannot record. The daemon-level version (MQTT, stdout,
SIGHUP after logrotate) is test_fault_audit_daemon.py."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import pytest
from conftest import Collector
from faultkit import chattr_append_only, fill, small_tmpfs

from facegate.runtime.audit import AuditLog, AuditWriteError, read_audit
from facegate.runtime.decision import Decision
from facegate.runtime.events import EventEmitter
from facegate.runtime.health import SETTLE_S, Health
from facegate.signing import HmacSigner

KEY = b"audit-fault-test-key-0123456789abcdef"


class Clock:
    """Monotonic seconds the test moves on (the health registry's clock)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t




def _decision(track: int) -> Decision:
    now = datetime.now(UTC)
    return Decision(type="grant", camera="cam", door="front", track_id=track, captured_at=now, decided_at=now,
                    identity_id=7, identity_name="Pat " + "x" * 900, score=0.3, margin=0.1, frames_used=3,
                    reason=None)  # a long name: each record is ~1.3 kB, so a page boundary is crossed soon


def _parse_every_line(path) -> list[dict]:
    """Every non-empty line of the file must be a JSON object (no record glued onto a torn one)."""
    return [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def test_full_file_system_no_event_passes_without_its_record_and_recovery_is_automatic(tmp_path, caplog):
    with small_tmpfs(tmp_path / "fs", 64) as fs:
        clock = Clock()
        health = Health(clock=clock)
        audit = AuditLog(fs / "audit.jsonl", health=health)
        later = Collector()
        emitter = EventEmitter(signer=HmacSigner(KEY), sinks=[audit, later], grant_ttl_s=2.0)
        with caplog.at_level(logging.INFO, logger="facegate"):
            sent = [emitter.emit(_decision(i)) for i in range(3)]
            assert all(sent) and len(later.events) == 3
            filler = fill(fs)
            failed = 0
            for i in range(3, 40):  # the disk is full: some records tear, then none fit
                if emitter.emit(_decision(i)) is None:
                    failed += 1
            assert failed >= 1 and health.degraded("audit")
            # every event the later sinks saw has a complete record; the torn tail is not counted as one
            recorded = {r["event"]["event_id"] for r in read_audit(audit.path)}
            assert {e.payload["event_id"] for e in later.events} <= recorded
            filler.unlink()  # space returns
            back = emitter.emit(_decision(99))
            assert back is not None and health.degraded("audit")  # one good record: not settled yet
            clock.t += SETTLE_S
            assert emitter.emit(_decision(100)) is not None
        assert not health.degraded("audit")
        lines = _parse_every_line(audit.path)
        assert [r["event"]["event_id"] for r in lines] == [e.payload["event_id"] for e in later.events]
        assert [r["event"]["track_id"] for r in lines[-2:]] == [99, 100]
        assert "Traceback" not in caplog.text  # (the torn tail read above mid-episode was skipped with a warning)
        degraded = [r for r in caplog.records if "event=degraded part=audit" in r.getMessage()]
        recovered = [r.getMessage() for r in caplog.records if "event=recovered part=audit" in r.getMessage()]
        assert len(degraded) == 1 and len(recovered) == 1 and f"count={failed}" in recovered[0]
        audit.close()


def test_a_torn_line_is_truncated_away_before_the_next_record(tmp_path):
    with small_tmpfs(tmp_path / "fs", 64) as fs:
        audit = AuditLog(fs / "audit.jsonl", health=Health())
        audit.append({"n": 1})
        good = audit.path.stat().st_size
        filler = fill(fs)
        with pytest.raises(AuditWriteError):
            audit.append({"n": 2, "pad": "y" * 8000})  # more than the page the file has: a short write
        assert audit.path.stat().st_size > good, "expected a partial (torn) write on the full file system"
        filler.unlink()
        audit.append({"n": 3})
        assert [r["n"] for r in _parse_every_line(audit.path)] == [1, 3]
        audit.close()


def test_when_truncation_is_refused_the_next_record_starts_on_a_fresh_line(tmp_path, caplog):
    with small_tmpfs(tmp_path / "fs", 64) as fs:
        audit = AuditLog(fs / "audit.jsonl", health=Health())
        audit.append({"n": 1})
        filler = fill(fs)
        with pytest.raises(AuditWriteError):
            audit.append({"n": 2, "pad": "y" * 8000})
        filler.unlink()
        chattr_append_only(audit.path, True)  # ftruncate → EPERM, appends still allowed
        try:
            audit.append({"n": 3})
        finally:
            chattr_append_only(audit.path, False)
        raw = audit.path.read_bytes().splitlines()
        assert json.loads(raw[0])["n"] == 1 and json.loads(raw[-1])["n"] == 3
        assert len(raw) == 3 and raw[1].startswith(b'{"n":2') and not raw[1].endswith(b"}")  # the torn fragment,
        # alone on its line: the next record was not glued onto it
        with caplog.at_level(logging.WARNING):
            assert [r["n"] for r in read_audit(audit.path)] == [1, 3]
        assert "line=2" in caplog.text
        audit.close()


def test_reopen_follows_a_rotation(tmp_path):
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path)
    audit.append({"n": 1})
    path.rename(tmp_path / "audit.jsonl.1")  # logrotate's rename
    audit.append({"n": 2})  # before the signal: still into the renamed file, complete
    audit.reopen()
    audit.append({"n": 3})
    audit.close()
    assert [r["n"] for r in read_audit(tmp_path / "audit.jsonl.1")] == [1, 2]
    assert [r["n"] for r in read_audit(path)] == [3]
