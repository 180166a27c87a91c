"""Run-time and load-time model failures. In process: a running service (real pack, real video, real gallery, real
Mosquitto) whose recogniser session is swapped mid-run for one built from a graph ONNX Runtime loads but cannot
run (a Reshape no batch of 150×150×3 chips fits): no grant, one ``degraded`` line for the episode (no traceback
per frame), status ``degraded`` on MQTT, and the systemd watchdog (NOTIFY_SOCKET + WATCHDOG_USEC, as systemd sets
them) no longer fed once every batch has failed for ``service.failure_watchdog_s``; restoring the session ends the
episode. As a process: `facegate run` with a corrupt model file fails with the one-line error."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import need_shared
from daemon_process import facegate
from faultkit import NotifySocket, record_recovery
from mosquitto import Subscriber
from onnx import TensorProto, helper
from onnxruntime import InferenceSession

from facegate.config import Config
from facegate.packs.onnx_session import make_session
from facegate.runtime.events import SignedEvent
from facegate.runtime.service import Service
from facegate.runtime.stages import build_stages

pytestmark = pytest.mark.slow

STAGE = "data/videos/stage_clip_640x360.mp4"
MIRANDA = "Lin-Manuel Miranda"
PREFIX = "fault"
REPO = Path(__file__).resolve().parents[2]
WATCHDOG_AFTER_S = 3.0


class Collector:
    name = "collector"
    critical = False

    def __init__(self) -> None:
        self.events: list[tuple[float, SignedEvent]] = []

    def emit(self, event: SignedEvent) -> None:
        self.events.append((time.monotonic(), event))

    def grants(self, after: float = 0.0) -> list[SignedEvent]:
        return [e for t, e in list(self.events) if t > after and e.payload["type"] == "grant"]


def broken_recogniser_session() -> InferenceSession:
    """The dlib recogniser's interface (uint8 chips N×150×150×3 → float descriptors N×128) around a Reshape to
    [1, 7]: it loads, and every run fails (N·67,500 values never make 7). The target shape is computed from the
    data (0 × max(chips) + [1, 7]) so that ONNX Runtime's load-time shape inference cannot see the failure."""
    from facegate.packs.dlib_resnet import INPUT_NAME, OUTPUT_NAME

    nodes = [
        helper.make_node("Cast", [INPUT_NAME], ["x"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMax", ["x"], ["peak"], keepdims=0),
        helper.make_node("Mul", ["peak", "zero"], ["nothing"]),
        helper.make_node("Cast", ["nothing"], ["nothing_i"], to=TensorProto.INT64),
        helper.make_node("Add", ["nothing_i", "bad_shape"], ["shape"]),
        helper.make_node("Reshape", ["x", "shape"], ["y"]),
        helper.make_node("Reshape", ["y", "out_shape"], [OUTPUT_NAME]),
    ]
    graph = helper.make_graph(
        nodes, "broken_recogniser",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["N", 150, 150, 3])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", 128])],
        initializer=[helper.make_tensor("bad_shape", TensorProto.INT64, [2], [1, 7]),
                     helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
                     helper.make_tensor("out_shape", TensorProto.INT64, [2], [-1, 128])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return make_session(model.SerializeToString(), "broken recogniser", ["CPUExecutionProvider"], 1)




def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def test_runtime_model_failure_denies_reports_once_and_starves_the_watchdog(tmp_path, enrolled_gallery,
                                                                            mosquitto_broker, monkeypatch, caplog,
                                                                            capfd):
    shutil.copytree(enrolled_gallery, tmp_path / "gallery")
    notify = NotifySocket(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", notify.path)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # WATCHDOG=1 every 0.5 s while healthy
    config = Config.model_validate({
        "cameras": [{"id": "stage", "file": str(need_shared(STAGE)), "start_s": 2.6, "stop_s": 7.0, "loop": True,
                     "door": "front"}],
        "doors": [{"id": "front", "allowed_groups": ["staff"], "cooldown_s": 0}],
        "decision": {"max_frame_age_s": 1.5, "repeat_after_s": 1},
        "gallery": {"path": str(tmp_path / "gallery"), "refresh_s": 0},
        "audit": {"path": str(tmp_path / "audit.jsonl")},
        "mqtt": {"host": mosquitto_broker.host, "port": mosquitto_broker.port, "topic_prefix": PREFIX},
        "service": {"state_dir": str(tmp_path / "state"), "stdout_events": False,
                    "failure_watchdog_s": WATCHDOG_AFTER_S},
    })
    sub = Subscriber(mosquitto_broker, f"{PREFIX}/#").start()
    caplog.set_level(logging.INFO, logger="facegate")
    stages = build_stages(config, [], [])
    collector = Collector()
    stages.emitter.sinks.append(collector)
    service = Service(config, stages=stages)
    worker = threading.Thread(target=service.run, daemon=True)
    worker.start()
    recogniser = stages.inference.pipeline.recogniser
    recogniser = recogniser.parts[0] if hasattr(recogniser, "parts") else recogniser  # the fused pack's dlib part
    good = recogniser.session
    try:
        assert _wait(lambda: collector.grants(), 150), "no grant before the fault"
        assert _wait(lambda: notify.times("WATCHDOG=1"), 10)
        recogniser.session = broken_recogniser_session()  # the model starts failing at run time
        broken_at = time.monotonic()
        assert _wait(lambda: stages.health.degraded("inference"), 30)
        failing_since = time.monotonic() - stages.inference.failing_for()
        assert sub.wait_for(lambda s: s.payloads(f"{PREFIX}/status")[-1:] == [b"degraded"], 10)
        time.sleep(max(0.0, failing_since + WATCHDOG_AFTER_S + 4.0 - time.monotonic()))
        starved_from = failing_since + WATCHDOG_AFTER_S + 1.0  # one ping period of slack
        late_pings = [t for t in notify.times("WATCHDOG=1") if t > starved_from]
        errors = stages.inference.stats.errors
        late_grants = collector.grants(after=broken_at + 0.5)  # a frame already embedded may still complete
        recogniser.session = good  # the model works again
        restored = time.monotonic()
        assert _wait(lambda: not stages.health.degraded("inference"), 30)
        assert sub.wait_for(lambda s: s.payloads(f"{PREFIX}/status")[-1:] == [b"online"], 10)
        assert _wait(lambda: [t for t in notify.times("WATCHDOG=1") if t > restored], 10)
        assert _wait(lambda: collector.grants(after=restored), 60), "no grant after the model recovered"
        record_recovery("model_restored_to_first_grant", collector.events[-1][0] - restored)
    finally:
        service.request_stop()
        worker.join(30)
        notify.close()
        sub.stop()
    assert late_pings == [], "the watchdog was still fed after failure_watchdog_s of failing batches"
    assert [t for t in notify.times("WATCHDOG=1") if broken_at - 30 < t < failing_since + WATCHDOG_AFTER_S]
    assert late_grants == [] and errors > 3
    messages = [r.getMessage() for r in caplog.records]
    degraded = [m for m in messages if "event=degraded part=inference" in m]
    recovered = [m for m in messages if "event=recovered part=inference" in m]
    assert len(degraded) == 1 and "reshape" in degraded[0].lower(), degraded
    assert len(recovered) == 1 and int(recovered[0].split("count=")[1]) >= errors
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert "Non-zero status code" not in capfd.readouterr().err  # nor ONNX Runtime's own line per failed run
    assert any("event=unhealthy" in m and "note=watchdog_not_pinged" in m for m in messages)


def test_a_corrupt_model_file_is_one_line_error_at_start(tmp_path):
    """`facegate run` with a pack whose recogniser file is garbage (its sha256 recorded, so only loading fails)."""
    video = need_shared(STAGE)
    manifest = yaml.safe_load((REPO / "models" / "yunet-mobilefacenet.yaml").read_text())
    detector = (REPO / "models" / manifest["detector"]["source"]["file"]).resolve()
    if not detector.exists():
        pytest.skip(f"needs {detector} (the shared model folder)")
    garbage = tmp_path / "recogniser.onnx"
    garbage.write_bytes(os.urandom(4096))
    manifest.pop("liveness")
    manifest["name"] = "corrupt-recogniser"
    manifest["detector"]["source"]["file"] = str(detector)
    manifest["recogniser"]["source"]["file"] = str(garbage)
    manifest["recogniser"]["sha256"] = hashlib.sha256(garbage.read_bytes()).hexdigest()
    pack = tmp_path / "corrupt.yaml"
    pack.write_text(yaml.safe_dump(manifest))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"pack": str(pack), "cameras": [{"id": "a", "file": str(video)}],
                                   "gallery": {"path": str(tmp_path / "g")},
                                   "service": {"state_dir": str(tmp_path / "state")}}))
    run = facegate("run", "--config", str(cfg), timeout=180,
                   env={**os.environ, "FACEGATE_CACHE_DIR": str(tmp_path / "cache")})
    assert run.returncode == 1, run.stderr[-2000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("facegate: error:")]
    assert len(errors) == 1 and str(garbage) in errors[0] and "not a loadable ONNX model" in errors[0]
    assert "Traceback" not in run.stderr
