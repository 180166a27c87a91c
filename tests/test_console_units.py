"""The console's readers of untrusted or concurrently written input: the audit-log index (torn lines, rotation, both
kinds of record, appends from two writers), upload sniffing and the daemon's state file — fuzzed where they parse."""

from __future__ import annotations

import json
import multiprocessing
import os
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st
from test_console_api import decision_record

from facegate.console.audit_reader import AuditIndex, Query
from facegate.console.daemon_state import read_daemon_state
from facegate.console.uploads import UploadRefused, check_photos, display_name, sniff
from facegate.runtime.audit import AuditLog, admin_record, is_admin, is_decision, read_audit


def test_the_index_follows_appends_skips_torn_lines_and_rereads_a_rotated_log(tmp_path):
    path = tmp_path / "audit.jsonl"
    index = AuditIndex(path)
    assert index.refresh() == []  # no log yet
    with AuditLog(path) as audit:
        audit.append(decision_record(0))
        audit.append(admin_record("identity.enrol", "alice", {"id": 1}))
    new = index.refresh()
    assert [is_decision(r) for r in new] == [True, False] and new[0]["seq"] == 0
    with open(path, "ab") as f:  # a record still being written: read once it is complete
        f.write(b'{"logged_at": "x", "event": {"event_id": "e1", "type": "grant"')
    assert index.refresh() == []
    with open(path, "ab") as f:
        f.write(b'}}\nnot json at all\n')
    assert [r["event"]["event_id"] for r in index.refresh()] == ["e1"]
    assert len(index.rows) == 2 and index.admin[0]["action"] == "identity.enrol"
    os.replace(path, tmp_path / "audit.jsonl.1")  # rotated: a new, shorter log
    with AuditLog(path) as audit:
        audit.append(decision_record(5))
    assert [r["seq"] for r in index.refresh()] == [0] and len(index.rows) == 1


def _writer(path: str, kind: str, count: int) -> None:
    with AuditLog(path) as audit:
        for n in range(count):
            audit.append(decision_record(n) if kind == "daemon" else
                         admin_record("decision.review", "bob", str(n), note="x" * 3000))


def test_two_processes_appending_never_interleave_records(tmp_path):
    path = tmp_path / "audit.jsonl"
    ctx = multiprocessing.get_context("spawn")
    writers = [ctx.Process(target=_writer, args=(str(path), kind, 300)) for kind in ("daemon", "console")]
    for w in writers:
        w.start()
    for w in writers:
        w.join(120)
        assert w.exitcode == 0
    lines = path.read_bytes().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one whole record
    assert sum(map(is_decision, records)) == 300 and sum(map(is_admin, records)) == 300
    assert len(read_audit(path)) == 600


def test_time_filters_compare_instants_not_text(tmp_path):
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as audit:
        for n in range(10):
            audit.append(decision_record(n))
    index = AuditIndex(path)
    t0 = datetime(2026, 5, 4, 8, 0, tzinfo=UTC)
    plus2 = datetime(2026, 5, 4, 10, 10, tzinfo=timezone(timedelta(hours=2)))  # 08:10 UTC
    rows, _ = index.query(Query(since=t0 + timedelta(minutes=3), until=plus2, limit=100))
    assert [r["seq"] for r in rows] == list(range(9, 2, -1))


def test_photos_are_judged_by_their_bytes():
    assert sniff(b"\xff\xd8\xff\xe0" + b"\0" * 20) == "jpeg"
    assert sniff(b"\x89PNG\r\n\x1a\n" + b"\0" * 20) == "png"
    assert sniff(b"RIFF\0\0\0\0WEBPVP8 ") == "webp"
    assert sniff(b"GIF89a") is None and sniff(b"") is None
    assert display_name("../../etc/passwd", 1) == "passwd"
    assert display_name("C:\\photos\\ada\n.jpg", 1) == "ada.jpg"
    assert display_name("\u202e\u0000", 3) == "photo3"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.none(), st.text(max_size=50)), st.binary(max_size=64)), max_size=5))
def test_check_photos_never_raises_anything_but_a_refusal(files):
    try:
        photos = check_photos(files, max_files=3, max_bytes=40)
    except UploadRefused as exc:
        assert exc.status in (400, 413, 415)
    else:
        assert all(p.kind in ("jpeg", "png", "webp", "bmp") and len(p.data) <= 40 for p in photos)
        assert all(p.name.isprintable() and "/" not in p.name for p in photos)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.builds(lambda d: json.dumps(d).encode(), st.dictionaries(
    st.sampled_from(["written_at", "running", "cameras", "x"]),
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=30))))))
def test_the_state_file_reader_never_raises(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("state") / "state.json"
    path.write_bytes(data)
    answer = read_daemon_state(path, 5.0)
    assert answer["daemon"] in ("up", "down", "stopped")
    assert answer["daemon"] != "up" or answer["age_s"] <= 5.0


def test_a_fresh_state_file_is_up_an_old_one_down(tmp_path):
    path = tmp_path / "state.json"
    now = datetime.now(UTC)
    path.write_text(json.dumps({"written_at": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "running": True}))
    assert read_daemon_state(path, 5.0, now=now + timedelta(seconds=1))["daemon"] == "up"
    down = read_daemon_state(path, 5.0, now=now + timedelta(seconds=30))
    assert down["daemon"] == "down" and "not updated for 30 s" in down["reason"]
    assert read_daemon_state(tmp_path / "none.json", 5.0)["daemon"] == "down"
