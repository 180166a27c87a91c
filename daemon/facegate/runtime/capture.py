"""Capture stage: one reader thread per camera writing into a shared set of one-slot mailboxes.

Each camera keeps only its newest frame: a frame that was not taken before the next one arrives is dropped and
counted (a growing queue would make every decision later than the last; frigate does the same with a bounded
queue, see shared/notes/style.md §1). Sources are opened through OpenCV: URLs and files with the FFmpeg backend and
its open/read timeouts (``CAP_PROP_OPEN_TIMEOUT_MSEC``/``CAP_PROP_READ_TIMEOUT_MSEC``, OpenCV ≥ 4.6), USB indices and
device paths with V4L2.

A failed open or read closes the source and retries after an exponential backoff with ±20 % jitter (the usual
"full-jitter"-style spreading so many cameras restarting with a switch do not retry in lock-step). A watchdog
thread rebuilds a camera whose reader stopped making progress: an OpenCV read can block for ever after an RTSP
source goes away and comes back, and a blocked read cannot be interrupted or safely released from another thread,
so the stuck reader is abandoned (its generation number no longer matches; it exits and releases its capture if
the read ever returns) and a fresh reader with a fresh capture takes over. A camera that is offline at start-up,
or dies later, never stops the others.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from facegate.config import CameraConfig, Config
from facegate.errors import VideoError
from facegate.runtime.gating import ChangeDetector
from facegate.runtime.health import Health

log = logging.getLogger(__name__)

#: ``missing``: the device node does not exist (looked for again every ``backoff_max_s``); ``failed``: a video file
#: that cannot be opened at all (given up: a file does not come back by itself).
State = Literal["starting", "opening", "reading", "backoff", "missing", "failed", "ended", "stopped"]

#: How often the watchdog looks at the readers (s).
WATCHDOG_PERIOD_S = 0.5
#: Jitter applied to each backoff delay: delay × U(1 − J, 1 + J).
BACKOFF_JITTER = 0.2
#: Camera states reported to ``Health`` as a problem (part ``cameras``).
UNHEALTHY: tuple[State, ...] = ("backoff", "missing", "failed")


@dataclass(frozen=True, slots=True)
class Frame:
    """One captured frame.

    ``image``: H×W×3 uint8, BGR (as OpenCV decodes it). ``captured_at``: ``time.monotonic()`` seconds when the read
    returned. ``captured_wall``: the same instant in UTC. ``index``: per-camera sequence number from 0.
    ``camera``: the config of the camera that read it (its zone and idle-gating settings; None in tests that build
    frames by hand: no zone, no gating). ``change``: the share (0-1) of the zone that changed since the camera's
    previous frame (``runtime/gating.ChangeDetector``), None when not measured (gating off, first frame).
    """

    camera_id: str
    image: np.ndarray
    captured_at: float
    captured_wall: datetime
    index: int
    camera: CameraConfig | None = None
    change: float | None = None


@dataclass
class CameraStats:
    """Counters of one camera (monotonic counts since start)."""

    state: State = "starting"
    frames: int = 0
    dropped: int = 0
    opens: int = 0
    failures: int = 0
    rebuilds: int = 0
    last_frame_at: float | None = None
    last_error: str = ""
    fps: float = 0.0
    size: tuple[int, int] | None = None
    _since: float = field(default_factory=time.monotonic)


class FrameSlots:
    """Newest-frame mailboxes of all cameras, with one condition so the consumer can wait for any new frame.

    ``put`` replaces a camera's untaken frame (counted as dropped); ``take_all`` returns and clears every waiting
    frame. Thread-safe.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._slots: dict[str, Frame] = {}
        self.dropped: dict[str, int] = {}

    def put(self, frame: Frame) -> None:
        with self._cond:
            if frame.camera_id in self._slots:
                self.dropped[frame.camera_id] = self.dropped.get(frame.camera_id, 0) + 1
            self._slots[frame.camera_id] = frame
            self._cond.notify_all()

    def take_all(self, timeout: float | None = None) -> list[Frame]:
        """Wait up to ``timeout`` s (None: for ever) for at least one frame; return all waiting frames, newest per
        camera, in camera-id order ([] on timeout)."""
        with self._cond:
            if not self._slots:
                self._cond.wait(timeout)
            frames = [self._slots[k] for k in sorted(self._slots)]
            self._slots.clear()
            return frames

    def empty(self) -> bool:
        """True when no camera has a waiting frame."""
        with self._cond:
            return not self._slots

    def wake(self) -> None:
        """Wake a waiting consumer (used at shutdown)."""
        with self._cond:
            self._cond.notify_all()


def missing_device(cam: CameraConfig) -> str | None:
    """The device node of a ``usb``/``device`` camera when it does not exist (``/dev/videoN`` for USB index N, the
    V4L2 naming on Linux), else None."""
    if cam.device is not None:
        node = cam.device
    elif cam.usb is not None and os.path.isdir("/dev"):
        node = f"/dev/video{cam.usb}"
    else:
        return None
    return None if os.path.exists(node) else node


def open_source(cam: CameraConfig) -> cv2.VideoCapture:
    """Open a camera's source with timeouts. Returns an opened capture; raises ``OSError`` with the reason."""
    open_ms = int(cam.open_timeout_s * 1000)
    read_ms = int(cam.read_timeout_s * 1000)
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, open_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, read_ms]
    if cam.usb is not None:
        cap = cv2.VideoCapture(cam.usb, cv2.CAP_V4L2, params)
    elif cam.device is not None:
        cap = cv2.VideoCapture(cam.device, cv2.CAP_V4L2, params)
    else:
        cap = cv2.VideoCapture(cam.url or cam.file or "", cv2.CAP_FFMPEG, params)
    if not cap.isOpened():
        cap.release()
        raise OSError(f"cannot open {cam.describe()}")
    return cap


class Camera:
    """One camera: a reader thread (rebuilt by ``check_watchdog``) feeding ``slots``."""

    def __init__(self, cam: CameraConfig, slots: FrameSlots, stop: threading.Event) -> None:
        self.config = cam
        self.id = cam.id
        self.stats = CameraStats()
        self._slots = slots
        self._stop = stop
        self._lock = threading.Lock()
        self._generation = 0
        self._progress_at = time.monotonic()
        self._index = 0
        self._thread: threading.Thread | None = None
        motion = cam.motion
        # the change test runs here, in the reader thread, in parallel with the other cameras' decoding
        self._change = ChangeDetector(threshold=motion.threshold, scale_px=motion.scale_px, zone=cam.zone) \
            if motion.enabled else None

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            self._generation += 1
            gen = self._generation
            self._progress_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, args=(gen,), name=f"capture-{self.id}-{gen}", daemon=True)
        self._thread.start()

    def retire(self) -> None:
        """Stop this camera (its reader exits at its next step; a blocked read is abandoned)."""
        with self._lock:
            self._generation += 1
            self.stats.state = "stopped"

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def ended(self) -> bool:
        """True when a non-looping file reached its end (the camera will deliver nothing more)."""
        return self.stats.state == "ended"

    def check_watchdog(self, now: float) -> bool:
        """Rebuild the reader when it has made no progress for ``stall_timeout_s`` (plus the open timeout while
        opening). Returns True when it rebuilt."""
        cfg = self.config
        with self._lock:
            state, since = self.stats.state, self._progress_at
        if state == "reading":
            limit = cfg.stall_timeout_s
        elif state == "opening":
            limit = cfg.open_timeout_s + cfg.stall_timeout_s
        else:
            return False
        if now - since <= limit:
            return False
        self.stats.rebuilds += 1
        self.stats.last_error = f"no progress for {now - since:.1f} s in state {state}"
        log.warning("camera=%s event=watchdog_rebuild state=%s stalled_s=%.1f rebuilds=%d",
                    self.id, state, now - since, self.stats.rebuilds)
        self.start()  # new generation: the stuck reader is abandoned and exits if its read ever returns
        return True

    # -- reader --------------------------------------------------------------------------------------------------
    def _current(self, gen: int) -> bool:
        return gen == self._generation and not self._stop.is_set()

    def _set_state(self, gen: int, state: State) -> None:
        with self._lock:
            if gen == self._generation:
                self.stats.state = state
                self._progress_at = time.monotonic()

    def _run(self, gen: int) -> None:
        cfg = self.config
        delay = cfg.backoff_initial_s
        while self._current(gen):
            node = missing_device(cfg)
            if node is not None:
                # no such device: say so at once (no open attempt, no retry storm), then look again slowly in
                # case it is plugged in later
                if self.stats.state != "missing":
                    self.stats.failures += 1
                    self.stats.last_error = f"no such video device {node}"
                    log.error("camera=%s event=device_missing device=%s note=other_cameras_continue fix='check "
                              "the device path (ls /dev/video*) or plug the camera in'", self.id, node)
                self._set_state(gen, "missing")
                if self._stop.wait(cfg.backoff_max_s):
                    break
                continue
            self._set_state(gen, "opening")
            try:
                cap = open_source(cfg)
            except (OSError, cv2.error) as exc:
                cap = None
                self._failed(gen, str(exc))
            if cap is None and cfg.file is not None and self.stats.frames == 0:
                log.error("camera=%s event=file_unreadable file=%s note=other_cameras_continue fix='give a video "
                          "file FFmpeg can decode'", self.id, cfg.file)
                self.stats.last_error = f"cannot open video file {cfg.file} (not a video FFmpeg can decode?)"
                self._set_state(gen, "failed")
                return
            if cap is not None:
                if not self._current(gen):
                    cap.release()
                    return
                self.stats.opens += 1
                log.info("camera=%s event=opened source=%s opens=%d", self.id, cfg.describe(), self.stats.opens)
                try:
                    outcome = self._read_loop(gen, cap)
                finally:
                    cap.release()
                if outcome == "ended":
                    self._set_state(gen, "ended")
                    log.info("camera=%s event=ended frames=%d", self.id, self.stats.frames)
                    return
                if outcome == "abandoned":
                    return
                if outcome == "delivered":
                    delay = cfg.backoff_initial_s  # it worked for a while: start the backoff again from the bottom
            if not self._current(gen):
                break
            self._set_state(gen, "backoff")
            wait = delay * random.uniform(1 - BACKOFF_JITTER, 1 + BACKOFF_JITTER)
            log.info("camera=%s event=backoff wait_s=%.2f", self.id, wait)
            if self._stop.wait(wait):
                break
            delay = min(delay * 2, cfg.backoff_max_s)
        if gen == self._generation:
            self._set_state(gen, "stopped")

    def _failed(self, gen: int, reason: str) -> None:
        if gen != self._generation:
            return
        self.stats.failures += 1
        self.stats.last_error = reason
        log.warning("camera=%s event=failure reason=%r failures=%d", self.id, reason, self.stats.failures)

    def _read_loop(self, gen: int, cap: cv2.VideoCapture) -> str:
        """Read until failure/end/stop. Returns 'ended' (file end), 'abandoned' (superseded or stopping),
        'delivered' (failed after ≥1 frame) or 'failed' (no frame at all)."""
        cfg = self.config
        is_file = cfg.file is not None
        file_fps = cap.get(cv2.CAP_PROP_FPS) if is_file else 0.0
        if not (file_fps and 1.0 <= file_fps <= 240.0):
            file_fps = 25.0
        period = 1.0 / file_fps
        min_gap = 1.0 / cfg.fps_limit if cfg.fps_limit else 0.0
        self._set_state(gen, "reading")
        delivered = 0
        play_start = time.monotonic()
        played = 0  # frames of the file played since play_start (for real-time pacing)
        last_put = -1e9
        if is_file and cfg.start_s:
            cap.set(cv2.CAP_PROP_POS_MSEC, cfg.start_s * 1000.0)
        while self._current(gen):
            ok, image = cap.read()
            if ok and is_file and cfg.stop_s is not None and cap.get(cv2.CAP_PROP_POS_MSEC) > cfg.stop_s * 1000.0:
                ok = False
            if not self._current(gen):
                return "abandoned"
            if not ok or image is None:
                if is_file and delivered > 0:
                    if not cfg.loop:
                        return "ended"
                    cap.set(cv2.CAP_PROP_POS_MSEC, cfg.start_s * 1000.0)
                    ok, image = cap.read()
                    if ok and image is not None:
                        log.debug("camera=%s event=loop", self.id)
                if not ok or image is None:
                    self._failed(gen, "read failed or timed out")
                    return "delivered" if delivered else "failed"
            if is_file and cfg.realtime:
                played += 1
                due = play_start + played * period
                lag = due - time.monotonic()
                if lag > 0:
                    if self._stop.wait(lag):
                        return "abandoned"
                elif lag < -1.0:  # fell far behind (machine busy): resynchronise instead of racing to catch up
                    play_start, played = time.monotonic(), 0
            now = time.monotonic()
            with self._lock:
                if gen != self._generation:
                    return "abandoned"
                self._progress_at = now
            if min_gap and now - last_put < min_gap:
                continue
            last_put = now
            delivered += 1
            self._deliver(image, now)
        return "abandoned"

    def _deliver(self, image: np.ndarray, now: float) -> None:
        st = self.stats
        if st.last_frame_at is not None:
            dt = now - st.last_frame_at
            if dt > 0:
                st.fps = 0.9 * st.fps + 0.1 / dt if st.fps else 1.0 / dt
        st.frames += 1
        st.last_frame_at = now
        st.size = (image.shape[1], image.shape[0])
        change = self._change.update(image) if self._change is not None else None
        frame = Frame(self.id, image, now, datetime.now(UTC), self._index, self.config, change)
        self._index += 1
        self._slots.put(frame)
        st.dropped = self._slots.dropped.get(self.id, 0)


def cameras_from_args(specs: list[str], loop: bool = False, first: int = 1) -> list[CameraConfig]:
    """``--camera`` values → cameras ``cam<first>``…: a URL (has ``://``), a USB index (digits), a device path
    (``/dev/…``) or a video file (``loop``: play it again at its end). Raises ``VideoError`` for a file that does
    not exist."""
    out = []
    for i, spec in enumerate(specs, start=first):
        cid = f"cam{i}"
        if "://" in spec:
            out.append(CameraConfig(id=cid, url=spec))
        elif spec.isdigit():
            out.append(CameraConfig(id=cid, usb=int(spec)))
        elif spec.startswith("/dev/"):
            out.append(CameraConfig(id=cid, device=spec))
        else:
            path = Path(spec).expanduser().resolve()
            if not path.is_file():
                raise VideoError(f"--camera {spec}: no such video file "
                                 "(give a file, an rtsp:// URL, a USB index or a /dev path)")
            out.append(CameraConfig(id=cid, file=str(path), loop=loop))
    return out


class CaptureStage:
    """All cameras plus the watchdog thread. ``slots`` is what the inference stage reads. The watchdog also reports
    cameras that cannot deliver (states in ``UNHEALTHY``) to ``health`` (part ``cameras``; a private registry when
    None)."""

    def __init__(self, cameras: list[CameraConfig], health: Health | None = None) -> None:
        self.health = health if health is not None else Health()
        self.slots = FrameSlots()
        self._stop = threading.Event()
        self.cameras = {c.id: Camera(c, self.slots, self._stop) for c in cameras}
        self._watchdog: threading.Thread | None = None

    @classmethod
    def from_config(cls, config: Config, extra: list[CameraConfig] | None = None,
                    health: Health | None = None) -> CaptureStage:
        """The ``cameras:`` of ``config`` followed by ``extra`` (the command line's ``--camera`` ones)."""
        return cls(all_cameras(config, extra), health=health)

    def reconfigure(self, config: Config, extra: list[CameraConfig] | None = None) -> list[str]:
        """SIGHUP: apply the new camera list (``replace``); returns the ids that changed."""
        return self.replace(all_cameras(config, extra))

    def start(self) -> None:
        for cam in self.cameras.values():
            cam.start()
        self._watchdog = threading.Thread(target=self._watch, name="capture-watchdog", daemon=True)
        self._watchdog.start()

    def _watch(self) -> None:
        while not self._stop.wait(WATCHDOG_PERIOD_S):
            now = time.monotonic()
            for cam in list(self.cameras.values()):
                cam.check_watchdog(now)
            self._report_health()

    def _report_health(self) -> None:
        bad = {cid: c.stats.last_error or c.stats.state for cid, c in list(self.cameras.items())
               if c.stats.state in UNHEALTHY}
        if bad:
            self.health.problem("cameras", "; ".join(f"{cid}: {why}" for cid, why in sorted(bad.items())), count=0)
        else:
            self.health.clear("cameras")

    def stop(self, timeout: float = 2.0) -> None:
        """Ask every reader to stop and wait up to ``timeout`` s in total (stuck readers are daemon threads)."""
        self._stop.set()
        self.slots.wake()
        deadline = time.monotonic() + timeout
        for cam in self.cameras.values():
            cam.join(max(0.0, deadline - time.monotonic()))
        if self._watchdog is not None:
            self._watchdog.join(max(0.0, deadline - time.monotonic()))

    def replace(self, cameras: list[CameraConfig]) -> list[str]:
        """Apply a new camera list (SIGHUP): retire removed or changed cameras, start new or changed ones.
        Returns the ids that changed."""
        wanted = {c.id: c for c in cameras}
        changed = []
        for cid, cam in list(self.cameras.items()):
            if wanted.get(cid) != cam.config:
                cam.retire()
                del self.cameras[cid]
                changed.append(cid)
        for cid, cfg in wanted.items():
            if cid not in self.cameras:
                self.cameras[cid] = Camera(cfg, self.slots, self._stop)
                self.cameras[cid].start()
                if cid not in changed:
                    changed.append(cid)
        return sorted(changed)

    @property
    def all_ended(self) -> bool:
        """True when every camera is a non-looping file that reached its end (or could not be opened at all)."""
        return bool(self.cameras) and all(c.ended or c.stats.state == "failed" for c in self.cameras.values())

    def unusable(self) -> list[str]:
        """Ids of cameras that cannot deliver now: device node missing, or a video file that cannot be opened."""
        return [cid for cid, c in self.cameras.items() if c.stats.state in ("missing", "failed")]

    def delivering(self) -> list[str]:
        """Ids of cameras that delivered at least one frame."""
        return [cid for cid, c in self.cameras.items() if c.stats.frames > 0]

    def snapshot(self) -> dict[str, dict[str, object]]:
        """Per-camera counters for logs, the status line, the metrics and ``state.json``; ``last_frame_age_s``:
        seconds since the camera's last frame (None before the first)."""
        out = {}
        now = time.monotonic()
        for cid, c in list(self.cameras.items()):  # read from the metrics and state threads while SIGHUP may swap
            s = c.stats
            out[cid] = {"state": s.state, "frames": s.frames, "dropped": self.slots.dropped.get(cid, 0),
                        "opens": s.opens, "failures": s.failures, "rebuilds": s.rebuilds,
                        "fps": round(s.fps, 1), "last_error": s.last_error,
                        "last_frame_age_s": None if s.last_frame_at is None else round(now - s.last_frame_at, 2)}
        return out


def all_cameras(config: Config, extra: list[CameraConfig] | None = None) -> list[CameraConfig]:
    """The cameras the daemon runs: the config's, then the command line's."""
    return list(config.cameras) + list(extra or [])
