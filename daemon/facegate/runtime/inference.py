"""Inference stage: one thread owns the models and turns the cameras' newest frames into faces with embeddings.

Each cycle takes the newest unseen frame of every camera (``FrameSlots.take_all``: frames that arrived while the
previous cycle ran were already replaced, so the stage never falls behind). Idle gating (``runtime/gating.py``)
drops the frames of cameras whose picture did not change, that have no live track and whose periodic detection is
not due: they cost only their decode. Detection runs on the rest in batches (at most ``max_batch`` frames per
run; busy cameras first, then a few due periodic detections, ``schedule``); faces whose box centre is outside the
camera's zone and faces narrower than ``min_face_px`` (too small for a reliable comparison score) are dropped. The
``planner`` (the decision stage's ``DecisionEngine.plan``) then assigns each face its track and says which faces
need an embedding: a track that is already decided is embedded only when it is due for re-verification. Those faces
of every frame are aligned and embedded as one batch (and scored for liveness when enabled), and one
``FrameResult`` per analysed frame goes to ``on_result`` in capture order (a gated frame produces none).

Only this thread touches the ONNX Runtime sessions. ``from_config`` loads the pack before the thread starts, so that
model errors surface before start-up completes; it logs the execution provider really obtained.

Run-time model failures (a session that raises on a batch): the frames of that batch decide nothing (no grant can
come of them), the thread goes on with the next frames, and the failure is reported once per episode through
``Health`` (part ``inference``: one ``degraded`` line with the error, reminders at most once a minute, a
``recovered`` line with the count), not as a traceback per frame. ``healthy()`` — what the service's systemd
watchdog asks — turns False when the thread died, a cycle is stuck for ``stuck_cycle_s``, or every batch has failed
for ``failure_watchdog_s`` (``service.failure_watchdog_s``): systemd then stops hearing WATCHDOG=1 and restarts
the daemon.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from facegate.detections import Detections
from facegate.pipeline import FacePipeline
from facegate.runtime.capture import Frame, FrameSlots
from facegate.runtime.gating import PERIODIC, UNMEASURED, DetectGate, in_zone
from facegate.runtime.health import SETTLE_S, Health

if TYPE_CHECKING:
    from facegate.config import Config

log = logging.getLogger(__name__)


def inference_threads() -> int:
    """Default ONNX Runtime intra-op threads: half the CPUs this process may use (at least 1), leaving the rest
    to the camera decoders. Measured on 2 shared cores (bench/pipeline_bench.py): 1 thread gave 22 frames/s and
    24 ms CPU per frame against 8 frames/s and 69 ms with ONNX Runtime's own choice, whose spinning worker
    threads compete with decoding."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 2
    return max(1, cpus // 2)


class TrackPlanner(Protocol):
    """What the inference stage asks the decision stage before embedding (``DecisionEngine.plan``)."""

    def plan(self, camera: str, dets: Detections, captured_at: float) -> tuple[np.ndarray, np.ndarray]:
        """Track the faces ``dets`` of one frame of ``camera`` captured at ``captured_at`` (monotonic s); returns
        (N int64 track ids, N bool: embed this face)."""
        ...


@dataclass(frozen=True, slots=True)
class FrameResult:
    """The faces of one frame: ``dets`` with ``data["embeddings"]`` (N×D float32) and, with liveness,
    ``data["liveness"]`` (N float32, higher = live); ``done_at`` monotonic s when inference finished.
    With a planner, also ``data["track_ids"]`` (N int64) and ``data["embedded"]`` (N bool); the embedding (and
    live score) of a face that was not embedded is NaN and must not be used."""

    frame: Frame
    dets: Detections
    done_at: float


@dataclass
class InferenceStats:
    """Counters since start: cycles, frames, faces, errors and the last cycle's duration (s)."""

    cycles: int = 0
    frames: int = 0  # frames taken from the cameras
    detected: int = 0  # frames the detector ran on (the rest were gated: unchanged, no live track)
    faces: int = 0
    embedded: int = 0  # faces embedded (the others belong to decided tracks not due for re-verification)
    small_faces: int = 0
    outside_zone: int = 0
    errors: int = 0
    last_cycle_s: float = 0.0
    busy_s: float = 0.0
    started: float = field(default_factory=time.monotonic)


def load_pipeline(config: Config) -> FacePipeline:
    """Load ``pack`` with the ``inference:`` settings (threads default: ``inference_threads``) and the pack's
    liveness models when ``liveness.enabled``; logs the providers obtained. Raises ``ConfigError``,
    ``ChecksumError`` or ``ModelError`` naming the pack or file."""
    t0 = time.monotonic()
    threads = config.inference.threads or inference_threads()
    pipeline = FacePipeline.load(config.pack, providers=config.inference.providers, threads=threads,
                                 with_liveness=config.liveness.enabled)
    log.info("event=models_loaded pack=%s providers=%s threads=%d metric=%s threshold=%s load_s=%.2f",
             pipeline.manifest.name, ",".join(pipeline.providers), threads, pipeline.metric, pipeline.threshold,
             time.monotonic() - t0)
    return pipeline


class InferenceStage:
    """The inference thread. ``on_result`` is called from this thread, once per frame, in order.

    Keyword parameters: ``max_batch`` frames per detection run (≥ 1); ``min_face_px`` (faces with a narrower box
    are dropped; 0 keeps all); ``liveness`` (run the pack's PAD models; a pack without them gives no live scores,
    which the decision stage treats as not live); ``health`` (where failures are reported; a private registry when
    None); ``failure_watchdog_s`` and ``stuck_cycle_s`` (seconds, see ``healthy``); ``planner`` (tracks faces and
    says which to embed; None embeds every face and leaves tracking to ``on_result``); ``hold_s`` (idle gating keeps
    detecting a camera this long, s, after a frame with a face: the tracker's ``track_max_age_s``). Frames carry
    their camera's zone and gating settings (``Frame.camera``).
    """

    def __init__(
        self,
        pipeline: FacePipeline,
        slots: FrameSlots,
        on_result: Callable[[FrameResult], None],
        *,
        max_batch: int = 8,
        min_face_px: int = 0,
        liveness: bool = False,
        health: Health | None = None,
        failure_watchdog_s: float = 30.0,
        stuck_cycle_s: float = 30.0,
        planner: TrackPlanner | None = None,
        hold_s: float = 1.0,
    ) -> None:
        self.pipeline = pipeline
        self.health = health if health is not None else Health()
        self.failure_watchdog_s = failure_watchdog_s
        self.stuck_cycle_s = stuck_cycle_s
        self._failing_since: float | None = None  # monotonic s of the first failed batch since the last good one
        self.slots = slots
        self.on_result = on_result
        self.max_batch = max(1, int(max_batch))
        self.min_face_px = min_face_px
        self.liveness = liveness
        self.planner = planner
        self.hold_s = float(hold_s)
        self.gates: dict[str, DetectGate] = {}
        self.stats = InferenceStats()
        #: Called after each batch with (frames in it, seconds it took) on the inference thread (the metrics'
        #: histograms); must be fast and must not raise.
        self.batch_observers: list[Callable[[int, float], None]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._busy_since: float | None = None

    @classmethod
    def from_config(cls, config: Config, pipeline: FacePipeline, slots: FrameSlots,
                    on_result: Callable[[FrameResult], None], health: Health | None = None,
                    planner: TrackPlanner | None = None) -> InferenceStage:
        """The stage for ``pipeline`` (``load_pipeline``) with the ``inference:`` batch limit, the decision's
        ``min_face_px`` and ``track_max_age_s``, ``liveness.enabled`` and ``service.failure_watchdog_s``; results go
        to ``on_result`` and track plans come from ``planner`` (both the decision stage), failures to ``health``."""
        return cls(pipeline, slots, on_result, max_batch=config.inference.max_batch,
                   min_face_px=config.decision.min_face_px, liveness=config.liveness.enabled, health=health,
                   failure_watchdog_s=config.service.failure_watchdog_s, planner=planner,
                   hold_s=config.decision.track_max_age_s)

    def start(self) -> None:
        log.info("event=inference_start providers=%s max_batch=%d liveness=%s",
                 ",".join(self.pipeline.providers) or "?", self.max_batch, self.liveness)
        if not self.liveness:  # said once at start, where the integrator looks: the README's first limit
            log.warning("event=liveness_off pack=%s note=a_photo_or_screen_of_an_enrolled_face_can_be_granted "
                        "fix='a pack with a liveness model and liveness.enabled: true (README: Liveness)'",
                        getattr(getattr(self.pipeline, "manifest", None), "name", "?"))
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self.slots.wake()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def busy_for(self) -> float:
        """Seconds the current cycle has been running (0 when waiting for frames)."""
        since = self._busy_since
        return 0.0 if since is None else time.monotonic() - since

    def failing_for(self) -> float:
        """Seconds every batch has failed (0 while the last batch succeeded or none ran yet)."""
        since = self._failing_since
        return 0.0 if since is None else time.monotonic() - since

    def healthy(self) -> bool:
        """What the systemd watchdog is fed on: the thread is alive, no cycle has run for ``stuck_cycle_s`` and
        batches have not all been failing for ``failure_watchdog_s``."""
        return self.alive and self.busy_for() < self.stuck_cycle_s and self.failing_for() < self.failure_watchdog_s

    def idle(self) -> bool:
        """True when no frame is waiting and no cycle is running."""
        return self._busy_since is None and self.slots.empty()

    def _run(self) -> None:
        while not self._stop.is_set():
            frames = self.slots.take_all(0.25)
            if not frames or self._stop.is_set():
                continue
            self._busy_since = time.monotonic()
            try:
                self._cycle(frames)
            finally:
                self._busy_since = None

    def _cycle(self, frames: list[Frame]) -> None:
        frames.sort(key=lambda f: f.captured_at)
        self.stats.frames += len(frames)
        for chunk in self.schedule(frames):
            t0 = time.monotonic()
            try:
                results = self.analyse(chunk)
            except Exception as exc:  # a failing model must not kill the thread; those frames decide nothing
                self._failed(exc, len(chunk))
                continue
            self._failing_since = None
            self.health.clear("inference", settle_s=SETTLE_S)  # a model failing on some batches only is one episode
            dt = time.monotonic() - t0
            st = self.stats
            st.cycles += 1
            st.last_cycle_s = dt
            st.busy_s += dt
            for observe in self.batch_observers:
                observe(len(chunk), dt)
            for r in results:
                try:
                    self.on_result(r)
                except Exception:
                    self.stats.errors += 1
                    log.exception("event=decision_stage_error camera=%s", r.frame.camera_id)

    def _failed(self, exc: Exception, frames: int) -> None:
        """One failed batch: counted, reported to ``health`` (its episode logic keeps the log to one line per
        episode); the traceback of an episode's first failure goes to the debug log."""
        self.stats.errors += 1
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            log.debug("event=inference_error frames=%d", frames, exc_info=exc)
        first = (str(exc).strip().splitlines() or [""])[0]
        self.health.problem("inference", f"{type(exc).__name__}: {first}" if first else type(exc).__name__)

    def schedule(self, frames: list[Frame]) -> list[list[Frame]]:
        """One cycle's frames (capture order) → the detection chunks to run, in order: first the frames of cameras
        that changed or have a live track (at most ``max_batch`` per chunk), then at most ``periodic_budget``
        periodic detections of idle cameras, longest-waiting first. The others are skipped: an idle camera's
        periodic detection waits for a later cycle (it stays due), so that idle cameras that fell due together
        never hold up a busy camera's frame behind one large batch."""
        urgent, periodic = [], []
        for f in frames:
            reason = self.detection_reason(f)
            if reason == PERIODIC:
                periodic.append(f)
            elif reason is not None:
                urgent.append(f)
        periodic.sort(key=lambda f: self.gates[f.camera_id].last_detect_at or 0.0)
        periodic = periodic[: self.periodic_budget]
        return [urgent[i : i + self.max_batch] for i in range(0, len(urgent), self.max_batch)] \
            + ([periodic] if periodic else [])

    @property
    def periodic_budget(self) -> int:
        """Periodic detections of idle cameras per cycle: a quarter of ``max_batch`` (at least 1)."""
        return max(1, self.max_batch // 4)

    def detection_reason(self, frame: Frame) -> str | None:
        """Idle gating: why the detector must run on ``frame`` (``runtime/gating.DetectGate.reason``), or None
        when it may be skipped; "unmeasured" for a frame without gating settings or change measure."""
        cam = frame.camera
        if cam is None or not cam.motion.enabled:
            return UNMEASURED
        gate = self.gates.get(frame.camera_id)
        if gate is None or gate.min_area != cam.motion.min_area or gate.detect_every_s != cam.motion.detect_every_s:
            gate = self.gates[frame.camera_id] = DetectGate(cam.motion.min_area, cam.motion.detect_every_s,
                                                            self.hold_s)
        return gate.reason(frame.change, frame.captured_at)

    def wants_detection(self, frame: Frame) -> bool:
        """Idle gating: whether the detector must run on ``frame`` (``detection_reason`` is not None)."""
        return self.detection_reason(frame) is not None

    def keep(self, frame: Frame, dets: Detections) -> Detections:
        """The faces of ``dets`` that count: box centre inside the camera's zone, at least ``min_face_px`` wide."""
        if frame.camera is not None and frame.camera.zone is not None and len(dets):
            inside = in_zone(dets, frame.camera.zone, frame.image.shape[1], frame.image.shape[0])
            self.stats.outside_zone += int((~inside).sum())
            dets = dets[inside]
        if self.min_face_px and len(dets):
            wide = (dets.boxes[:, 2] - dets.boxes[:, 0]) >= self.min_face_px
            self.stats.small_faces += int((~wide).sum())
            dets = dets[wide]
        return dets

    def analyse(self, frames: list[Frame]) -> list[FrameResult]:
        """Detect, filter, plan, align and embed (and score liveness) for ``frames``: one detection batch, one
        embedding batch. Runs on the caller's thread (public for the benchmark)."""
        images = [f.image for f in frames]
        dets_list = self.pipeline.detect(images)
        kept, plans = [], []
        for frame, d in zip(frames, dets_list, strict=True):
            d = self.keep(frame, d)
            gate = self.gates.get(frame.camera_id)
            if gate is not None:
                gate.detected(frame.captured_at, len(d))
            if self.planner is not None:
                ids, embed = self.planner.plan(frame.camera_id, d, frame.captured_at)
                d.data["track_ids"] = np.asarray(ids, np.int64)
                d.data["embedded"] = np.asarray(embed, bool)
            plans.append(d.data.get("embedded", np.ones(len(d), bool)))
            kept.append(d)
        embeddings = self.pipeline.embed_many(images, [d[m] for d, m in zip(kept, plans, strict=True)])
        live_model = self.pipeline.liveness if self.liveness else None
        done = time.monotonic()
        out = []
        st = self.stats
        st.detected += len(frames)
        for frame, d, m, emb in zip(frames, kept, plans, embeddings, strict=True):
            st.faces += len(d)
            st.embedded += int(m.sum())
            data = dict(d.data)
            data["embeddings"] = _scatter(np.asarray(emb, np.float32), m, self.pipeline.embedding_size)
            if live_model is not None:
                live = live_model.score(frame.image, d[m]) if m.any() else np.zeros(0, np.float32)
                data["liveness"] = _scatter(np.asarray(live, np.float32), m)
            out.append(FrameResult(frame, Detections(d.boxes, d.scores, d.landmarks, data), done))
        return out


def _scatter(rows: np.ndarray, mask: np.ndarray, width: int | None = None) -> np.ndarray:
    """Rows computed for the faces of ``mask`` (M = mask.sum()) spread back to all N faces, NaN elsewhere."""
    if mask.all():
        return rows
    shape = (len(mask),) if width is None else (len(mask), width)
    out = np.full(shape, np.nan, np.float32)
    out[mask] = rows
    return out
