"""Shared pieces of the fault-injection tests: a small real tmpfs that a test can fill (root only), a systemd
notification socket that records what the daemon says with receipt times, and the recorder of measured recovery
times (README "Reliability" quotes them).

Recovery times are printed (``RECOVERY name=… seconds=…``, visible with ``pytest -s``) and, when the environment
variable ``FACEGATE_RECOVERY_LOG`` names a file, appended to it as JSON lines with the date; nothing asserts them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest


def record_recovery(name: str, seconds: float, **extra: object) -> None:
    """Print and (with ``FACEGATE_RECOVERY_LOG``) append one measured recovery time."""
    print(f"RECOVERY name={name} seconds={seconds:.3f} {' '.join(f'{k}={v}' for k, v in extra.items())}")
    target = os.environ.get("FACEGATE_RECOVERY_LOG")
    if target:
        row = {"name": name, "seconds": round(seconds, 3), "date": datetime.now(UTC).date().isoformat(), **extra}
        with open(target, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def need_root(why: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"needs root to {why} (CI runs as root); this run is uid {os.geteuid()}")


@contextlib.contextmanager
def small_tmpfs(where: Path, size_kib: int = 64) -> Iterator[Path]:
    """Mount a ``size_kib`` KiB tmpfs at ``where`` (root only; skips otherwise), unmounted (lazily) afterwards."""
    need_root("mount a small tmpfs that the test fills")
    where.mkdir(parents=True, exist_ok=True)
    run = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0755", "tmpfs", str(where)],
                         capture_output=True, text=True)
    if run.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({run.stderr.strip()}): the container forbids mounts")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(folder: Path, name: str = "filler") -> Path:
    """Write zeros into ``folder/name`` until the file system is full (ENOSPC); returns the filler's path."""
    path = folder / name
    block = b"\0" * 4096
    with open(path, "ab", buffering=0) as f:
        while True:
            try:
                f.write(block)
            except OSError:
                break
        with contextlib.suppress(OSError):
            while f.write(b"\0"):
                pass
    return path


def chattr_append_only(path: Path, on: bool) -> None:
    """Set or clear the append-only inode flag (``chattr +a``): ``ftruncate`` then fails with EPERM."""
    tool = shutil.which("chattr")
    if tool is None:
        pytest.skip("needs chattr (e2fsprogs) to make a file append-only")
    run = subprocess.run([tool, "+a" if on else "-a", str(path)], capture_output=True, text=True)
    if run.returncode != 0:
        pytest.skip(f"chattr {'+a' if on else '-a'} is not supported here: {run.stderr.strip()}")


class NotifySocket:
    """A ``NOTIFY_SOCKET`` datagram socket collecting (monotonic receipt time, message) of every notification."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.notes: list[tuple[float, str]] = []
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            for line in data.decode().splitlines():
                self.notes.append((time.monotonic(), line))

    def times(self, message: str) -> list[float]:
        return [t for t, m in list(self.notes) if m == message]

    def close(self) -> None:
        self.sock.close()


# ------------------------------------------------------------------------------------------ daemon-level fixtures
# (a test module imports the ``*_fixture`` functions; the fixtures are used by their ``name``)
STAGE = "data/videos/stage_clip_640x360.mp4"
MIRANDA = "Lin-Manuel Miranda"
PERFORMER = "Stage Performer"
PREFIX = "fg"


def _enrol(folder: Path, name: str, group: str, photo: str) -> None:
    from conftest import DATA
    from daemon_process import facegate

    run = facegate("enroll", "--gallery", str(folder), "--name", name, "--group", group,
                   str(DATA / "enroll_examples" / "single" / photo))
    assert run.returncode == 0, run.stderr


@pytest.fixture(scope="session", name="miranda_gallery")
def miranda_gallery_fixture(tmp_path_factory) -> Path:
    """A gallery made by `facegate enroll`: Lin-Manuel Miranda (staff), Barack Obama (guests)."""
    from conftest import need_shared

    need_shared(STAGE)
    folder = tmp_path_factory.mktemp("gallery-a")
    _enrol(folder, MIRANDA, "staff", "lin-manuel-miranda.png")
    _enrol(folder, "Barack Obama", "guests", "obama-480p.jpg")
    return folder


@pytest.fixture(scope="session", name="performer_gallery")
def performer_gallery_fixture(tmp_path_factory) -> Path:
    """Another gallery (its own gallery id) holding the same face under another name: "Stage Performer" (staff)."""
    from conftest import need_shared

    need_shared(STAGE)
    folder = tmp_path_factory.mktemp("gallery-b")
    _enrol(folder, PERFORMER, "staff", "lin-manuel-miranda.png")
    return folder


def stage_config(gallery: Path, broker=None, **decision) -> dict:
    """`facegate run` config: the stage clip looped (Miranda on stage) at door ``front`` (staff, no cooldown), the
    gallery followed every 0.5 s, and ``broker`` (a Mosquitto) when given."""
    from conftest import need_shared

    cfg: dict = {
        "cameras": [{"id": "stage", "file": str(need_shared(STAGE)), "door": "front", "start_s": 2.6, "stop_s": 7.0,
                     "loop": True}],
        "doors": [{"id": "front", "allowed_groups": ["staff"], "cooldown_s": 0}],
        "gallery": {"path": str(gallery), "refresh_s": 0.5},
        "decision": {"k": 3, "n": 5, "max_frame_age_s": 1.5, "repeat_after_s": 0.5, **decision},
    }
    if broker is not None:
        cfg["mqtt"] = {"host": broker.host, "port": broker.port, "topic_prefix": PREFIX, "keepalive_s": 5}
    return cfg


def wall_ts(text: str) -> float:
    """An RFC 3339 time of an event → POSIX seconds."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
