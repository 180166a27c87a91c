"""``facegate run``: build the stages from a validated ``Config``, run them, and talk to systemd.

Start-up order (any failure raises a ``FacegateError`` naming the part, before systemd hears READY):
state folder → signing key → audit log → model pack (the execution provider obtained is logged) → gallery →
access rules and decision engine → MQTT broker (when configured; the first connection must succeed within
``mqtt.connect_timeout_s``) → cameras (READY once every camera delivered a frame, or after
``service.ready_timeout_s`` when at least one did: a dead camera does not stop the others) → ``READY=1``.

While running, the main thread pings the systemd watchdog (``WATCHDOG=1`` every ``WATCHDOG_USEC``/2) only while
the inference thread is alive and not stuck, handles SIGTERM/SIGINT (stop within ``service.stop_timeout_s`` plus
the MQTT flush) and SIGHUP (re-read the gallery and the config file: decision thresholds, doors and cameras take
effect at once; pack, MQTT, audit and signing changes need a restart and are logged as such; a file that fails
any check ``facegate config check`` makes is refused whole, each problem logged with its key, and the running
config kept). Every ``gallery.refresh_s`` seconds the main thread also follows the gallery incrementally, so an
enrolment or an erasure by ``facegate enroll``/``facegate gallery remove`` takes effect without a signal. When
every camera is a non-looping file that has ended, the service drains the last frames and exits 0 (demo and
tests).

Every decision goes through ``EventEmitter`` (audit log first, fsync'd, then MQTT) and, with
``service.stdout_events``, one JSON line on stdout. Without a broker, a warning says that no door can be driven.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import secrets
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from facegate.config import CameraConfig, Config, DecisionConfig
from facegate.config_checks import check_file, default_state_dir
from facegate.errors import ConfigError, FacegateError, VideoError
from facegate.gallery.location import default_gallery_path
from facegate.runtime.audit import AuditLog
from facegate.runtime.capture import CaptureStage
from facegate.runtime.decision import Decision, DecisionEngine, DecisionPolicy
from facegate.runtime.events import EventEmitter
from facegate.runtime.inference import FrameResult, InferenceStage
from facegate.runtime.rules import AccessRules, Door
from facegate.scoring import Candidate, Scorer, liveness_threshold
from facegate.signing import load_signing_key

log = logging.getLogger(__name__)

#: Door used when the config defines no doors at all (demo): every enrolled identity, any time.
DEFAULT_DOOR = "door"
#: Inference counts as stuck (no watchdog ping) when one cycle has been running longer than this (s).
STUCK_CYCLE_S = 30.0


def state_dir(config: Config) -> Path:
    """Folder for default files (``config_checks.default_state_dir``), created when missing. Raises ``ConfigError``."""
    path = default_state_dir(config)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"service.state_dir {path}: cannot create ({exc.strerror})") from None
    return path


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


def cameras_from_args(specs: list[str], loop: bool = False, first: int = 1) -> list[CameraConfig]:
    """``--camera`` values → cameras ``cam<first>``…: a URL (has ``://``), a USB index (digits), a device path
    (``/dev/…``) or a video file."""
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


def policy_from(cfg: DecisionConfig, liveness_threshold: float | None, liveness_frames: int) -> DecisionPolicy:
    """The decision engine's plain parameters from the config section (``liveness_frames`` is capped at ``n``
    when liveness is off, where it is unused)."""
    if liveness_threshold is None:
        liveness_frames = min(liveness_frames, cfg.n)
    return DecisionPolicy(
        k=cfg.k, n=cfg.n, margin=cfg.margin, max_frame_age_s=cfg.max_frame_age_s, unknown_after_s=cfg.unknown_after_s,
        liveness_threshold=liveness_threshold, liveness_frames=liveness_frames, repeat_after_s=cfg.repeat_after_s,
        track_timeout_s=cfg.track_max_age_s, track_min_affinity=cfg.track_min_affinity,
    )


def doors_from(config: Config) -> list[Door]:
    """``rules.Door`` objects from ``doors:``; with no doors configured, one permissive ``DEFAULT_DOOR``."""
    if not config.doors:
        return [Door(DEFAULT_DOOR)]
    out = []
    for d in config.doors:
        schedule: dict[str, list[str]] | None = None
        tz = "UTC"
        if d.schedule is not None:
            tz = d.schedule.timezone
            schedule = {}
            for w in d.schedule.windows:
                # rules.WeeklySchedule takes "mon,wed" day keys and "HH:MM-HH:MM" windows
                schedule.setdefault(",".join(w.days), []).append(f"{w.start:%H:%M}-{w.end:%H:%M}")
        out.append(Door(
            d.id, allowed_groups=None if d.allowed_groups is None else frozenset(d.allowed_groups),
            schedule=schedule, timezone=tz, cooldown_s=d.cooldown_s,
            anti_passback_s=d.anti_passback_s if d.anti_passback else 0.0, exit=d.exit,
        ))
    return out


def camera_doors(config: Config, cameras: list[CameraConfig]) -> dict[str, str]:
    """Camera id → door id (``Config.door_of``; ``DEFAULT_DOOR`` when no doors are configured)."""
    return {c.id: (c.door or config.door_of(c.id)) if config.doors else DEFAULT_DOOR for c in cameras}


def _read_password(config: Config) -> str | None:
    m = config.mqtt
    if m.password_file:
        try:
            return Path(m.password_file).read_text(encoding="utf-8").splitlines()[0].strip()
        except (OSError, IndexError) as exc:
            raise ConfigError(f"mqtt.password_file {m.password_file}: cannot read a password ({exc})") from None
    if m.password_env:
        value = os.environ.get(m.password_env)
        if value is None:
            raise ConfigError(f"mqtt.password_env: environment variable {m.password_env} is not set")
        return value
    return None


class Service:
    """The running daemon. ``run()`` blocks until SIGTERM/SIGINT, a fatal error, or (files only) the end."""

    def __init__(self, config: Config, *, config_path: Path | None = None,
                 extra_cameras: list[CameraConfig] | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.extra_cameras = list(extra_cameras or [])
        self.cameras = list(config.cameras) + self.extra_cameras
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._decision_lock = threading.Lock()
        self._out_lock = threading.Lock()
        self.decisions: dict[str, int] = {"grant": 0, "deny": 0, "unknown": 0}
        self.publisher: Any = None
        self._stdout_closed = False
        self._gallery_stale = False  # set while the gallery cannot be refreshed: search answers nothing (fail closed)
        self.notifier: Any = None
        # per decision (s): capture → inference done, capture → audited and queued for MQTT; last 1000 kept
        self.latencies: collections.deque[tuple[float, float]] = collections.deque(maxlen=1000)

    # ------------------------------------------------------------------------------------------- start-up
    def build(self) -> None:
        """Everything up to, not including, starting the cameras."""
        from facegate.gallery import Gallery, PackBinding
        from facegate.pipeline import FacePipeline

        cfg = self.config
        if not self.cameras:
            raise ConfigError("no cameras: add cameras: to the config or give --camera URL_OR_FILE")
        ids = [c.id for c in self.cameras]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"camera ids must be unique, got {', '.join(ids)}")
        state = state_dir(cfg)
        self.state = state
        key_path = Path(cfg.signing.key_file) if cfg.signing.key_file else state / "signing.key"
        if cfg.signing.key_file is None and not key_path.exists():
            old = os.umask(0o077)
            try:
                key_path.write_text(secrets.token_hex(32) + "\n")
            finally:
                os.umask(old)
            log.warning("event=signing_key_created path=%s note=give_this_key_to_the_door_controllers", key_path)
        self.signing_key = load_signing_key(key_path)
        self.audit = AuditLog(cfg.audit.path or state / "audit.jsonl")
        log.info("event=audit_log path=%s", self.audit.path)

        t0 = time.monotonic()
        threads = cfg.inference.threads or inference_threads()
        self.pipeline = FacePipeline.load(cfg.pack, providers=cfg.inference.providers, threads=threads,
                                          with_liveness=cfg.liveness.enabled)
        log.info("event=models_loaded pack=%s providers=%s threads=%d metric=%s threshold=%s load_s=%.2f",
                 self.pipeline.manifest.name, ",".join(self.pipeline.providers), threads, self.pipeline.metric,
                 self.pipeline.threshold, time.monotonic() - t0)
        if cfg.liveness.enabled and self.pipeline.liveness is None:
            raise ConfigError(f"liveness.enabled is true but pack {self.pipeline.manifest.name!r} has no liveness "
                              "model; choose a pack with one or set liveness.enabled: false")
        binding = PackBinding(self.pipeline.manifest.name, self.pipeline.embedding_size, self.pipeline.metric)
        self.gallery = Gallery(Path(cfg.gallery.path) if cfg.gallery.path else default_gallery_path(), pack=binding)
        stats = self.gallery.stats()
        log.info("event=gallery_opened folder=%s identities=%s templates=%s", stats["folder"], stats["identities"],
                 stats["templates"])
        if not stats["identities"]:
            log.warning("event=gallery_empty folder=%s note=every_face_will_be_unknown", stats["folder"])
        self._identities = self._identity_names()

        self.rules = AccessRules(doors_from(cfg))
        if not cfg.doors:
            log.warning("event=no_doors_configured door=%s note=every_enrolled_identity_is_admitted_at_any_time",
                        DEFAULT_DOOR)
        live_t = liveness_threshold(self.pipeline.manifest, cfg.liveness.threshold) if cfg.liveness.enabled else None
        self.engine = DecisionEngine(
            search=self._search, scorer=Scorer.resolve(self.pipeline.manifest, cfg.decision.threshold),
            camera_doors=camera_doors(cfg, self.cameras), rules=self.rules,
            policy=policy_from(cfg.decision, live_t, cfg.liveness.frames),
        )
        for cid, door in self.engine.camera_doors.items():
            if door not in self.rules.doors:
                log.error("event=camera_door_has_no_rules camera=%s door=%s note=never_grants fix='add the door "
                          "to doors: or set the camera's door'", cid, door)
        self._connect_broker()
        self.emitter = EventEmitter(signing_key=self.signing_key, audit=self.audit, publisher=self.publisher,
                                    topic_prefix=cfg.mqtt.topic_prefix, grant_ttl_s=cfg.decision.grant_ttl_s)
        self.capture = CaptureStage(self.cameras)
        self.inference = InferenceStage(self.pipeline, self.capture.slots, self._on_result,
                                        max_batch=cfg.inference.max_batch, min_face_px=cfg.decision.min_face_px,
                                        liveness=cfg.liveness.enabled)

    def _connect_broker(self) -> None:
        m = self.config.mqtt
        if m.host is None:
            log.warning("event=no_broker note=no_door_can_be_driven decisions=audit_log_and_stdout_only "
                        "fix='set mqtt.host in the config'")
            return
        from facegate.runtime.mqtt import EventPublisher

        tls = m.tls
        self.publisher = EventPublisher(
            host=m.host, port=m.port, client_id=m.client_id, username=m.username, password=_read_password(self.config),
            tls=tls is not None, ca_file=tls.ca if tls else None, cert_file=tls.cert if tls else None,
            key_file=tls.key if tls else None, tls_insecure=bool(tls and tls.insecure), topic_prefix=m.topic_prefix,
            qos=m.qos, keepalive_s=m.keepalive_s, queue_max=m.queue_max,
        )
        self.publisher.start(m.connect_timeout_s, require=True)

    def _identity_names(self) -> dict[Any, str]:
        return {i.id: i.name for i in self.gallery.identities()}

    def refresh_gallery(self) -> bool:
        """Follow enrolments and erasures made by other processes (``Gallery.refresh``: incremental, searches
        continue meanwhile, the index has its own lock). Logs each identity added or removed. Returns True when
        the gallery changed; a failure is logged and retried at the next period."""
        try:
            changed = self.gallery.refresh()
            if self._gallery_stale:
                log.warning("event=gallery_refresh_recovered note=matching_resumed")
            self._gallery_stale = False
            if not changed:
                return False
            now = self._identity_names()
        except Exception as exc:  # a locked or damaged gallery must not stop the daemon; said loudly, fail closed
            if not self._gallery_stale:
                log.error("event=gallery_refresh_failed error=%r note=no_grants_until_it_recovers", str(exc))
            self._gallery_stale = True
            return False
        before = self._identities
        for iid in sorted(set(now) - set(before)):
            log.info("event=gallery_identity_added id=%s name=%r", iid, now[iid])
        for iid in sorted(set(before) - set(now)):
            log.info("event=gallery_identity_removed id=%s name=%r", iid, before[iid])
        self._identities = now
        log.info("event=gallery_reloaded identities=%d", len(now))
        return True

    def _search(self, embeddings: Any) -> list[list[Candidate]]:
        """The decision stage's 1:N search. Fail closed: while the gallery cannot be refreshed (so an erasure made
        by another process may not be applied yet) nobody matches, every face stays unknown and no door opens."""
        if self._gallery_stale:
            return [[] for _ in range(len(embeddings))]
        return self.gallery.search(embeddings, 5)

    def wait_for_cameras(self) -> list[str]:
        """Block until every camera delivered a frame or ``ready_timeout_s`` passed; returns the live ones.
        Raises ``VideoError`` when none delivered."""
        deadline = time.monotonic() + self.config.service.ready_timeout_s
        while time.monotonic() < deadline and not self._stop.is_set():
            live = self.capture.delivering()
            unusable = self.capture.unusable()
            if len(live) + len(unusable) == len(self.cameras):  # a missing device or unreadable file: no use waiting
                break
            time.sleep(0.05)
        live = self.capture.delivering()
        dead = {cid: c.stats.last_error or c.stats.state for cid, c in self.capture.cameras.items() if cid not in live}
        if not live and not self._stop.is_set():
            raise VideoError("no camera delivered a frame within "
                             f"{self.config.service.ready_timeout_s:g} s: " +
                             "; ".join(f"{k}: {v}" for k, v in dead.items()))
        for cid, why in dead.items():
            log.error("event=camera_not_delivering camera=%s source=%s error=%r note=others_continue",
                      cid, self.capture.cameras[cid].config.describe(), why)
        return live

    # ------------------------------------------------------------------------------------------- running
    def _on_result(self, result: FrameResult) -> None:
        f = result.frame
        with self._decision_lock:
            decisions = self.engine.process(f.camera_id, result.dets, captured_at=f.captured_at,
                                            captured_wall=f.captured_wall)
            for d in decisions:
                self._emit(d, result.done_at)

    def _emit(self, d: Decision, inferred_at: float) -> None:
        try:
            payload = self.emitter.emit(d)
        except OSError:
            log.exception("event=audit_write_failed type=%s camera=%s note=not_published", d.type, d.camera)
            return
        self.decisions[d.type] = self.decisions.get(d.type, 0) + 1
        if d.captured_mono is not None:
            self.latencies.append((inferred_at - d.captured_mono, time.monotonic() - d.captured_mono))
        if self.config.service.stdout_events and not self._stdout_closed:
            with self._out_lock:
                try:
                    sys.stdout.write(json.dumps(payload, ensure_ascii=False, sort_keys=True) + "\n")
                    sys.stdout.flush()
                except (OSError, ValueError) as exc:  # e.g. `facegate run | head`: the reader went away
                    self._stdout_closed = True
                    log.warning("event=stdout_closed error=%r note=events_still_audited_and_published", str(exc))

    def _notify(self, message: str) -> None:
        if self.notifier is None:
            import sdnotify

            self.notifier = sdnotify.SystemdNotifier()
        self.notifier.notify(message)

    def _healthy(self) -> bool:
        return self.inference.alive and self.inference.busy_for() < STUCK_CYCLE_S

    def run(self) -> int:
        """Build, start, serve until stopped. Returns the exit code (0 clean stop / files ended)."""
        old_handlers = self._install_signals()
        try:
            self._notify("STATUS=loading models, gallery and broker")
            self.build()
            self.capture.start()
            self.inference.start()
            self._notify("STATUS=waiting for cameras")
            live = self.wait_for_cameras()
            if self._stop.is_set():
                return 0
            broker = f"{self.publisher.host}:{self.publisher.port}" if self.publisher else "none"
            self._notify("READY=1")
            self._notify(f"STATUS=running cameras={len(live)}/{len(self.cameras)} broker={broker}")
            log.info("event=ready cameras=%s broker=%s", ",".join(live), broker)
            self._loop()
            return 0
        finally:
            self._notify("STOPPING=1")
            self.shutdown()
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)

    def _install_signals(self) -> dict[int, Any]:
        old: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return old
        for sig, fn in ((signal.SIGTERM, self._on_stop), (signal.SIGINT, self._on_stop), (signal.SIGHUP, self._on_hup)):
            old[sig] = signal.signal(sig, fn)
        return old

    def _on_stop(self, signum: int, frame: Any) -> None:
        log.info("event=signal signal=%s action=stop", signal.Signals(signum).name)
        self._stop.set()

    def _on_hup(self, signum: int, frame: Any) -> None:
        self._reload.set()

    def request_stop(self) -> None:
        """Stop from another thread (tests, benchmark)."""
        self._stop.set()

    def _loop(self) -> None:
        usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        ping_every = usec / 2e6 if usec else None
        last_ping = 0.0
        last_stats = last_refresh = time.monotonic()
        refresh_s = self.config.gallery.refresh_s
        idle_checks = 0  # two idle looks 0.2 s apart: a frame taken but not yet marked busy is not missed
        while not self._stop.wait(0.2):
            now = time.monotonic()
            if ping_every and now - last_ping >= ping_every:
                if self._healthy():
                    self._notify("WATCHDOG=1")
                    last_ping = now
                else:
                    log.error("event=unhealthy inference_alive=%s busy_s=%.1f note=watchdog_not_pinged",
                              self.inference.alive, self.inference.busy_for())
            if self._reload.is_set():
                self._reload.clear()
                self.reload()
            elif refresh_s and now - last_refresh >= refresh_s:
                last_refresh = now
                self.refresh_gallery()
            if now - last_stats >= 30.0:
                last_stats = now
                self.log_stats()
            idle_checks = idle_checks + 1 if self.capture.all_ended and self.inference.idle() else 0
            if idle_checks >= 2:
                log.info("event=all_cameras_ended action=exit")
                break
            if not self.inference.alive:
                raise FacegateError("the inference thread died; see the log above")

    def log_stats(self) -> None:
        inf = self.inference.stats
        lat = sorted(self.latencies)
        inferred = sorted(a for a, _ in lat)
        emitted = sorted(b for _, b in lat)

        def pct(values: list[float], q: float) -> str:
            return f"{1000 * values[min(len(values) - 1, int(q * len(values)))]:.0f}" if values else "-"

        log.info("event=stats frames=%d faces=%d cycle_ms=%.0f decisions=%s latency_ms_inferred_p50=%s "
                 "latency_ms_inferred_p99=%s latency_ms_emitted_p50=%s latency_ms_emitted_p99=%s cameras=%s mqtt=%s",
                 inf.frames, inf.faces, 1000 * inf.busy_s / max(1, inf.cycles), self.decisions,
                 pct(inferred, 0.5), pct(inferred, 0.99), pct(emitted, 0.5), pct(emitted, 0.99),
                 json.dumps(self.capture.snapshot()), dict(self.publisher.stats) if self.publisher else None)

    # ------------------------------------------------------------------------------------------- reload/stop
    def reload(self) -> None:
        """SIGHUP: gallery, then the config file (if any). A config that no longer validates is refused and the
        running one kept."""
        self._notify("RELOADING=1")
        try:
            self.refresh_gallery()
            if self.config_path is not None:
                new, issues = check_file(self.config_path, self.extra_cameras)
                if issues or new is None:
                    for issue in issues:
                        log.error("event=reload_refused key=%s line=%s error=%r note=running_config_kept",
                                  issue.path or "<top>", issue.line, issue.message)
                    return
                self._apply(new)
        except FacegateError as exc:
            log.error("event=reload_refused error=%r note=running_config_kept", str(exc))
        except Exception:
            log.exception("event=reload_failed note=running_config_kept")
        finally:
            self._notify("READY=1")

    def _apply(self, new: Config) -> None:
        old = self.config
        for section in ("pack", "mqtt", "audit", "signing", "gallery", "inference", "liveness", "service"):
            if getattr(new, section) != getattr(old, section):
                log.warning("event=reload_needs_restart section=%s note=kept_running_value", section)
        cameras = list(new.cameras) + self.extra_cameras
        rules_doors = {d.name: d for d in doors_from(new)}
        with self._decision_lock:
            self.engine.policy = policy_from(new.decision, self.engine.policy.liveness_threshold,
                                             self.engine.policy.liveness_frames)
            self.engine.scorer = Scorer.resolve(self.pipeline.manifest, new.decision.threshold)
            self.rules.update_doors(rules_doors)  # keeps the grant history: a reload reopens no cooldown
            self.engine.camera_doors = camera_doors(new, cameras)
            self.emitter.grant_ttl_s = new.decision.grant_ttl_s
        changed = self.capture.replace(cameras)
        self.cameras = cameras
        self.config = new.model_copy(update={k: getattr(old, k) for k in (
            "pack", "mqtt", "audit", "signing", "gallery", "inference", "liveness", "service")})
        log.info("event=config_reloaded cameras_changed=%s doors=%s", ",".join(changed) or "none",
                 ",".join(rules_doors))

    def shutdown(self) -> None:
        """Stop cameras and inference, flush MQTT, close the audit log and gallery (idempotent)."""
        t = self.config.service.stop_timeout_s
        for name in ("capture", "inference"):
            stage = getattr(self, name, None)
            if stage is not None:
                stage.stop(t / 2)
        self._close_partial()
        if hasattr(self, "inference"):
            self.log_stats()

    def _close_partial(self) -> None:
        if self.publisher is not None:
            self.publisher.stop(timeout_s=self.config.service.stop_timeout_s)
            self.publisher = None
        for name in ("audit", "gallery"):
            part = getattr(self, name, None)
            if part is not None:
                try:
                    part.close()
                except Exception:
                    log.exception("event=close_failed part=%s", name)
                setattr(self, name, None)
