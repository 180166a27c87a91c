"""One grant per passage, end to end (issue 14, item 4): `facegate run` as a subprocess on the stage clip with the
performer enrolled, the quick-start configuration (no doors: the implicit door).

Before the fix the quick start granted the performer once per new face track: the clip's close-up (2.7–7.0 s) broke
into several tracks (microphone and hands in front of the face), giving 2 grants per play and 15 in 65 s of
looping. Here the close-up is looped (start_s 2.0 → stop_s 7.2, then again), so the performer stays in front of the
camera for about 20 s across track breaks and loop restarts: one continuous presence, hence exactly one grant and
no deny.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import DATA, need_shared  # noqa: E402
from daemon_process import Daemon, facegate, grants  # noqa: E402

pytestmark = pytest.mark.slow

STAGE = "data/videos/stage_clip_640x360.mp4"
MIRANDA = "Lin-Manuel Miranda"


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> Path:
    need_shared(STAGE)
    folder = tmp_path_factory.mktemp("gallery")
    photo = DATA / "enroll_examples" / "single" / "lin-manuel-miranda.png"
    run = facegate("enroll", "--gallery", str(folder), "--name", MIRANDA, str(photo))
    assert run.returncode == 0, run.stderr
    return folder


def test_one_continuous_presence_gives_one_grant(gallery, tmp_path):
    camera = {"id": "stage", "file": str(need_shared(STAGE)), "loop": True, "start_s": 2.0, "stop_s": 7.2}
    daemon = Daemon(tmp_path, {"cameras": [camera], "gallery": {"path": str(gallery)},
                               "decision": {"max_frame_age_s": 1.5}}).start()
    try:
        assert daemon.wait_record("ready", timeout=120), daemon.tail()
        assert daemon.wait_events(lambda ev: grants(ev), timeout=60), daemon.tail()
        t0 = time.monotonic()
        daemon.wait_until(lambda: False, timeout=20.0)  # four more plays of the close-up
        assert time.monotonic() - t0 >= 19.0, daemon.tail()  # the daemon was still running
        events = daemon.events()
        same = daemon.records("same_passage")
    finally:
        code, _ = daemon.terminate()
    assert code == 0
    assert [(e["person_name"], e["camera"]) for e in grants(events)] == [(MIRANDA, "stage")], daemon.tail()
    assert [e for e in events if e["type"] == "deny"] == []
    assert same, "the later tracks of the same presence were not recognised as one passage"
    assert {r["identity"] for r in same} == {str(grants(events)[0]["person_id"])}
