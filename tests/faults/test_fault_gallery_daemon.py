"""Gallery faults under a running `facegate run` (real models, the stage clip with Lin-Manuel Miranda, a real
Mosquitto): gallery.db overwritten with garbage → no grant, one ``degraded`` line, status ``degraded``, recovery
when the bytes are back (time to the first grant measured); the folder replaced by another gallery → the erased
name is never granted again, the other gallery's people are; ``gallery remove`` + ``compact`` by another process,
then refresh, SIGHUP and SIGTERM or SIGKILL → no byte of the erased template anywhere in the folder."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from daemon_process import Daemon, facegate, grants
from faultkit import (  # noqa: F401  (the *_fixture functions are session fixtures)
    MIRANDA,
    PERFORMER,
    PREFIX,
    miranda_gallery_fixture,
    performer_gallery_fixture,
    record_recovery,
    stage_config,
    wall_ts,
)
from mosquitto import Subscriber
from test_fault_gallery import folder_holds

pytestmark = pytest.mark.slow


def _status(sub: Subscriber) -> list[bytes]:
    return sub.payloads(f"{PREFIX}/status")


def test_garbage_gallery_grants_nobody_until_restored(miranda_gallery, mosquitto_broker, tmp_path):
    gallery = tmp_path / "gallery"
    shutil.copytree(miranda_gallery, gallery)
    sub = Subscriber(mosquitto_broker, f"{PREFIX}/#").start()
    daemon = Daemon(tmp_path, stage_config(gallery, mosquitto_broker)).start()
    db = gallery / "gallery.db"
    try:
        assert daemon.wait_record("ready", 120), daemon.tail()
        assert daemon.wait_events(grants, 90), daemon.tail()
        good = db.read_bytes()
        with open(db, "r+b") as f:  # overwritten in place with garbage, as a stray `dd` or a bad restore would
            f.write(np.random.default_rng(0).bytes(len(good)))
        assert daemon.wait_record("degraded", 15, part="gallery"), daemon.tail()
        noticed = time.time()
        assert sub.wait_for(lambda s: _status(s)[-1:] == [b"degraded"], 10)
        time.sleep(6.0)  # the camera keeps showing Miranda: decisions go on, none may be a grant
        with open(db, "r+b") as f:
            f.write(good)
        restored = time.time()
        assert daemon.wait_record("recovered", 20, part="gallery"), daemon.tail()
        assert daemon.wait_events(lambda ev: [e for e in grants(ev) if wall_ts(e["decided_at"]) > restored], 90)
        assert sub.wait_for(lambda s: _status(s)[-1:] == [b"online"], 10)
        code, _ = daemon.terminate()
    finally:
        daemon.kill()
        sub.stop()
    assert code == 0, daemon.tail()
    events = daemon.events()
    settled = noticed + 1.6  # votes cast before the refresh noticed may complete within max_frame_age_s
    during = [e for e in events if settled < wall_ts(e["decided_at"]) < restored]
    assert during and not grants(during), during
    first = min(wall_ts(e["decided_at"]) for e in grants(events) if wall_ts(e["decided_at"]) > restored)
    record_recovery("gallery_repaired_to_first_grant", first - restored)
    assert len(daemon.records("degraded", part="gallery")) == 1 and "Traceback" not in daemon.log()
    assert {e["event_id"] for e in sub.events()} <= {e["event_id"] for e in daemon.audited()}


def test_folder_replaced_by_another_gallery_is_loaded_whole(miranda_gallery, performer_gallery, mosquitto_broker,
                                                            tmp_path):
    gallery, other = tmp_path / "gallery", tmp_path / "other"
    shutil.copytree(miranda_gallery, gallery)
    shutil.copytree(performer_gallery, other)
    daemon = Daemon(tmp_path, stage_config(gallery, mosquitto_broker)).start()
    try:
        assert daemon.wait_record("ready", 120), daemon.tail()
        assert daemon.wait_events(lambda ev: [e for e in grants(ev) if e["person_name"] == MIRANDA], 90)
        gallery.rename(tmp_path / "old-gallery")  # the folder is replaced by another gallery
        other.rename(gallery)
        swapped = time.time()
        assert daemon.wait_record("gallery_replaced", 15), daemon.tail()
        replaced = time.time()
        assert daemon.wait_events(lambda ev: [e for e in grants(ev) if e["person_name"] == PERFORMER], 90)
        time.sleep(4.0)
        code, _ = daemon.terminate()
    finally:
        daemon.kill()
    assert code == 0, daemon.tail()
    events = daemon.events()
    late_miranda = [e for e in grants(events) if e["person_name"] == MIRANDA and wall_ts(e["decided_at"]) > replaced
                    + 1.6]
    assert late_miranda == [], late_miranda  # the old gallery's identity is gone, not merged
    first = min(wall_ts(e["decided_at"]) for e in grants(events) if e["person_name"] == PERFORMER)
    record_recovery("gallery_swapped_to_first_grant", first - swapped)
    (degraded,) = daemon.records("degraded", part="gallery")
    assert "another gallery" in degraded["reason"] and daemon.records("recovered", part="gallery")


def _template(folder: Path, name: str) -> bytes:
    with sqlite3.connect(folder / "gallery.db") as db:
        (blob,) = db.execute("SELECT t.embedding FROM templates t JOIN identities i ON i.id = t.identity_id "
                             "WHERE i.name = ?", (name,)).fetchone()
    return blob


@pytest.mark.parametrize("ending", ["SIGTERM", "SIGKILL"])
def test_erased_template_never_comes_back_into_the_folder(miranda_gallery, tmp_path, ending):
    gallery = tmp_path / "gallery"
    shutil.copytree(miranda_gallery, gallery)
    blob = _template(gallery, MIRANDA)
    assert folder_holds(gallery, blob)  # the check finds it before the erasure
    daemon = Daemon(tmp_path, stage_config(gallery)).start()
    try:
        assert daemon.wait_record("ready", 120), daemon.tail()
        assert daemon.wait_events(grants, 90), daemon.tail()
        for args in (("remove", MIRANDA), ("compact",)):
            run = facegate("gallery", args[0], "--gallery", str(gallery), *args[1:])
            assert run.returncode == 0, run.stderr
        assert folder_holds(gallery, blob) == [], "compact left the template"
        assert daemon.wait_record("gallery_identity_removed", 15, name=MIRANDA), daemon.tail()
        assert folder_holds(gallery, blob) == [], "after the daemon's refresh"
        daemon.proc.send_signal(signal.SIGHUP)
        assert daemon.wait_record("config_reloaded", 30), daemon.tail()
        assert folder_holds(gallery, blob) == [], "after SIGHUP"
        removed_at = datetime.now(UTC).timestamp()
        if ending == "SIGTERM":
            code, _ = daemon.terminate()
            assert code == 0, daemon.tail()
        else:
            daemon.proc.send_signal(signal.SIGKILL)
            daemon.proc.wait(10)
    finally:
        daemon.kill()
    assert folder_holds(gallery, blob) == [], f"after {ending}: the daemon wrote the erased template back"
    late = [e for e in grants(daemon.events()) if wall_ts(e["decided_at"]) > removed_at]
    assert late == []
