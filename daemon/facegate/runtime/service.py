"""``facegate run``: the daemon's lifecycle — build the stages from a validated ``Config``, start them, keep systemd
informed, reload on SIGHUP, stop on SIGTERM. Each stage builds itself from its own config section (``from_config``
beside it) and is handed its neighbours; this module holds no decision, event or camera logic.

Data flows without coming back here: capture (``CaptureStage``) → inference (``InferenceStage``) → decision
(``DecisionEngine.on_result``: tracking, voting, gallery search via ``LiveGallery``, rules) → ``EventEmitter``, whose
sinks run in order: audit log (durable first), MQTT, stdout, statistics, Prometheus metrics (``runtime/metrics.py``,
which also serves ``/metrics`` from its own thread), snapshots (``runtime/snapshots.py``, when retention is on).
The loop rewrites ``state.json`` every second for the operator console (``runtime/state_file.py``).

The stages are built and wired by ``runtime/stages.py`` (``build_stages``, in start-up order; any failure raises a
``FacegateError`` naming the part, before systemd hears READY); then the cameras start (READY once every camera
delivered a frame, or after ``service.ready_timeout_s`` when at least one did: a dead camera does not stop the
others) → ``READY=1``.

While running, the main thread pings the systemd watchdog (``WATCHDOG=1`` every ``WATCHDOG_USEC``/2) only while the
inference stage is healthy (``InferenceStage.healthy``: alive, not stuck, not failing every batch for
``service.failure_watchdog_s``), follows the gallery every ``gallery.refresh_s`` (an enrolment or erasure by
another process takes effect without a signal), handles SIGTERM/SIGINT (stop within ``service.stop_timeout_s`` plus
the MQTT flush) and SIGHUP (``reload``: the gallery, the audit log reopened after a rotation, the config file).

One ``Health`` registry (``runtime/health.py``) is built first and handed to every stage that reports: the gallery,
the audit log, inference, MQTT (which publishes it as ``<prefix>/status`` and ``<prefix>/health``) and capture.

When every camera is a non-looping file that has ended, the service drains the last frames and exits 0 (demo and
tests).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from facegate.config import CameraConfig, Config
from facegate.config_checks import check_file
from facegate.errors import ConfigError, FacegateError, VideoError
from facegate.runtime.capture import all_cameras
from facegate.runtime.stages import Closer, Stages, build_stages
from facegate.runtime.state_file import daemon_state

log = logging.getLogger(__name__)

#: Sections a SIGHUP cannot change in a running daemon (they open files, models or connections at start).
RESTART_SECTIONS = ("pack", "mqtt", "audit", "signing", "gallery", "inference", "liveness", "service",
                    "homeassistant", "metrics", "snapshots")


class Service:
    """The running daemon. ``run()`` blocks until SIGTERM/SIGINT, a fatal error, or (files only) the end.

    ``stages``: already built stages (tests); None builds them from ``config`` in ``run``.
    """

    def __init__(self, config: Config, *, config_path: Path | None = None,
                 extra_cameras: list[CameraConfig] | None = None, stages: Stages | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.extra_cameras = list(extra_cameras or [])
        self.stages = stages
        self._opened: list[Closer] = []
        self._stop = threading.Event()
        self._reload = threading.Event()
        self.notifier: Any = None

    # ------------------------------------------------------------------------------------------- lifecycle
    def build(self) -> Stages:
        """Build the stages (unless injected); a failure closes what was already opened and re-raises."""
        if self.stages is None:
            if not all_cameras(self.config, self.extra_cameras):
                raise ConfigError("no cameras: add cameras: to the config or give --camera URL_OR_FILE")
            try:
                self.stages = build_stages(self.config, self.extra_cameras, self._opened)
            except BaseException:
                self._close(self._opened)
                raise
        return self.stages

    def run(self) -> int:
        """Build, start, serve until stopped. Returns the exit code (0 clean stop / files ended)."""
        old_handlers = self._install_signals()
        try:
            self._notify("STATUS=loading models, gallery and broker")
            s = self.build()
            s.capture.start()
            s.inference.start()
            self._notify("STATUS=waiting for cameras")
            live = self.wait_for_cameras()
            if self._stop.is_set():
                return 0
            broker = f"{s.publisher.host}:{s.publisher.port}" if s.publisher else "none"
            self._notify("READY=1")
            self._notify(f"STATUS=running cameras={len(live)}/{len(s.capture.cameras)} broker={broker}")
            log.info("event=ready cameras=%s broker=%s", ",".join(live), broker)
            self._loop()
            return 0
        finally:
            self._notify("STOPPING=1")
            self.shutdown()
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)

    def wait_for_cameras(self) -> list[str]:
        """Block until every camera delivered a frame or ``ready_timeout_s`` passed; returns the live ones.
        Raises ``VideoError`` when none delivered."""
        capture = self.stages.capture
        timeout = self.config.service.ready_timeout_s
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stop.is_set():
            # a missing device or an unreadable file: no use waiting for it
            if len(capture.delivering()) + len(capture.unusable()) == len(capture.cameras):
                break
            time.sleep(0.05)
        live = capture.delivering()
        dead = {cid: c.stats.last_error or c.stats.state for cid, c in capture.cameras.items() if cid not in live}
        if not live and not self._stop.is_set():
            raise VideoError(f"no camera delivered a frame within {timeout:g} s: "
                             + "; ".join(f"{k}: {v}" for k, v in dead.items()))
        for cid, why in dead.items():
            log.error("event=camera_not_delivering camera=%s source=%s error=%r note=others_continue",
                      cid, capture.cameras[cid].config.describe(), why)
        return live

    def _loop(self) -> None:
        s = self.stages
        usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        ping_every = usec / 2e6 if usec else None
        last_ping = 0.0
        last_stats = time.monotonic()
        for task in s.periodic:
            task.last = last_stats
        idle_checks = 0  # two idle looks 0.2 s apart: a frame taken but not yet marked busy is not missed
        while not self._stop.wait(0.2):
            now = time.monotonic()
            if ping_every and now - last_ping >= ping_every:
                if s.inference.healthy():
                    self._notify("WATCHDOG=1")
                    last_ping = now
                else:
                    log.error("event=unhealthy inference_alive=%s busy_s=%.1f failing_s=%.1f "
                              "note=watchdog_not_pinged", s.inference.alive, s.inference.busy_for(),
                              s.inference.failing_for())
                    last_ping = now  # said once per ping period, not every loop
            if self._reload.is_set():
                self._reload.clear()
                self.reload()
            for task in s.periodic:
                if now - task.last >= task.every_s:
                    task.last = now
                    try:
                        task.fn()
                    except Exception:  # a stage's periodic work must not stop the daemon
                        log.exception("event=periodic_failed task=%s", task.name)
            if now - last_stats >= 30.0:
                last_stats = now
                self.log_stats()
            if s.state_file is not None:  # for the operator console; it needs the config in force
                s.state_file.tick(lambda: daemon_state(s, self.config))
            idle_checks = idle_checks + 1 if s.capture.all_ended and s.inference.idle() else 0
            if idle_checks >= 2:
                log.info("event=all_cameras_ended action=exit")
                break
            if not s.inference.alive:
                raise FacegateError("the inference thread died; see the log above")

    def log_stats(self) -> None:
        """One ``event=stats`` line: inference counters, decisions and latencies, cameras, MQTT."""
        s = self.stages
        inf = s.inference.stats
        summary = s.stats.summary()
        log.info("event=stats frames=%d detected=%d faces=%d embedded=%d cycle_ms=%.0f decisions=%s "
                 "latency_ms_inferred_p50=%s latency_ms_inferred_p99=%s latency_ms_emitted_p50=%s "
                 "latency_ms_emitted_p99=%s cameras=%s mqtt=%s health=%s",
                 inf.frames, inf.detected, inf.faces, inf.embedded, 1000 * inf.busy_s / max(1, inf.cycles),
                 summary["decisions"],
                 summary["latency_ms_inferred_p50"], summary["latency_ms_inferred_p99"],
                 summary["latency_ms_emitted_p50"], summary["latency_ms_emitted_p99"],
                 json.dumps(s.capture.snapshot()), dict(s.publisher.stats) if s.publisher else None, s.health.state)

    # ------------------------------------------------------------------------------------------- signals
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

    def request_reload(self) -> None:
        """Reload from another thread, as SIGHUP does (tests)."""
        self._reload.set()

    def _notify(self, message: str) -> None:
        if self.notifier is None:
            import sdnotify

            self.notifier = sdnotify.SystemdNotifier()
        self.notifier.notify(message)

    # ------------------------------------------------------------------------------------------- reload/stop
    def reload(self) -> None:
        """SIGHUP: follow the gallery, reopen the sinks' files (the audit log after logrotate), then re-read the
        config file (if any). A file failing any check that ``facegate config check`` makes is refused whole, each
        problem logged with its key, and the running config kept; otherwise ``apply``."""
        self._notify("RELOADING=1")
        try:
            self.stages.gallery.refresh()
            self.stages.emitter.reopen()
            if self.config_path is not None:
                new, issues = check_file(self.config_path, self.extra_cameras)
                if issues or new is None:
                    for issue in issues:
                        log.error("event=reload_refused key=%s line=%s error=%r note=running_config_kept",
                                  issue.path or "<top>", issue.line, issue.message)
                    return
                self.apply(new)
        except FacegateError as exc:
            log.error("event=reload_refused error=%r note=running_config_kept", str(exc))
        except Exception:
            log.exception("event=reload_failed note=running_config_kept")
        finally:
            self._notify("READY=1")

    def apply(self, new: Config) -> list[str]:
        """Hand the stages the new config (``Stages.reconfigure``); sections in ``RESTART_SECTIONS`` keep their
        running value, each logged. Returns the ids of the cameras that changed."""
        old = self.config
        kept = [name for name in RESTART_SECTIONS if getattr(new, name) != getattr(old, name)]
        for name in kept:
            log.warning("event=reload_needs_restart section=%s note=kept_running_value", name)
        new = new.model_copy(update={name: getattr(old, name) for name in RESTART_SECTIONS})
        changed = self.stages.reconfigure(new, self.extra_cameras)
        self.config = new
        log.info("event=config_reloaded cameras_changed=%s doors=%s", ",".join(changed) or "none",
                 ",".join(self.stages.engine.rules.doors))
        return changed

    def shutdown(self) -> None:
        """Stop cameras and inference, flush MQTT, close the audit log and the gallery (idempotent)."""
        t = self.config.service.stop_timeout_s
        s = self.stages
        if s is not None:
            s.capture.stop(t / 2)
            s.inference.stop(t / 2)
            self.log_stats()
            if s.state_file is not None:
                s.state_file.close(lambda: daemon_state(s, self.config, running=False))
            self._close(s.closers)
        self._close(self._opened)  # a build that failed half-way

    @staticmethod
    def _close(parts: list[Closer]) -> None:
        while parts:
            name, close = parts.pop(0)
            try:
                close()
            except Exception:
                log.exception("event=close_failed part=%s", name)
