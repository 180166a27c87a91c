"""Inference stage: one thread owns the models and turns the cameras' newest frames into faces with embeddings.

Each cycle takes the newest unseen frame of every camera (``FrameSlots.take_all``: frames that arrived while the
previous cycle ran were already replaced, so the stage never falls behind), runs detection on all of them as one
batch (at most ``max_batch`` frames per run), drops faces narrower than ``min_face_px`` (too small for a reliable
comparison score), aligns every remaining face of every frame and runs the recogniser on all of them as one batch
(and liveness when enabled), then hands one ``FrameResult`` per frame to ``on_result`` in capture order.

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
from typing import TYPE_CHECKING

import numpy as np

from facegate.detections import Detections
from facegate.pipeline import FacePipeline
from facegate.runtime.capture import Frame, FrameSlots
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


@dataclass(frozen=True, slots=True)
class FrameResult:
    """The faces of one frame: ``dets`` with ``data["embeddings"]`` (N×D float32) and, with liveness,
    ``data["liveness"]`` (N float32, higher = live); ``done_at`` monotonic s when inference finished."""

    frame: Frame
    dets: Detections
    done_at: float


@dataclass
class InferenceStats:
    """Counters since start: cycles, frames, faces, errors and the last cycle's duration (s)."""

    cycles: int = 0
    frames: int = 0
    faces: int = 0
    small_faces: int = 0
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
    None); ``failure_watchdog_s`` and ``stuck_cycle_s`` (seconds, see ``healthy``).
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
        self.stats = InferenceStats()
        #: Called after each batch with (frames in it, seconds it took) on the inference thread (the metrics'
        #: histograms); must be fast and must not raise.
        self.batch_observers: list[Callable[[int, float], None]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._busy_since: float | None = None

    @classmethod
    def from_config(cls, config: Config, pipeline: FacePipeline, slots: FrameSlots,
                    on_result: Callable[[FrameResult], None], health: Health | None = None) -> InferenceStage:
        """The stage for ``pipeline`` (``load_pipeline``) with the ``inference:`` batch limit, the decision's
        ``min_face_px``, ``liveness.enabled`` and ``service.failure_watchdog_s``; results go to ``on_result`` (the
        decision stage), failures to ``health``."""
        return cls(pipeline, slots, on_result, max_batch=config.inference.max_batch,
                   min_face_px=config.decision.min_face_px, liveness=config.liveness.enabled, health=health,
                   failure_watchdog_s=config.service.failure_watchdog_s)

    def start(self) -> None:
        log.info("event=inference_start providers=%s max_batch=%d liveness=%s",
                 ",".join(self.pipeline.providers) or "?", self.max_batch, self.liveness)
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
        for i in range(0, len(frames), self.max_batch):
            chunk = frames[i : i + self.max_batch]
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
            st.frames += len(chunk)
            st.faces += sum(len(r.dets) for r in results)
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

    def analyse(self, frames: list[Frame]) -> list[FrameResult]:
        """Detect, filter, align and embed (and score liveness) for ``frames``: one detection batch, one
        embedding batch. Runs on the caller's thread (public for the benchmark)."""
        images = [f.image for f in frames]
        dets_list = self.pipeline.detect(images)
        kept = []
        for d in dets_list:
            if self.min_face_px and len(d):
                wide = (d.boxes[:, 2] - d.boxes[:, 0]) >= self.min_face_px
                self.stats.small_faces += int((~wide).sum())
                d = d[wide]
            kept.append(d)
        embeddings = self.pipeline.embed_many(images, kept)
        live_model = self.pipeline.liveness if self.liveness else None
        done = time.monotonic()
        out = []
        for frame, d, emb in zip(frames, kept, embeddings, strict=True):
            data = dict(d.data)
            data["embeddings"] = np.asarray(emb, np.float32)
            if live_model is not None:
                data["liveness"] = live_model.score(frame.image, d) if len(d) else np.zeros(0, np.float32)
            out.append(FrameResult(frame, Detections(d.boxes, d.scores, d.landmarks, data), done))
        return out
