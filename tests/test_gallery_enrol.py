"""Enrolment quality gates on real photos (built-in pack): size, blur, pose, face count, duplicates."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import need_shared

from facegate.detections import Detections
from facegate.gallery import Gallery
from facegate.gallery.enrol import Enroller, QualityLimits, assess, sharpness, yaw_ratio
from facegate.imaging import load_image


@pytest.fixture(scope="module")
def pipeline():
    from facegate.pipeline import FacePipeline

    need_shared("data", "enroll_examples")
    return FacePipeline.load("default", with_liveness=False)


def photo(*parts: str) -> Path:
    return need_shared("data", "enroll_examples", *parts)


def test_sharp_frontal_photo_passes(pipeline) -> None:
    image = load_image(photo("single", "obama.jpg"))
    reason, quality = assess(image, pipeline.detect([image])[0], QualityLimits())
    assert reason is None, reason
    assert quality["inter_eye_px"] > 100 and quality["sharpness"] > 100 and abs(quality["yaw_ratio"]) < 0.2


def test_blurred_photo_is_refused(pipeline) -> None:
    image = cv2.GaussianBlur(load_image(photo("single", "obama.jpg")), (0, 0), 5)
    dets = pipeline.detect([image])[0]
    assert len(dets) == 1
    reason, quality = assess(image, dets, QualityLimits())
    assert reason is not None and reason.startswith("face too blurred"), reason
    sharp = load_image(photo("single", "obama.jpg"))
    assert sharpness(sharp, dets.boxes[0]) > 5 * quality["sharpness"]


def test_small_face_is_refused(pipeline) -> None:
    image = load_image(photo("single", "obama-240p.jpg"))  # inter-eye ≈ 26 px
    reason, _ = assess(image, pipeline.detect([image])[0], QualityLimits())
    assert reason is not None and reason.startswith("face too small"), reason


def test_turned_head_is_refused() -> None:
    """Pose gate on landmarks: the nose moved sideways by 0.6 inter-eye distances reads as a strong yaw."""
    frontal = np.array([[100, 100], [160, 100], [130, 130], [108, 160], [152, 160]], np.float32)
    assert yaw_ratio(frontal) == pytest.approx(0.0)
    turned = frontal.copy()
    turned[2, 0] += 0.6 * 60
    assert yaw_ratio(turned) == pytest.approx(0.6)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (300, 300, 3), np.uint8)  # textured, so only the pose gate can refuse it
    dets = Detections(np.array([[70, 60, 190, 200]]), np.array([0.99]), turned[None])
    reason, quality = assess(image, dets, QualityLimits())
    assert reason is not None and reason.startswith("head turned too far"), (reason, quality)


def test_face_count_gate(pipeline) -> None:
    for name, expected in (("coffee.png", "no face found"), ("two_people.jpg", "2 faces found")):
        image = load_image(photo("multi", name))
        reason, _ = assess(image, pipeline.detect([image])[0], QualityLimits())
        assert reason is not None and reason.startswith(expected), reason


def test_duplicate_check_and_force(pipeline, tmp_path: Path) -> None:
    with Gallery(tmp_path / "g") as gallery:
        enroller = Enroller(gallery, pipeline)
        first = enroller.enrol("obama", [photo("knn_examples", "train", "obama", "obama.jpg")])
        assert first[0].enrolled, first[0].reason
        same_person_other_name = enroller.enrol("barack", [photo("knn_examples", "test", "obama1.jpg")])
        assert not same_person_other_name[0].enrolled
        assert "the gallery would admit this face as 'obama'" in str(same_person_other_name[0].reason)
        more_of_same = enroller.enrol("obama", [photo("knn_examples", "test", "obama1.jpg")])
        assert more_of_same[0].enrolled, more_of_same[0].reason  # more photos of the same identity are fine
        forced = Enroller(gallery, pipeline, force=True).enrol("barack", [photo("single", "obama_small.jpg")])
        assert forced[0].enrolled, forced[0].reason
        assert {i.name: i.templates for i in gallery.identities()} == {"obama": 2, "barack": 1}


class _NanEmbeddings:
    """The real pipeline with a fault injected: the first face's embedding comes back NaN (as a broken model or a
    numerically unstable input would give). Everything else is the real detector and recogniser."""

    def __init__(self, real) -> None:
        self._real = real

    def __getattr__(self, name: str):
        return getattr(self._real, name)

    def analyse(self, images, **kwargs):
        out = self._real.analyse(images, **kwargs)
        for dets in out:
            if len(dets):
                dets.data["embeddings"][0] = np.nan
        return out


def test_identify_never_prints_nan(pipeline, tmp_path: Path) -> None:
    import json

    from facegate.gallery.enrol import identify

    with Gallery(tmp_path / "g") as gallery:
        Enroller(gallery, pipeline).enrol("obama", [photo("knn_examples", "train", "obama", "obama.jpg")])
        found = identify(gallery, _NanEmbeddings(pipeline), [photo("knn_examples", "test", "obama_and_biden.jpg")])
    json.dumps(found, allow_nan=False)  # raises ValueError on any NaN/inf value
    faces = found[0]["faces"]
    assert len(faces) == 3
    broken = [f for f in faces if "error" in f]
    assert len(broken) == 1 and broken[0]["decision"] == "unknown" and broken[0]["score"] is None
    assert broken[0]["matches"] == []
    assert sorted(f["decision"] for f in faces if "error" not in f) in (["obama", "unknown"], ["unknown", "unknown"])
