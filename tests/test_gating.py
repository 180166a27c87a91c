"""Idle gating and zones (runtime/gating.py, the inference stage's use of them): the change test on real footage
(the corridor clip: an empty scene, then a person walking in), a still scene with sensor noise, the gate's rules
(change, live track, periodic detection), zones limiting change and faces, and the config of both."""

from __future__ import annotations

from datetime import UTC, datetime

import cv2
import numpy as np
import pytest
from conftest import need_shared
from pydantic import ValidationError

from facegate.config import CameraConfig, Config
from facegate.detections import Detections
from facegate.runtime.capture import Frame, FrameSlots
from facegate.runtime.gating import MOTION, PERIODIC, TRACK, UNMEASURED, ChangeDetector, DetectGate, in_zone, zone_mask
from facegate.runtime.inference import InferenceStage

CORRIDOR = "data/videos/corridor/one-by-one-person-detection.mp4"
STAGE = "data/videos/stage_clip_640x360.mp4"
#: A person enters the corridor clip at about frame 59; frames 60-75 are them walking in (x 0.25-0.75 of the width).
EMPTY, ENTERING = range(0, 55), range(60, 76)


def frames_of(video: str, count: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(need_shared(video)))
    out = [cap.read()[1] for _ in range(count)]
    cap.release()
    assert all(f is not None for f in out)
    return out


@pytest.fixture(scope="module")
def corridor() -> list[np.ndarray]:
    return frames_of(CORRIDOR, 80)


def changes(frames: list[np.ndarray], **kw) -> list[float | None]:
    detector = ChangeDetector(**kw)
    return [detector.update(f) for f in frames]


def test_an_empty_scene_is_unchanged_and_a_person_walking_in_is_a_change(corridor):
    values = changes(corridor)
    assert values[0] is None  # nothing to compare the first frame with
    gate_area = CameraConfig(id="c", usb=0).motion.min_area
    assert max(values[i] for i in EMPTY[1:]) < gate_area
    assert sum(values[i] >= gate_area for i in ENTERING) >= len(ENTERING) - 1


def test_sensor_noise_on_a_still_scene_is_not_a_change():
    still = frames_of(STAGE, 1)[0]
    rng = np.random.default_rng(1)
    noisy = [np.clip(still + rng.normal(0, 3, still.shape), 0, 255).astype(np.uint8) for _ in range(10)]
    values = changes(noisy)
    assert max(v for v in values[1:]) < CameraConfig(id="c", usb=0).motion.min_area


def test_the_frame_is_shrunk_by_an_integer_factor():
    detector = ChangeDetector(scale_px=160)
    assert detector.small_grey(np.zeros((432, 768, 3), np.uint8)).shape == (108, 192)
    assert detector.small_grey(np.zeros((1080, 1920, 3), np.uint8)).shape == (90, 160)
    assert detector.small_grey(np.zeros((100, 150, 3), np.uint8)).shape == (100, 150)


def test_a_zone_excludes_change_outside_it(corridor):
    right_strip = [(0.8, 0.0), (1.0, 0.0), (1.0, 1.0), (0.8, 1.0)]  # the person walks in at x 0.25-0.75
    inside = changes(corridor[58:70], zone=right_strip)
    whole = changes(corridor[58:70])
    assert max(whole[1:]) > 0.05
    assert max(inside[1:]) < CameraConfig(id="c", usb=0).motion.min_area


def test_zone_mask_and_face_centres():
    zone = [(0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0)]
    mask = zone_mask(zone, 100, 50)
    assert mask[:, :45].all() and not mask[:, 55:].any()
    dets = Detections(np.array([[10, 10, 30, 30], [70, 10, 90, 30], [40, 10, 60, 30]], np.float32),
                      np.ones(3, np.float32), np.zeros((3, 5, 2), np.float32))
    assert in_zone(dets, zone, 100, 50).tolist() == [True, False, True]  # centre x 50 is on the edge: inside
    assert in_zone(dets, None, 100, 50).all()


def test_gate_skips_an_unchanged_camera_and_runs_on_change_periodically_and_for_live_tracks():
    gate = DetectGate(min_area=0.002, detect_every_s=1.0, hold_s=0.5)
    assert gate.reason(None, 0.0) == UNMEASURED
    gate.detected(0.0, faces=0)
    assert gate.reason(0.0, 0.1) is None
    assert gate.reason(0.01, 0.2) == MOTION
    assert gate.reason(0.0, 0.99) is None
    assert gate.reason(0.0, 1.0) == PERIODIC
    gate.detected(1.0, faces=1)  # a face: a live track keeps detection on without any change …
    assert gate.reason(0.0, 1.1) == TRACK
    gate.detected(1.1, faces=0)
    assert gate.reason(0.0, 1.4) == TRACK  # … for hold_s after the last face (1.0 + 0.5 s here) …
    assert gate.reason(0.0, 1.6) is None  # … then the camera is idle again
    assert gate.reason(0.0, 2.1) == PERIODIC


def _frame(cam: CameraConfig, image: np.ndarray, t: float, change: float | None, index: int = 0) -> Frame:
    return Frame(cam.id, image, t, datetime(2026, 1, 1, tzinfo=UTC), index, cam, change)


@pytest.fixture(scope="module")
def pipeline():
    from facegate.pipeline import FacePipeline

    return FacePipeline.load("default", threads=1, with_liveness=False)


def test_the_inference_stage_runs_the_detector_only_when_the_gate_says_so(corridor, pipeline):
    cam = Config.model_validate({"cameras": [{"id": "hall", "file": str(need_shared(CORRIDOR))}]}).cameras[0]
    stage = InferenceStage(pipeline, FrameSlots(), lambda r: None, min_face_px=40)
    detector = ChangeDetector(threshold=cam.motion.threshold, scale_px=cam.motion.scale_px)
    ran = []
    for i, image in enumerate(corridor):  # 10 frames/s: 8 s
        frame = _frame(cam, image, 100.0 + i / 10, detector.update(image), i)
        if stage.wants_detection(frame):
            stage.analyse([frame])
            ran.append(i)
    assert stage.stats.detected == len(ran)
    empty = [i for i in ran if i in EMPTY]
    # the empty scene: the first frame (nothing to compare with), then once a second
    assert empty == [0, 10, 20, 30, 40, 50], ran
    assert set(ENTERING[1:]) <= set(ran)  # the person walking in: every frame
    # motion off: every frame, as before gating existed
    off = cam.model_copy(update={"motion": cam.motion.model_copy(update={"enabled": False})})
    assert all(stage.wants_detection(_frame(off, corridor[0], 200.0 + i, 0.0)) for i in range(5))
    assert stage.wants_detection(Frame("hand-made", corridor[0], 1.0, datetime.now(UTC), 0))  # no camera config


def test_a_zone_drops_faces_whose_centre_is_outside_it(pipeline):
    image = frames_of(STAGE, 151)[150]  # Miranda's face, box about x 209-295, y 21-136 of 640×360
    around = [(0.25, 0.0), (0.5, 0.0), (0.5, 0.5), (0.25, 0.5)]
    elsewhere = [(0.6, 0.5), (1.0, 0.5), (1.0, 1.0), (0.6, 1.0)]
    kept = {}
    for name, zone in (("around", around), ("elsewhere", elsewhere), ("none", None)):
        cam = CameraConfig(id="stage", usb=0, zone=zone)
        stage = InferenceStage(pipeline, FrameSlots(), lambda r: None, min_face_px=40)
        (result,) = stage.analyse([_frame(cam, image, 1.0, None)])
        kept[name] = (len(result.dets), stage.stats.outside_zone, stage.stats.embedded)
    assert kept["none"] == (1, 0, 1)
    assert kept["around"] == (1, 0, 1)
    assert kept["elsewhere"] == (0, 1, 0)  # neither tracked nor embedded


@pytest.mark.parametrize(("zone", "message"), [
    ([[0, 0], [1, 1]], "at least 3 points"),
    ([[0, 0], [1.5, 0], [1, 1]], "outside 0..1"),
    ([[0, 0], [0.5, 0.5], [1, 1]], "no area"),
])
def test_bad_zones_are_refused_with_the_reason(zone, message):
    with pytest.raises(ValidationError, match=message):
        CameraConfig(id="c", usb=0, zone=zone)


def test_motion_settings_are_bounded():
    with pytest.raises(ValidationError):
        CameraConfig(id="c", usb=0, motion={"threshold": 0})
    with pytest.raises(ValidationError):
        CameraConfig(id="c", usb=0, motion={"min_area": 0})
    with pytest.raises(ValidationError):
        CameraConfig(id="c", usb=0, motion={"detect_every_s": 0})


def test_a_person_standing_still_at_an_idle_door_is_still_granted(tmp_path):
    """A still picture of the enrolled performer (stage clip frame 150, held for 4 s with sensor noise): no change
    after the first frame, yet the face found on it keeps detection on and the track is granted, then not
    embedded again on every frame."""
    import threading

    from facegate.gallery import Gallery
    from facegate.gallery.enrol import Enroller, pack_binding
    from facegate.pipeline import FacePipeline
    from facegate.runtime.service import Service
    from facegate.runtime.stages import build_stages

    still = frames_of(STAGE, 151)[150]
    video = tmp_path / "standing.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (still.shape[1], still.shape[0]))
    rng = np.random.default_rng(7)
    for _ in range(40):
        writer.write(np.clip(still + rng.normal(0, 2, still.shape), 0, 255).astype(np.uint8))
    writer.release()
    pipeline = FacePipeline.load("default", with_liveness=False)
    with Gallery(tmp_path / "gallery", pack=pack_binding(pipeline)) as gallery:
        photo = need_shared("data", "enroll_examples", "single", "lin-manuel-miranda.png")
        (outcome,) = Enroller(gallery, pipeline).enrol("Lin-Manuel Miranda", [photo], groups=["staff"])
        assert outcome.status == "enrolled"
    config = Config.model_validate({
        "cameras": [{"id": "door", "file": str(video), "door": "front"}],
        "doors": [{"id": "front", "allowed_groups": ["staff"], "cooldown_s": 0}],
        "gallery": {"path": str(tmp_path / "gallery"), "refresh_s": 0},
        "audit": {"path": str(tmp_path / "audit.jsonl")},
        "service": {"state_dir": str(tmp_path / "state"), "stdout_events": False},
        "decision": {"max_frame_age_s": 1.5},  # a shared 2-core machine
    })
    stages = build_stages(config, [], [])
    service = Service(config, stages=stages)
    done = threading.Event()
    worker = threading.Thread(target=lambda: (service.run(), done.set()), daemon=True)
    worker.start()
    assert done.wait(180), "the service did not stop when its file camera ended"
    assert stages.stats.counts["grant"] >= 1, stages.stats.counts
    inf = stages.inference.stats
    assert inf.detected == inf.frames  # no change, but the live track kept the detector running
    assert 0 < inf.embedded < inf.faces  # the granted track was not embedded on every frame


def test_busy_cameras_go_first_and_idle_cameras_periodic_detections_are_spread():
    cams = [CameraConfig(id=f"c{i:02d}", usb=i) for i in range(11)]
    stage = InferenceStage(None, FrameSlots(), lambda r: None, max_batch=8)  # schedule() needs no model
    blank = np.zeros((36, 64, 3), np.uint8)
    for i, cam in enumerate(cams):  # every camera was last detected at a different time, all more than 1 s ago
        stage.detection_reason(_frame(cam, blank, 0.0, None))
        stage.gates[cam.id].detected(float(i) / 10, faces=0)
    frames = [_frame(cam, blank, 5.0, 0.0) for cam in cams[:10]] + [_frame(cams[10], blank, 5.0, 0.5)]
    chunks = stage.schedule(frames)
    assert [[f.camera_id for f in c] for c in chunks] == [["c10"], ["c00", "c01"]]  # changed first, 2 oldest
    assert stage.periodic_budget == 2
    for f in chunks[1]:  # what analyse records for a detection run
        stage.gates[f.camera_id].detected(5.0, faces=0)
    again = stage.schedule([_frame(cam, blank, 5.1, 0.0) for cam in cams[:10]])
    assert [[f.camera_id for f in c] for c in again] == [["c02", "c03"]]  # the skipped ones stay due
