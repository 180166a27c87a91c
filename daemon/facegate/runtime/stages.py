"""The daemon's stages, wired: ``build_stages`` builds each stage from its own config section (``from_config`` beside
it) and hands it its neighbours, in start-up order; ``Stages`` holds them for ``Service`` (``runtime/service.py``),
which only runs them.

Flow: capture (``CaptureStage``) → inference (``InferenceStage``, which asks the decision stage which faces to
embed: ``DecisionEngine.plan``) → decision (``DecisionEngine.on_result``: tracking, voting, gallery search via
``LiveGallery``, rules) → ``EventEmitter``, whose sinks run in order: audit log (durable first), MQTT, stdout,
passages, statistics, Prometheus metrics, snapshots. Work a stage wants done periodically on the service's thread is
a ``Periodic`` (gallery refresh, Home Assistant states, snapshot purge).

Start-up order (any failure raises a ``FacegateError`` naming the part): state folder → signing key → audit log →
model pack (the execution provider obtained is logged) → gallery → MQTT broker (when configured; the first
connection must succeed within ``mqtt.connect_timeout_s``) → rules, sinks and decision engine → cameras and
inference (not started).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facegate.config import CameraConfig, Config
from facegate.config_checks import default_state_dir
from facegate.errors import ConfigError
from facegate.fileio import private_dir
from facegate.runtime.announce import HomeAssistantDiscovery
from facegate.runtime.audit import AuditLog
from facegate.runtime.capture import CaptureStage, all_cameras
from facegate.runtime.decision import DecisionEngine
from facegate.runtime.events import EventEmitter, Sink, StdoutSink, signer_from_config
from facegate.runtime.health import Health
from facegate.runtime.inference import InferenceStage, load_pipeline
from facegate.runtime.matching import LiveGallery
from facegate.runtime.metrics import DaemonMetrics
from facegate.runtime.passages import PassageTracker
from facegate.runtime.rules import AccessRules
from facegate.runtime.snapshots import SnapshotSink
from facegate.runtime.state_file import StateFile
from facegate.runtime.stats import DecisionStats

log = logging.getLogger(__name__)


def state_dir(config: Config) -> Path:
    """Folder for default files (``config_checks.default_state_dir``), created when missing 0700 whatever the umask
    (it holds the signing key and the audit log; ``fileio.private_dir``). Raises ``ConfigError``."""
    path = default_state_dir(config)
    try:
        private_dir(path)
    except OSError as exc:
        raise ConfigError(f"service.state_dir {path}: cannot create ({exc.strerror})") from None
    return path


Closer = tuple[str, Callable[[], Any]]


@dataclass
class Periodic:
    """Work a stage wants done every ``every_s`` seconds on the service's thread (``fn`` must not block long)."""

    name: str
    every_s: float
    fn: Callable[[], Any]
    last: float = 0.0


@dataclass
class Stages:
    """The running parts, built in order by ``build_stages`` (or injected by a test); ``publisher`` is None
    without a broker, ``metrics`` with ``metrics.enabled: false``, ``snapshots`` unless snapshot retention is on,
    ``state_file`` in an injected set that has none; ``closers`` are closed in order when the service shuts down;
    ``periodic`` is the stages' work on the service's thread; ``health`` is the registry the stages report to."""

    capture: CaptureStage
    inference: InferenceStage
    engine: DecisionEngine
    emitter: EventEmitter
    gallery: LiveGallery
    stats: DecisionStats
    publisher: Any = None
    closers: list[Closer] = field(default_factory=list)
    periodic: list[Periodic] = field(default_factory=list)
    announcer: HomeAssistantDiscovery | None = None
    health: Health = field(default_factory=Health)
    metrics: DaemonMetrics | None = None
    snapshots: SnapshotSink | None = None
    state_file: StateFile | None = None

    def reconfigure(self, config: Config, extra_cameras: list[CameraConfig]) -> list[str]:
        """SIGHUP: hand each stage its section of ``config``: doors (``AccessRules``, grant history kept), voting,
        threshold and margins (``DecisionEngine``), grant lifetime (``EventEmitter``), cameras (``CaptureStage``),
        the Home Assistant entities. Returns the ids of the cameras that changed."""
        self.engine.rules.update(AccessRules.from_config(config))
        self.engine.reconfigure(config, all_cameras(config, extra_cameras), self.inference.pipeline.manifest)
        self.emitter.reconfigure(config)
        changed = self.capture.reconfigure(config, extra_cameras)
        if self.announcer is not None:
            self.announcer.reconfigure(list(self.engine.rules.doors))
        return changed


def build_stages(config: Config, extra_cameras: list[CameraConfig], opened: list[Closer]) -> Stages:
    """Every stage of ``config``, wired, not started. Each part that must be closed is put on ``opened`` as soon
    as it is open, in closing order (MQTT flushed first, the audit log and gallery after), so a failure half-way
    closes what it opened."""
    health = Health()
    state = state_dir(config)
    signer = signer_from_config(config, state)
    audit = AuditLog.from_config(config, state, health=health)
    opened.append(("audit", audit.close))
    pipeline = load_pipeline(config)
    gallery = LiveGallery.from_config(config, pipeline, health=health)
    opened.append(("gallery", gallery.close))
    publisher = None
    if config.mqtt.host is None:
        log.warning("event=no_broker note=no_door_can_be_driven decisions=audit_log_and_stdout_only "
                    "fix='set mqtt.host in the config'")
    else:
        from facegate.runtime.mqtt import EventPublisher

        publisher = EventPublisher.from_config(config.mqtt, health=health)
        publisher.start(config.mqtt.connect_timeout_s, require=True)
        opened.insert(0, ("mqtt", lambda: publisher.stop(timeout_s=config.service.stop_timeout_s)))
    rules = AccessRules.from_config(config)
    passages = PassageTracker.from_config(config, rules, publisher, event_kid=getattr(signer, "kid", None))
    stats = DecisionStats()
    metrics = DaemonMetrics.from_config(config)
    snapshots = SnapshotSink.from_config(config, state)
    sinks: list[Sink] = [audit] + ([publisher] if publisher else [])
    sinks += [StdoutSink()] if config.service.stdout_events else []
    sinks += [passages] if passages else []
    metrics = DaemonMetrics.from_config(config)
    snapshots = SnapshotSink.from_config(config, state)
    sinks += [stats] + ([metrics.sink] if metrics else []) + ([snapshots] if snapshots else [])
    emitter = EventEmitter.from_config(config, signer=signer, sinks=sinks)
    cameras = all_cameras(config, extra_cameras)
    engine = DecisionEngine.from_config(config, pipeline=pipeline, search=gallery.search, rules=rules,
                                        cameras=cameras, sink=emitter.emit, health=health,
                                        lookalikes=gallery.lookalikes, templates=gallery.templates)
    gallery.on_change = engine.gallery_changed  # the threshold follows the gallery's size
    gallery.on_replace = engine.gallery_replaced  # another gallery: its ids are other people
    engine.keep_crops = snapshots is not None
    capture = CaptureStage(cameras, health=health)
    inference = InferenceStage.from_config(config, pipeline, capture.slots, engine.on_result, health=health,
                                           planner=engine)
    periodic = [Periodic("gallery_refresh", config.gallery.refresh_s, gallery.refresh)] \
        if config.gallery.refresh_s else []
    announcer = HomeAssistantDiscovery.from_config(config, publisher, capture, list(rules.doors))
    if announcer is not None:
        periodic.append(Periodic("homeassistant_states", config.homeassistant.state_every_s, announcer.publish_states))
    if snapshots is not None:
        periodic.append(Periodic("snapshots_purge", 1.0, snapshots.purge_if_due))
    stages = Stages(capture, inference, engine, emitter, gallery, stats, publisher, opened, periodic, announcer,
                    health, metrics=metrics, snapshots=snapshots, state_file=StateFile.from_config(config, state))
    if metrics is not None:
        metrics.attach(stages)
        if metrics.start():
            opened.insert(0, ("metrics", metrics.stop))
    return stages
