"""The built-in pack end to end: facegate's full path against dlib's own face_recognition pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from facegate.imaging import bgr_to_rgb, load_image
from facegate.pipeline import FacePipeline
from tests.conftest import need_dlib, need_shared


@pytest.fixture(scope="module")
def pipeline() -> FacePipeline:
    return FacePipeline.load("dlib")


def _lfw_images(count: int) -> list:
    root = need_shared("data", "lfw", "lfw-deepfunneled")
    people = sorted(p for p in root.iterdir() if p.is_dir())
    step = max(1, len(people) // (count * 2))
    images = []
    for person in people[::step]:
        images.extend(sorted(person.glob("*.jpg"))[:1])
    return images[: count * 2]


def test_full_path_agrees_with_dlib_pipeline(pipeline):
    """RetinaFace box → mapped box → numpy landmarks → exact chip → ONNX ResNet, against dlib's HOG (1 upsample) →
    shape predictor → compute_face_descriptor on the same face. Issue 2 asks median distance ≤ 0.08 over ≥ 50 faces
    (dlib's same-person threshold is 0.6, so 0.08 is the same face to a recogniser)."""
    dlib = need_dlib()
    import face_recognition_models

    hog = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location())
    resnet = dlib.face_recognition_model_v1(face_recognition_models.face_recognition_model_location())
    distances = []
    for path in _lfw_images(60):
        image = load_image(path)
        rgb = bgr_to_rgb(image)
        rects = hog(rgb, 1)
        dets = pipeline.detect([image])[0]
        if len(rects) != 1 or len(dets) == 0:
            continue  # compare only faces both pipelines see unambiguously
        centre = np.array([(rects[0].left() + rects[0].right()) / 2, (rects[0].top() + rects[0].bottom()) / 2])
        box_centres = (dets.boxes[:, :2] + dets.boxes[:, 2:]) / 2
        face = dets[int(np.argmin(np.linalg.norm(box_centres - centre, axis=1)))]
        ours = pipeline.embed(image, face)[0]
        reference = np.array(resnet.compute_face_descriptor(rgb, predictor(rgb, rects[0])), np.float32)
        distances.append(float(np.linalg.norm(ours - reference)))
    assert len(distances) >= 50, f"only {len(distances)} faces found by both pipelines"
    median = float(np.median(distances))
    print(f"full path vs dlib: n={len(distances)} median={median:.4f} p90={np.percentile(distances, 90):.4f}")
    assert median <= 0.08


def test_same_person_closer_than_different(pipeline):
    single = need_shared("data", "enroll_examples", "single")
    obama = [load_image(single / n) for n in ("obama.jpg", "obama-720p.jpg", "obama3.jpg")]
    biden = load_image(single / "biden.jpg")
    results = pipeline.analyse([*obama, biden])
    assert all(len(r) == 1 for r in results), [len(r) for r in results]
    vectors = np.concatenate([r.data["embeddings"] for r in results])
    scores = pipeline.compare(vectors, vectors)
    assert scores[0, 1] < pipeline.threshold and scores[0, 2] < pipeline.threshold
    assert scores[0, 3] > pipeline.threshold and scores[1, 3] > pipeline.threshold


def test_batched_analyse_equals_one_by_one(pipeline):
    single = need_shared("data", "enroll_examples", "single")
    images = [load_image(single / n) for n in ("alex-lacamoire.png", "biden.jpg", "obama_small.jpg")]
    together = pipeline.analyse(images)
    for image, batched in zip(images, together, strict=True):
        alone = pipeline.analyse([image])[0]
        np.testing.assert_allclose(alone.boxes, batched.boxes, atol=1e-3)
        np.testing.assert_allclose(alone.data["embeddings"], batched.data["embeddings"], atol=1e-5)


def test_no_face_and_empty_batch(pipeline):
    coffee = load_image(need_shared("data", "enroll_examples", "multi", "coffee.png"))
    result = pipeline.analyse([coffee])[0]
    assert len(result) == 0 and result.data["embeddings"].shape == (0, pipeline.embedding_size)
    assert pipeline.analyse([]) == []
