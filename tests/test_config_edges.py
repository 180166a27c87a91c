"""Every config value at the edges of the schema: `facegate config check` refuses it with a message naming the key,
or the daemon runs it without a traceback. The same for the door agent's config (refused by key, or loaded with
its keys and built without a traceback).

The edges come from the models themselves (tests/config_edges.py): each bound, just outside it, wrong types,
booleans for numbers, numbers for booleans, huge/negative/NaN/inf, odd text. Two sweeps check every single edge
against the validation and start-up checks (cheap); the Hypothesis property draws one or two edges at a time and,
when the check accepts the config, builds and runs the real stages in-process (`Service.run` → `build_stages`) on a
short stretch of the stage clip with Miranda enrolled, a real Mosquitto broker and a real audit log, then stops.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from config_edges import apply, dotted, excused, inside_points, mutation_points, names_key
from conftest import need_shared
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from mosquitto import Mosquitto, find_mosquitto

from facegate.config import DAYS, Config
from facegate.config_checks import check_file
from facegate.door.config import DoorAgentConfig, parse_door_config
from facegate.errors import FacegateError

STAGE = "data/videos/stage_clip_640x360.mp4"
DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
MIRANDA = "Lin-Manuel Miranda"
DAEMON_POINTS = mutation_points(Config)
DAEMON_EDGES = [(path, value) for path, values in DAEMON_POINTS for value in values]
#: The edges the fields' own constraints allow (bounds, booleans, literals, longest text): drawn as often as all
#: edges together, so that the property also runs the daemon, not only the check.
DAEMON_INSIDE = inside_points(Config)
#: Sections whose accepted values may still fail at start for reasons outside the config: a broker or camera that
#: cannot be reached with them (a port nobody listens on, a video position past the clip's end). Such a failure
#: must be a FacegateError (one line, no traceback); anywhere else the check should have refused the value.
ENVIRONMENT_SECTIONS = ("cameras", "mqtt")


def daemon_base(tmp: Path, host: str = "127.0.0.1", port: int = 1883) -> dict[str, Any]:
    """A valid config: one second of the stage clip where Miranda is granted (2.6–3.6 s, real time), one
    scheduled door, a broker."""
    return {
        "cameras": [{"id": "stage", "file": str(need_shared(STAGE)), "start_s": 2.6, "stop_s": 3.6}],
        "doors": [{"id": "front", "cooldown_s": 0, "schedule": {
            "timezone": "UTC", "windows": [{"days": list(DAYS), "start": "00:00", "end": "24:00"}]}}],
        "gallery": {"path": str(tmp / "gallery"), "refresh_s": 0},
        "audit": {"path": str(tmp / "audit.jsonl")},
        "service": {"state_dir": str(tmp / "state"), "stdout_events": False, "ready_timeout_s": 10,
                    "stop_timeout_s": 2},
        "mqtt": {"host": host, "port": port, "connect_timeout_s": 3, "client_id": "edges"},
        "decision": {"max_frame_age_s": 2.0},
    }


def check(tmp: Path, raw: dict[str, Any]):
    path = tmp / "facegate.yaml"
    path.write_text(yaml.dump(raw, Dumper=DUMPER, allow_unicode=True))
    return check_file(path)


def assert_refused_by_key(issues, paths, base) -> None:
    """Every issue names one of the changed keys (the base config is valid, so each issue comes from a change), or
    is a required sibling of a section the change created."""
    for issue in issues:
        assert any(names_key(issue.path, issue.message, p) or excused(issue.path, issue.message, base, p)
                   for p in paths), f"issue {issue} names none of {[dotted(p) for p in paths]}"


def test_the_base_configs_are_valid(tmp_path):
    config, issues = check(tmp_path, daemon_base(tmp_path))
    assert config is not None and issues == []
    door, problems = parse_door_config(yaml.safe_dump(door_base(tmp_path)))
    assert door is not None and problems == []


def test_every_single_edge_of_the_daemon_config_is_refused_by_key_or_accepted(tmp_path):
    base = daemon_base(tmp_path)
    refused = accepted = 0
    for path, value in DAEMON_EDGES:
        config, issues = check(tmp_path, apply(base, path, value))  # never raises
        if issues:
            refused += 1
            assert config is None or all(i.path for i in issues)
            assert_refused_by_key(issues, [path], base)
        else:
            accepted += 1
    assert refused > 1000 and accepted > 100, (refused, accepted)


# -- the property: refused by key, or run without a traceback ----------------------------------------------------
class _Tracebacks(logging.Handler):
    """Every log record that carries a traceback (``log.exception`` or ``exc_info=True``)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.records.append(record)


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    binary = find_mosquitto()
    if binary is None:
        pytest.skip("needs the mosquitto broker binary (apt-get install mosquitto)")
    server = Mosquitto(tmp_path_factory.mktemp("mosquitto"), binary)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory) -> Path:
    from facegate.gallery import Gallery
    from facegate.gallery.enrol import Enroller, pack_binding
    from facegate.pipeline import FacePipeline

    folder = tmp_path_factory.mktemp("gallery")
    pipeline = FacePipeline.load("default", threads=1)
    with Gallery(folder, pack=pack_binding(pipeline)) as gallery:
        photo = need_shared("data", "enroll_examples", "single", "lin-manuel-miranda.png")
        (outcome,) = Enroller(gallery, pipeline).enrol(MIRANDA, [photo], groups=["staff"])
        assert outcome.status == "enrolled", outcome.to_json()
    return folder


@pytest.fixture(scope="module")
def pipelines():
    """``runtime.stages.load_pipeline`` remembered per (pack, providers, threads, liveness): each distinct model
    set is loaded once for the whole property instead of once per example (the real loader, the real models)."""
    from facegate.runtime import stages

    real = stages.load_pipeline
    cache: dict[tuple, Any] = {}

    def load(config: Config):
        key = (config.pack, tuple(config.inference.providers or ()), config.inference.threads,
               config.liveness.enabled)
        if key not in cache:
            cache[key] = real(config)
        return cache[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stages, "load_pipeline", load)
        yield cache


def run_briefly(config: Config) -> tuple[BaseException | None, list[logging.LogRecord], list[str]]:
    """``Service(config).run()`` in a thread (it builds the stages with ``build_stages``); stopped after 5 s unless
    the clip ended first. Returns (its exception or None, log records with a traceback, decision types)."""
    from facegate.runtime.service import Service

    handler = _Tracebacks()
    root = logging.getLogger()
    root.addHandler(handler)
    crashed: list[str] = []
    old_hook = threading.excepthook
    threading.excepthook = lambda args: crashed.append(f"{args.thread.name}: {args.exc_type.__name__}: "
                                                       f"{args.exc_value}")
    outcome: list[BaseException | None] = []
    service = Service(config)

    def target() -> None:
        try:
            service.run()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            outcome.append(exc)

    try:
        worker = threading.Thread(target=target, name="service-under-test", daemon=True)
        worker.start()
        worker.join(5.0)
        if worker.is_alive():
            service.request_stop()
            worker.join(30.0)
        assert not worker.is_alive(), "the service did not stop within 30 s of request_stop"
    finally:
        threading.excepthook = old_hook
        root.removeHandler(handler)
    assert not crashed, crashed
    decisions = [] if service.stages is None else [t for t, n in service.stages.stats.counts.items() if n]
    return outcome[0], handler.records, decisions


EDGE = st.one_of(st.sampled_from(DAEMON_EDGES), st.sampled_from(DAEMON_INSIDE))


# 30 derandomized examples (the same ones on every run, as CI needs): about half run the daemon (~1.5 s each)
@settings(max_examples=30, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(changes=st.lists(EDGE, min_size=1, max_size=2, unique_by=lambda e: dotted(e[0])))
def test_config_check_refuses_by_key_or_the_daemon_runs_it(changes, broker, enrolled, pipelines,
                                                          tmp_path_factory):
    tmp = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp()))
    shutil.copytree(enrolled, tmp / "gallery")
    base = raw = daemon_base(tmp, broker.host, broker.port)
    for path, value in changes:
        raw = apply(raw, path, value)
    config, issues = check(tmp, raw)
    if issues:
        event("refused by config check")
        assert config is None or all(i.path for i in issues)
        assert_refused_by_key(issues, [p for p, _ in changes], base)
        return
    assert config is not None
    event("accepted: the daemon ran it")
    error, tracebacks, _ = run_briefly(config)
    assert not tracebacks, [f"{r.getMessage()}: {r.exc_info[1]!r}" for r in tracebacks]
    if error is not None:
        sections = {p[0] for p, _ in changes}
        assert isinstance(error, FacegateError) and sections <= set(ENVIRONMENT_SECTIONS), (
            f"{[(dotted(p), v) for p, v in changes]} passed `config check` but the daemon failed: {error!r}")
        assert "\n" not in str(error)


@pytest.mark.parametrize("changes", [
    [(("decision", "grant_ttl_s"), 300)],  # the largest lifetime a door agent accepts: a grant is built with it
    [(("mqtt", "keepalive_s"), 65535)],  # MQTT's 16-bit keep-alive at its top
    [(("mqtt", "queue_max"), 100_000), (("inference", "max_batch"), 64)],
    [(("decision", "n"), 1000), (("decision", "k"), 1000)],
], ids=["grant_ttl_300", "keepalive_65535", "queue_batch_max", "k_n_1000"])
def test_values_at_the_top_of_their_range_run_and_still_grant(changes, broker, enrolled, pipelines, tmp_path):
    shutil.copytree(enrolled, tmp_path / "gallery")
    raw = daemon_base(tmp_path, broker.host, broker.port)
    for path, value in changes:
        raw = apply(raw, path, value)
    config, issues = check(tmp_path, raw)
    assert issues == [], issues
    error, tracebacks, decisions = run_briefly(config)
    assert error is None and not tracebacks, (error, tracebacks)
    if dict(changes).get(("decision", "k")) != 1000:  # 1000 votes need 1000 frames: no decision in one second
        assert "grant" in decisions, decisions


# -- the door agent's config ---------------------------------------------------------------------------------------
def door_base(tmp: Path) -> dict[str, Any]:
    from facegate.signing import generate_key_pair

    keys = tmp / "keys"
    if not (keys / "daemon.pub").exists():
        generate_key_pair(keys, "daemon")
    return {
        "door": "front",
        "mqtt": {"host": "127.0.0.1", "port": 1883},
        "keys": {"public_keys": [str(keys / "daemon.pub")]},
        "replay_cache": {"path": str(tmp / "replay" / "replay.db")},
        "output": {"command": {"activate": ["true"], "release": ["true"]}},
    }


DOOR_EDGES = [(path, value) for path, values in mutation_points(DoorAgentConfig) for value in values]


def test_every_single_edge_of_the_door_config_is_refused_by_key_or_loads(tmp_path):
    from facegate.door.agent import DoorAgent
    from facegate.door.config import load_door_config

    base = door_base(tmp_path)
    file = tmp_path / "door.yaml"
    refused = built = environment = 0
    for path, value in DOOR_EDGES:
        file.write_text(yaml.dump(apply(base, path, value), Dumper=DUMPER, allow_unicode=True))
        config, problems = parse_door_config(file.read_text())
        if config is None:
            refused += 1
            issues = [re.sub(r"^line \d+: ", "", p).partition(": ") for p in problems]
            assert all(names_key(where, message, path) or excused(where, message, base, path)
                       for where, _, message in issues), (dotted(path), problems)
            continue
        try:  # what `facegate door` does with a valid file: keys, replay cache, output, inputs, MQTT client
            agent = DoorAgent(load_door_config(file))
        except FacegateError as exc:  # a key file, GPIO chip or replay path the edge points at: refused by name
            environment += 1
            assert "\n" not in str(exc), exc
            continue
        built += 1
        agent.replay.close()
    assert refused > 800 and built > 100, (refused, built, environment)
