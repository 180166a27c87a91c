"""The service in-process: stages built from config and wired directly, a service run with an injected sink, and a
reload that hands each stage its changed section. Real models, a real video file, a real gallery and audit log."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from conftest import Collector, need_shared

from facegate.config import CameraConfig, Config
from facegate.runtime.audit import read_audit
from facegate.runtime.service import Service
from facegate.runtime.stages import build_stages
from facegate.signing import key_id, load_public_key, verify_signature

STAGE = "data/videos/stage_clip_640x360.mp4"
MIRANDA = "Lin-Manuel Miranda"




def _config(tmp_path: Path, **sections) -> Config:
    video = need_shared(STAGE)
    base = {
        "cameras": [{"id": "stage", "file": str(video), "start_s": 2.6, "stop_s": 7.0, "door": "front"}],
        "doors": [{"id": "front", "allowed_groups": ["staff"], "cooldown_s": 0}],
        "gallery": {"path": str(tmp_path / "gallery"), "refresh_s": 0},
        "audit": {"path": str(tmp_path / "audit.jsonl")},
        "service": {"state_dir": str(tmp_path / "state"), "stdout_events": False},
        "decision": {"max_frame_age_s": 1.5},  # a shared 2-core machine: leave a slow cycle time to decide
    }
    base.update(sections)
    return Config.model_validate(base)




def test_a_service_runs_in_process_with_an_injected_sink(tmp_path, enrolled_gallery):
    import shutil

    shutil.copytree(enrolled_gallery, tmp_path / "gallery")
    config = _config(tmp_path)
    opened: list = []
    stages = build_stages(config, [], opened)
    collector = Collector()
    stages.emitter.sinks.append(collector)
    service = Service(config, stages=stages)
    done = threading.Event()
    result: list[int] = []
    worker = threading.Thread(target=lambda: (result.append(service.run()), done.set()), daemon=True)
    worker.start()
    assert done.wait(180), "the service did not stop when its only file camera ended"
    assert result == [0]
    decided = [e.payload for e in collector.events]
    assert any(p["type"] == "grant" and p["person_name"] == MIRANDA for p in decided), decided
    # the audit sink ran before the injected one, for every event, in order
    assert [r["event"]["event_id"] for r in read_audit(tmp_path / "audit.jsonl")] == [p["event_id"] for p in decided]
    assert stages.stats.counts["grant"] >= 1 and all(e.topic is None for e in collector.events)  # no broker
    # no signing section: Ed25519 (version 2) with a key pair created in the state folder; the door's half verifies
    public = load_public_key(tmp_path / "state" / "event-signing.pub")
    keys = {key_id(public): public}
    assert all(p["version"] == 2 and verify_signature(p, public_keys=keys) is None for p in decided)
    assert oct((tmp_path / "state" / "event-signing.key").stat().st_mode & 0o777) == "0o600"


def test_reload_hands_each_stage_its_changed_section(tmp_path, caplog):
    config = _config(tmp_path)
    opened: list = []
    stages = build_stages(config, [], opened)
    service = Service(config, stages=stages)
    try:
        pack_threshold = stages.inference.pipeline.threshold
        assert stages.engine.scorer.threshold == pack_threshold  # no decision.threshold: the pack's operating point
        extra = CameraConfig(id="side", file=str(need_shared(STAGE)), door="back")
        new = _config(tmp_path,
                      cameras=[*config.model_dump()["cameras"], extra.model_dump()],
                      doors=[{"id": "front", "allowed_groups": ["guests"], "cooldown_s": 3},
                             {"id": "back", "cooldown_s": 0}],
                      decision={"threshold": 0.42, "k": 2, "n": 4, "grant_ttl_s": 7.5},
                      mqtt={"host": "127.0.0.1", "port": 1})  # a restart-only section
        with caplog.at_level(logging.INFO, logger="facegate"):
            changed = service.apply(new)
        assert changed == ["side"]
        assert set(stages.capture.cameras) == {"stage", "side"}
        assert stages.engine.rules.doors["front"].allowed_groups == ["guests"]
        assert stages.engine.camera_doors == {"stage": "front", "side": "back"}
        assert stages.engine.scorer.threshold == 0.42 and (stages.engine.config.k, stages.engine.config.n) == (2, 4)
        assert stages.emitter.grant_ttl_s == 7.5
        assert service.config.mqtt.host is None  # kept: needs a restart, and said so
        assert "event=reload_needs_restart section=mqtt" in caplog.text
        # the threshold falls back to the pack's again when the override goes
        service.apply(_config(tmp_path))
        assert stages.engine.scorer.threshold == pack_threshold
    finally:
        service.shutdown()


def test_doors_keep_their_grant_history_across_a_reload(tmp_path):
    from datetime import UTC, datetime

    from facegate.runtime.rules import AccessRules

    rules = AccessRules.from_config(_config(tmp_path))
    rules.record_grant(1, "front", now=100.0)
    rules.update(AccessRules.from_config(_config(tmp_path, doors=[{"id": "front", "cooldown_s": 60}])))
    noon = datetime(2026, 6, 3, 12, tzinfo=UTC)
    assert rules.check(identity_id=1, groups=(), door="front", wall=noon, now=130.0) == "cooldown"

