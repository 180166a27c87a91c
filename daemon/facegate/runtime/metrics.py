"""Prometheus metrics of the running daemon, served at ``http://<metrics.listen>:<metrics.port>/metrics``.

Three parts on one private ``CollectorRegistry`` (never the library's global one, so two services in one process —
tests — do not collide):

* ``MetricsSink``, a sink of the emitter (after the audit log and the MQTT publisher): decisions by type, reason and
  door, and two latency histograms per door — capture → decision (``decided_at − captured_at``, wall clock) and
  capture → publish (the deciding frame's monotonic capture time to this sink, i.e. after the audit record is
  durable and the event is queued for the broker: the daemon's own share of the capture → door latency).
* inference histograms fed by ``InferenceStage.batch_observers``: frames per batch and seconds per batch;
* ``StagesCollector``, read at scrape time from the stages (nothing is computed on the decision path): per camera
  up/down, frames/s, frames, dropped frames and failures; inference frames, faces and model failures; MQTT
  connection, queue depth, sent, dropped and expired grants; gallery size and staleness; pack, metric, threshold and
  execution providers; the health state when a ``Health`` registry is present.

Names follow the Prometheus naming guide (https://prometheus.io/docs/practices/naming/): ``facegate_`` prefix, base
units (seconds), ``_total`` for counters. Labels carry ids from the config (cameras, doors), never person names.
The HTTP server is prometheus-client's own (a thread of the daemon); a port that cannot be bound is logged and the
daemon goes on: monitoring never stops a door.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from facegate.config import Config
    from facegate.runtime.events import SignedEvent

log = logging.getLogger(__name__)

#: Latency buckets (s): the door budget is a few hundred ms; 0.05 s steps there, coarser beyond.
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)
#: Inference batch duration buckets (s).
BATCH_SECONDS_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)
#: Frames per inference batch (one per camera, at most ``inference.max_batch``).
BATCH_FRAMES_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
#: A camera whose last frame is older than this (s) counts as down even while its reader says "reading".
CAMERA_UP_MAX_AGE_S = 5.0


class MetricsSink:
    """Sink: decision counters and latency histograms (see the module docstring). Thread-safe (the client's
    metrics are)."""

    name = "metrics"
    critical = False

    def __init__(self, registry: CollectorRegistry, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self.decisions = Counter("facegate_decisions", "Door decisions by type (grant, deny, unknown), deny reason "
                                 "and door", ["type", "reason", "door"], registry=registry)
        self.to_decision = Histogram("facegate_capture_to_decision_seconds", "Capture of the deciding frame to the "
                                     "decision (wall clock)", ["door"], buckets=LATENCY_BUCKETS, registry=registry)
        self.to_publish = Histogram("facegate_capture_to_publish_seconds", "Capture of the deciding frame to the "
                                    "event being audited and queued for the broker", ["door"],
                                    buckets=LATENCY_BUCKETS, registry=registry)

    def emit(self, event: SignedEvent) -> None:
        d = event.decision
        self.decisions.labels(d.type, d.reason or "", d.door).inc()
        self.to_decision.labels(d.door).observe(max(0.0, (d.decided_at - d.captured_at).total_seconds()))
        if d.captured_mono is not None:
            self.to_publish.labels(d.door).observe(max(0.0, self._clock() - d.captured_mono))


class BatchMetrics:
    """Histograms of inference batches; ``observe`` is an ``InferenceStage.batch_observers`` entry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.frames = Histogram("facegate_inference_batch_frames", "Frames per inference batch",
                                buckets=BATCH_FRAMES_BUCKETS, registry=registry)
        self.seconds = Histogram("facegate_inference_batch_seconds", "Duration of one inference batch (detection, "
                                 "embedding, liveness)", buckets=BATCH_SECONDS_BUCKETS, registry=registry)

    def observe(self, frames: int, seconds: float) -> None:
        self.frames.observe(frames)
        self.seconds.observe(seconds)


class StagesCollector(Collector):
    """Reads the running stages at each scrape. ``stages`` is the service's ``Stages`` (duck-typed: capture,
    inference, engine, gallery, publisher and an optional ``health``); a part that fails to read is left out of
    that scrape and logged at debug level, never an error of the endpoint."""

    def __init__(self, stages: Any) -> None:
        self.stages = stages

    def collect(self) -> Iterator[Metric]:
        for part in (self._cameras, self._inference, self._mqtt, self._gallery, self._pack, self._health):
            try:
                yield from part()
            except Exception as exc:  # a stage being rebuilt (SIGHUP) must not fail the whole scrape
                log.debug("event=metrics_part_failed part=%s error=%r", part.__name__, str(exc))

    def _cameras(self) -> Iterator[Metric]:
        snap = self.stages.capture.snapshot()
        up = GaugeMetricFamily("facegate_camera_up", "1 while the camera delivers frames", labels=["camera"])
        fps = GaugeMetricFamily("facegate_camera_fps", "Frames per second delivered (moving average)",
                                labels=["camera"])
        frames = CounterMetricFamily("facegate_camera_frames", "Frames delivered", labels=["camera"])
        dropped = CounterMetricFamily("facegate_camera_dropped_frames", "Frames replaced before inference took them "
                                      "(inference slower than the camera)", labels=["camera"])
        failures = CounterMetricFamily("facegate_camera_failures", "Open or read failures", labels=["camera"])
        for cid, c in snap.items():
            age = c.get("last_frame_age_s")
            live = c.get("state") == "reading" and age is not None and age <= CAMERA_UP_MAX_AGE_S
            up.add_metric([cid], 1.0 if live else 0.0)
            fps.add_metric([cid], float(c.get("fps") or 0.0))
            frames.add_metric([cid], float(c.get("frames") or 0))
            dropped.add_metric([cid], float(c.get("dropped") or 0))
            failures.add_metric([cid], float(c.get("failures") or 0))
        yield from (up, fps, frames, dropped, failures)

    def _inference(self) -> Iterator[Metric]:
        st = self.stages.inference.stats
        yield CounterMetricFamily("facegate_inference_frames", "Frames through inference", value=st.frames)
        yield CounterMetricFamily("facegate_inference_faces", "Faces detected and embedded", value=st.faces)
        yield CounterMetricFamily("facegate_model_failures", "Inference batches or decision steps that raised "
                                  "(those frames decided nothing)", value=st.errors)
        engine = self.stages.engine.stats
        yield CounterMetricFamily("facegate_stale_frames", "Frames dropped as older than decision.max_frame_age_s",
                                  value=engine.get("stale_frames", 0))

    def _mqtt(self) -> Iterator[Metric]:
        pub = self.stages.publisher
        if pub is None:
            return
        yield GaugeMetricFamily("facegate_mqtt_connected", "1 while connected to the broker",
                                value=1.0 if pub.connected.is_set() else 0.0)
        yield GaugeMetricFamily("facegate_mqtt_queue_depth", "Events waiting to be handed to the broker",
                                value=pub.queued)
        stats = dict(pub.stats)
        yield CounterMetricFamily("facegate_mqtt_sent", "Events acknowledged by the broker", value=stats.get("sent", 0))
        yield CounterMetricFamily("facegate_mqtt_expired_grants", "Grants never sent because they expired while "
                                  "queued or in flight", value=stats.get("expired", 0))
        yield CounterMetricFamily("facegate_mqtt_dropped", "Events dropped because the queue was full",
                                  value=stats.get("dropped", 0))

    def _gallery(self) -> Iterator[Metric]:
        g = self.stages.gallery
        yield GaugeMetricFamily("facegate_gallery_identities", "Identities the daemon matches against",
                                value=g.identities)
        yield GaugeMetricFamily("facegate_gallery_stale", "1 while the gallery cannot be refreshed (no grants)",
                                value=1.0 if g.stale else 0.0)

    def _pack(self) -> Iterator[Metric]:
        pipeline = self.stages.inference.pipeline
        scorer = self.stages.engine.scorer
        info = InfoMetricFamily("facegate_pack", "Model pack and comparison metric in force")
        info.add_metric([], {"pack": str(pipeline.manifest.name), "metric": str(scorer.metric)})
        yield info
        yield GaugeMetricFamily("facegate_decision_threshold", "Comparison-score threshold in force",
                                value=float(scorer.threshold))
        providers = GaugeMetricFamily("facegate_execution_provider", "ONNX Runtime execution providers in use "
                                      "(1 per provider, in priority order as label 'rank')",
                                      labels=["provider", "rank"])
        for rank, name in enumerate(pipeline.providers):
            providers.add_metric([str(name), str(rank)], 1.0)
        yield providers

    def _health(self) -> Iterator[Metric]:
        health = getattr(self.stages, "health", None)
        if health is None or not hasattr(health, "snapshot"):
            return
        state = str(health.snapshot().get("state", "degraded"))
        yield GaugeMetricFamily("facegate_health_ok", "1 when the daemon's health state is ok",
                                value=1.0 if state == "ok" else 0.0)


class DaemonMetrics:
    """The daemon's registry, sink, batch histograms and HTTP server. ``attach(stages)`` adds the stages' collector
    and the batch observer; ``start`` serves; ``stop`` shuts the server down (idempotent)."""

    def __init__(self, listen: str = "127.0.0.1", port: int = 9108) -> None:
        self.listen, self.port = listen, port
        self.registry = CollectorRegistry(auto_describe=True)
        self.sink = MetricsSink(self.registry)
        self.batches = BatchMetrics(self.registry)
        self._server: Any = None
        self._thread: Any = None

    @classmethod
    def from_config(cls, config: Config) -> DaemonMetrics | None:
        """The metrics of ``config.metrics`` (None when disabled)."""
        m = config.metrics
        return cls(m.listen, m.port) if m.enabled else None

    def attach(self, stages: Any) -> None:
        self.registry.register(StagesCollector(stages))
        stages.inference.batch_observers.append(self.batches.observe)

    def start(self) -> bool:
        """Serve ``/metrics``; returns False (logged as an error) when the address cannot be bound."""
        try:
            self._server, self._thread = start_http_server(self.port, self.listen, registry=self.registry)
        except OSError as exc:
            log.error("event=metrics_unavailable listen=%s port=%d error=%r note=decisions_unaffected "
                      "fix='free the port or set metrics.port'", self.listen, self.port, exc.strerror or str(exc))
            return False
        self.port = self._server.server_address[1]  # port 0 = any free one (tests)
        log.info("event=metrics_serving url=http://%s:%d/metrics", self.listen, self.port)
        return True

    @property
    def url(self) -> str | None:
        """``http://listen:port/metrics`` while serving, else None."""
        return None if self._server is None else f"http://{self.listen}:{self.port}/metrics"

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
