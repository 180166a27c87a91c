"""Shared test fixtures: where ../shared lives, skips with stated reasons when data or tools are absent, and the real
servers the tests talk to: a Mosquitto broker (``mosquitto_broker``) and a GStreamer RTSP server playing the stage
clip (``rtsp_server``), each on a free 127.0.0.1 port."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from mosquitto import Mosquitto, find_mosquitto  # noqa: E402
from rtsp_server import RtspServer, gst_available  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FACEGATE_SHARED", REPO.parent / "shared")).resolve()
DATA = SHARED / "data"
MODELS = SHARED / "models"


def need_shared(*relative: str) -> Path:
    """Return DATA/relative (or SHARED/…); skip the test with the reason when it is absent."""
    path = SHARED.joinpath(*relative)
    if not path.exists():
        pytest.skip(f"needs {path} (the shared test data folder), which is absent on this machine")
    return path


def need_dlib():
    """Import dlib (dlib-bin, the reference implementation) or skip with the reason."""
    if importlib.util.find_spec("dlib") is None:
        pytest.skip("needs dlib-bin (the reference implementation; pip install -e .[dev])")
    import dlib

    return dlib


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return need_shared("data")


#: The clip the RTSP server plays.
STAGE_CLIP = "data/videos/stage_clip_640x360.mp4"


@pytest.fixture
def mosquitto_broker(tmp_path):
    """A started ``Mosquitto`` on a free port; stopped after the test. Skips when no mosquitto binary exists."""
    binary = find_mosquitto()
    if binary is None:
        pytest.skip("needs the mosquitto broker binary (apt-get install mosquitto)")
    broker = Mosquitto(tmp_path / "mosquitto", binary)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def rtsp_server():
    """A started ``RtspServer`` streaming the stage clip over RTSP on a free port; skips without GStreamer."""
    reason = gst_available()
    if reason:
        pytest.skip(reason)
    server = RtspServer(need_shared(STAGE_CLIP)).start()
    try:
        yield server
    finally:
        server.stop()


#: Who ``enrolled_gallery`` holds: name → (group, photo under enroll_examples/single).
ENROLLED = {"Lin-Manuel Miranda": ("staff", "lin-manuel-miranda.png"), "Barack Obama": ("guests", "obama-480p.jpg")}


@pytest.fixture(scope="session")
def enrolled_gallery(tmp_path_factory) -> Path:
    """A gallery of the built-in pack with ``ENROLLED`` (Lin-Manuel Miranda, the stage clip's performer, in group
    staff), enrolled once per run with `facegate enroll`. Tests that change a gallery copy it first."""
    import subprocess

    single = need_shared("data", "enroll_examples", "single")
    folder = tmp_path_factory.mktemp("enrolled-gallery")
    for name, (group, photo) in ENROLLED.items():
        run = subprocess.run([sys.executable, "-m", "facegate.cli", "enroll", "--gallery", str(folder), "--name", name,
                              "--group", group, str(single / photo)], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
    return folder


class Collector:
    """A sink that keeps every signed event it is given (an extra sink, as the door agent's or the metrics' are)."""

    name = "collector"
    critical = False

    def __init__(self) -> None:
        self.events: list = []

    def emit(self, event) -> None:
        self.events.append(event)
