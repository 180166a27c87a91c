"""Capture stage against real videos and a real RTSP server (GStreamer on 127.0.0.1)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from facegate.config import CameraConfig
from facegate.runtime.capture import CaptureStage, Frame, FrameSlots

sys.path.insert(0, str(Path(__file__).parent))
from conftest import need_shared  # noqa: E402
from rtsp_server import free_port  # noqa: E402

STAGE = "data/videos/stage_clip_640x360.mp4"


def _collect(stage: CaptureStage, seconds: float, until=None) -> list[Frame]:
    frames: list[Frame] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        frames += stage.slots.take_all(0.2)
        if until is not None and until(frames):
            break
    return frames


def test_slots_keep_newest_and_count_drops():
    slots = FrameSlots()
    img = np.zeros((2, 2, 3), np.uint8)
    for i in range(3):
        slots.put(Frame("a", img, float(i), None, i))  # type: ignore[arg-type]
    slots.put(Frame("b", img, 9.0, None, 0))  # type: ignore[arg-type]
    got = slots.take_all(0)
    assert [(f.camera_id, f.index) for f in got] == [("a", 2), ("b", 0)]
    assert slots.dropped == {"a": 2}
    assert slots.take_all(0.05) == []


def test_file_plays_at_its_own_fps_and_ends():
    video = need_shared(STAGE)
    stage = CaptureStage([CameraConfig(id="f", file=str(video), start_s=3.0, stop_s=4.0)])
    t0 = time.monotonic()
    stage.start()
    frames = _collect(stage, 6.0, until=lambda _: stage.all_ended)
    elapsed = time.monotonic() - t0
    stage.stop()
    assert stage.all_ended
    # 1 s of a 29.97 fps clip: about 30 frames, delivered over about 1 s (not as fast as decoding allows)
    assert 25 <= stage.cameras["f"].stats.frames <= 32
    assert 0.8 <= elapsed <= 3.0
    f = frames[-1]
    assert f.image.shape == (360, 640, 3) and f.image.dtype == np.uint8
    assert f.captured_wall.tzinfo is not None and f.captured_wall.utcoffset().total_seconds() == 0
    assert all(b.captured_at >= a.captured_at for a, b in zip(frames, frames[1:], strict=False))


def test_file_loops_and_fps_limit_applies():
    video = need_shared(STAGE)
    stage = CaptureStage([CameraConfig(id="l", file=str(video), stop_s=0.5, loop=True, fps_limit=10)])
    stage.start()
    frames = _collect(stage, 2.5)
    stage.stop()
    st = stage.cameras["l"].stats
    assert st.state != "ended" and st.failures == 0
    # 0.5 s segment looped for ~2.5 s at ≤ 10 fps: more frames than one pass of the segment at 10 fps (5)
    assert 12 <= len(frames) <= 27
    gaps = np.diff([f.captured_at for f in frames])
    assert gaps.min() >= 0.09


def test_slow_consumer_gets_newest_frames_and_drops_are_counted():
    video = need_shared(STAGE)
    stage = CaptureStage([CameraConfig(id="d", file=str(video), realtime=False, stop_s=4.0)])
    stage.start()
    seen = []
    while not stage.all_ended:
        seen += stage.slots.take_all(0.2)
        time.sleep(0.1)  # a consumer slower than decoding
    stage.stop()
    st = stage.cameras["d"].stats
    assert st.frames >= 100 and stage.slots.dropped["d"] > 0
    assert len(seen) + stage.slots.dropped["d"] in (st.frames, st.frames - 1)
    indices = [f.index for f in seen]
    assert indices == sorted(indices) and len(set(indices)) == len(indices)


def test_dead_camera_does_not_stop_the_others():
    video = need_shared(STAGE)
    dead = CameraConfig(id="dead", url=f"rtsp://127.0.0.1:{free_port()}/nothing", open_timeout_s=1.0,
                        backoff_initial_s=0.1, backoff_max_s=0.4)
    good = CameraConfig(id="good", file=str(video), stop_s=1.5)
    stage = CaptureStage([dead, good])
    stage.start()
    frames = _collect(stage, 4.0, until=lambda _: stage.cameras["good"].ended)
    stage.stop()
    assert {f.camera_id for f in frames} == {"good"}
    assert stage.cameras["good"].stats.frames >= 40
    assert stage.cameras["dead"].stats.failures >= 2
    assert "cannot open" in stage.cameras["dead"].stats.last_error
    assert stage.delivering() == ["good"]


def test_missing_device_is_reported_at_once_and_the_others_continue(tmp_path):
    video = need_shared(STAGE)
    node = "/dev/video7"
    if os.path.exists(node):
        pytest.skip(f"this machine has a {node}")
    missing = CameraConfig(id="missing", device=node, backoff_initial_s=0.1, backoff_max_s=0.3)
    good = CameraConfig(id="good", file=str(video), stop_s=1.0)
    stage = CaptureStage([missing, good])
    stage.start()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2.0 and stage.unusable() != ["missing"]:
        time.sleep(0.01)
    found_s = time.monotonic() - t0
    frames = _collect(stage, 4.0, until=lambda _: stage.cameras["good"].ended)
    still_missing = stage.unusable()  # it kept looking without reopening: still missing once the file ended
    stage.stop()
    assert still_missing == ["missing"] and found_s < 0.5, found_s
    st = stage.cameras["missing"].stats
    assert st.last_error == f"no such video device {node}" and st.failures == 1 and st.opens == 0
    assert {f.camera_id for f in frames} == {"good"} and stage.cameras["good"].ended


def test_unreadable_file_is_given_up_at_once(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    stage = CaptureStage([CameraConfig(id="bad", file=str(text))])
    stage.start()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 5.0 and stage.unusable() != ["bad"]:
        time.sleep(0.01)
    took = time.monotonic() - t0
    stage.stop()
    assert stage.unusable() == ["bad"] and took < 2.0, took
    assert stage.all_ended and "cannot open video file" in stage.cameras["bad"].stats.last_error


def test_rtsp_reconnects_after_server_restart(rtsp_server):
    cam = CameraConfig(id="rtsp", url=rtsp_server.url, open_timeout_s=3, read_timeout_s=2, stall_timeout_s=5,
                       backoff_initial_s=0.2, backoff_max_s=1.0)
    stage = CaptureStage([cam])
    stage.start()
    try:
        before = _collect(stage, 10.0, until=lambda f: len(f) >= 30)
        assert len(before) >= 30
        rtsp_server.stop()
        _collect(stage, 8.0, until=lambda _: stage.cameras["rtsp"].stats.failures >= 2)
        assert stage.cameras["rtsp"].stats.failures >= 2
        rtsp_server.start()
        after = _collect(stage, 15.0, until=lambda f: len(f) >= 30)
        assert len(after) >= 30
        assert stage.cameras["rtsp"].stats.opens >= 2
        assert after[0].index > before[-1].index
    finally:
        stage.stop()


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs POSIX SIGSTOP to freeze the server")
def test_watchdog_rebuilds_a_capture_whose_frames_stop(rtsp_server):
    # A frozen server keeps the TCP session open but sends nothing. With a long read timeout the OpenCV read
    # blocks; only the watchdog (stall_timeout_s) can get the camera going again.
    cam = CameraConfig(id="w", url=rtsp_server.url, open_timeout_s=30, read_timeout_s=60, stall_timeout_s=1.5,
                       backoff_initial_s=0.2, backoff_max_s=1.0)
    stage = CaptureStage([cam])
    stage.start()
    pid = rtsp_server.proc.pid
    try:
        assert len(_collect(stage, 10.0, until=lambda f: len(f) >= 10)) >= 10
        os.kill(pid, signal.SIGSTOP)
        time.sleep(4.0)
        assert stage.cameras["w"].stats.rebuilds >= 1
        os.kill(pid, signal.SIGCONT)
        after = _collect(stage, 40.0, until=lambda f: len(f) >= 10)
        assert len(after) >= 10
        assert sum(t.name.startswith("capture-w-") for t in threading.enumerate()) >= 1
    finally:
        os.kill(pid, signal.SIGCONT)
        stage.stop()
