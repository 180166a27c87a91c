"""The daemon's side of the operator console, in-process with real models, a real video and a real gallery: the
Prometheus endpoint (a real HTTP server read with a real client), ``state.json`` and snapshot retention."""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import ENROLLED, need_shared
from prometheus_client.parser import text_string_to_metric_families
from rtsp_server import free_port

from facegate.config import Config
from facegate.imaging import face_crop
from facegate.runtime.audit import is_decision, read_audit
from facegate.runtime.service import Service
from facegate.runtime.snapshots import SnapshotSink, snapshot_path
from facegate.runtime.stages import build_stages

STAGE = "data/videos/stage_clip_640x360.mp4"
MIRANDA = "Lin-Manuel Miranda"




def _config(tmp_path: Path, port: int) -> Config:
    video = need_shared(STAGE)
    return Config.model_validate({
        "cameras": [{"id": "stage", "file": str(video), "start_s": 2.6, "stop_s": 7.0, "door": "front"}],
        "doors": [{"id": "front", "allowed_groups": ["staff"], "cooldown_s": 0}],
        "gallery": {"path": str(tmp_path / "gallery"), "refresh_s": 0},
        "audit": {"path": str(tmp_path / "audit.jsonl")},
        "service": {"state_dir": str(tmp_path / "state"), "stdout_events": False},
        "decision": {"max_frame_age_s": 1.5},
        "metrics": {"port": port},
        "snapshots": {"enabled": True, "retention_hours": 1},
    })


def _scrape(url: str) -> dict[str, list]:
    text = httpx.get(url, timeout=5).text
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_metrics_state_file_and_snapshots_of_a_running_service(tmp_path, enrolled_gallery):
    shutil.copytree(enrolled_gallery, tmp_path / "gallery")
    port = free_port()
    config = _config(tmp_path, port)
    stages = build_stages(config, [], [])
    service = Service(config, stages=stages)
    url = f"http://127.0.0.1:{port}/metrics"
    scrapes: list[dict] = []
    states: list[dict] = []
    done = threading.Event()
    worker = threading.Thread(target=lambda: (service.run(), done.set()), daemon=True)
    worker.start()
    state_path = tmp_path / "state" / "state.json"
    while not done.wait(0.5):  # scrape and read the state file while it runs
        try:
            scrapes.append(_scrape(url))
        except httpx.TransportError:  # the file ended and the service is shutting its endpoint down meanwhile
            assert stages.capture.all_ended, "the metrics endpoint failed while the camera was still playing"
            assert done.wait(30)
            break
        if state_path.exists():
            states.append(json.loads(state_path.read_text()))
    assert done.is_set()
    with pytest.raises(httpx.ConnectError):  # the endpoint stops with the service
        httpx.get(url, timeout=2)

    decided = [r["event"] for r in read_audit(tmp_path / "audit.jsonl") if is_decision(r)]
    grants = [e for e in decided if e["type"] == "grant"]
    assert grants, "the stage clip gave no grant"
    running = [s for s in scrapes if s.get("facegate_camera_up")]
    assert running, "no scrape while the camera ran"
    last = scrapes[-1]
    counted = {(s.labels["type"], s.labels["door"]): s.value for s in last["facegate_decisions"]
               if s.name == "facegate_decisions_total"}
    assert counted[("grant", "front")] == len(grants)
    assert sum(counted.values()) == len(decided)
    count = next(s.value for s in last["facegate_capture_to_publish_seconds"]
                 if s.name == "facegate_capture_to_publish_seconds_count")
    assert count == len(decided)
    batches = next(s.value for s in last["facegate_inference_batch_frames"]
                   if s.name == "facegate_inference_batch_frames_count")
    assert batches > 0
    assert any(s.value == 1.0 for sc in running for s in sc["facegate_camera_up"] if s.labels["camera"] == "stage")
    assert last["facegate_gallery_identities"][0].value == len(ENROLLED)
    assert [s.labels["provider"] for s in last["facegate_execution_provider"]] == ["CPUExecutionProvider"]
    assert last["facegate_decision_threshold"][0].value == stages.engine.scorer.threshold

    served = {sample.name for samples in last.values() for sample in samples}
    dashboard = (Path(__file__).resolve().parents[1] / "contrib" / "grafana-dashboard.json").read_text()
    charted = set(re.findall(r"facegate_[a-z_]+", dashboard)) - {"facegate_mqtt_connected", "facegate_mqtt_queue_depth",
                                                                  "facegate_mqtt_expired_grants_total",
                                                                  "facegate_mqtt_dropped_total"}  # no broker here
    assert charted <= served, f"the Grafana dashboard charts metrics the daemon does not serve: {charted - served}"

    assert states, "state.json was never written while running"
    live = [s for s in states if s["running"]]
    assert live and live[-1]["cameras"]["stage"]["door"] == "front"
    assert live[-1]["doors"][0]["id"] == "front" and live[-1]["doors"][0]["cameras"] == ["stage"]
    assert live[-1]["pack"]["threshold"] == stages.engine.scorer.threshold
    assert live[-1]["metrics"]["url"] == url and live[-1]["snapshots"]["enabled"] is True
    final = json.loads(state_path.read_text())
    assert final["running"] is False  # written at shutdown
    assert oct(state_path.stat().st_mode & 0o777) == "0o640"

    folder = tmp_path / "state" / "snapshots"
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    for event in decided:
        crop = snapshot_path(folder, event["event_id"])
        assert crop is not None and crop.is_file(), f"no snapshot for {event['event_id']}"
        assert oct(crop.stat().st_mode & 0o777) == "0o600"
        assert crop.read_bytes()[:3] == b"\xff\xd8\xff"


def test_snapshots_older_than_the_retention_are_deleted(tmp_path):
    sink = SnapshotSink(tmp_path / "snaps", retention_hours=1)
    old = tmp_path / "snaps" / "00000000-0000-4000-8000-000000000001.jpg"
    new = tmp_path / "snaps" / "00000000-0000-4000-8000-000000000002.jpg"
    for path in (old, new):
        path.write_bytes(b"\xff\xd8\xff")
    os.utime(old, (time.time() - 3601, time.time() - 3601))
    assert sink.purge() == 1
    assert not old.exists() and new.exists()
    assert sink.purge_if_due() == 0 and sink.purge_if_due() == 0  # at most once a minute


def test_snapshot_names_come_only_from_uuids(tmp_path):
    assert snapshot_path(tmp_path, "../../etc/passwd") is None
    assert snapshot_path(tmp_path, "") is None
    assert snapshot_path(tmp_path, "00000000-0000-4000-8000-00000000000A") is None  # upper case is not ours


def test_face_crop_is_widened_clipped_and_a_copy():
    image = np.arange(100 * 200 * 3, dtype=np.uint8).reshape(100, 200, 3)
    crop = face_crop(image, (10, 10, 50, 50))
    assert crop.shape == (60, 60, 3)  # 40 px box + 25 % each side, clipped at 0 on the top and left
    assert np.array_equal(crop, image[0:60, 0:60])
    crop[:] = 0
    assert image[0, 0, 1] != 0  # a copy: the frame is not kept alive or changed
    assert face_crop(image, (300, 300, 400, 400)) is None
    assert face_crop(image, (float("nan"), 0, 10, 10)) is None


def test_a_metrics_port_in_use_is_logged_and_the_daemon_goes_on(tmp_path, caplog):
    import socket

    from facegate.runtime.metrics import DaemonMetrics

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        metrics = DaemonMetrics("127.0.0.1", taken.getsockname()[1])
        assert metrics.start() is False
    assert metrics.url is None
    assert any("event=metrics_unavailable" in r.getMessage() for r in caplog.records)
