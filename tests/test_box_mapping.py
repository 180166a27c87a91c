"""RetinaFace box → dlib HOG rectangle mapping (facegate.packs.box_mapping), against dlib's own HOG detector and
5-point shape predictor (dlib-bin, the reference) on LFW deep-funneled faces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import need_dlib, need_shared
from retinaface.weights import WEIGHTS

from facegate.imaging import load_image
from facegate.packs import box_mapping as bm
from facegate.packs.manifest import load_manifest
from facegate.packs.nms import iou_matrix
from facegate.packs.retinaface import RetinaFaceDetector

#: LFW images used: every 57th of the sorted tree (151 images; bench/fit_box_mapping.py fits on every 10th).
LFW_STRIDE = 57


def test_rect_is_square_inclusive_and_follows_the_constants() -> None:
    boxes = np.array([[100.0, 50.0, 200.0, 190.0], [10.3, 20.7, 60.1, 90.2]])
    rects = bm.dlib_rect_from_detection(boxes)
    assert rects.dtype == np.int64 and rects.shape == (2, 4)
    np.testing.assert_array_equal(rects[:, 2] - rects[:, 0], rects[:, 3] - rects[:, 1])  # square
    w, h = 100.0, 140.0
    side = round(bm.SIDE_PER_WIDTH * w + bm.SIDE_PER_HEIGHT * h)
    cx, cy = 150 + bm.SHIFT_X_PER_WIDTH * w, 120 + bm.SHIFT_Y_PER_HEIGHT * h
    left, top = np.floor(cx - side / 2 + 0.5), np.floor(cy - side / 2 + 0.5)
    assert rects[0].tolist() == [left, top, left + side - 1, top + side - 1]  # dlib: right = left + width − 1
    np.testing.assert_allclose(bm.rect_to_xyxy(rects[:1]), [[left, top, left + side, top + side]])


def test_landmark_centred_rect_uses_the_landmark_centroid() -> None:
    boxes = np.array([[100.0, 50.0, 200.0, 190.0]])
    landmarks = np.array([[[130, 100], [170, 100], [150, 125], [135, 150], [165, 150]]], float)  # centroid 150,125
    rect = bm.dlib_rect_from_detection(boxes, landmarks)[0]
    centre = ((rect[0] + rect[2] + 1) / 2, (rect[1] + rect[3] + 1) / 2)
    expected = (150 + bm.LM_SHIFT_X_PER_WIDTH * 100, 125 + bm.LM_SHIFT_Y_PER_HEIGHT * 140)
    np.testing.assert_allclose(centre, expected, atol=0.5)


def test_bad_input_raises() -> None:
    with pytest.raises(ValueError, match="N×4"):
        bm.dlib_rect_from_detection(np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        bm.dlib_rect_from_detection(np.array([[0, 0, np.nan, 10]]))
    with pytest.raises(ValueError, match="N×5×2"):
        bm.dlib_rect_from_detection(np.zeros((2, 4)), np.zeros((1, 5, 2)))
    assert bm.dlib_rect_from_detection(np.zeros((0, 4))).shape == (0, 4)


@pytest.fixture(scope="module")
def lfw_pairs():
    """(images, RetinaFace boxes P×4, landmarks P×5×2, HOG dlib rects P×4) for faces both detectors find."""
    dlib = need_dlib()
    root = need_shared("data", "lfw", "lfw-deepfunneled")
    files: list[Path] = sorted(root.glob("*/*.jpg"))[::LFW_STRIDE]
    hog = dlib.get_frontal_face_detector()
    detector = RetinaFaceDetector(WEIGHTS, load_manifest("default").detector, threads=1)
    images, boxes, landmarks, rects = [], [], [], []
    for path in files:
        image = load_image(path)
        found = hog(np.ascontiguousarray(image[..., ::-1]), 1)
        dets = detector.detect([image])[0]
        if not len(found) or not len(dets):
            continue
        hb = np.array([[r.left(), r.top(), r.right(), r.bottom()] for r in found])
        centres = (hb[:, :2] + hb[:, 2:] + 1) / 2
        h = int(np.argmin(np.linalg.norm(centres - 125, axis=1)))  # the LFW subject is centred
        iou = iou_matrix(bm.rect_to_xyxy(hb[h : h + 1]), dets.boxes)[0]
        if iou.max() < 0.3:
            continue
        images.append(image)
        boxes.append(dets.boxes[int(np.argmax(iou))])
        landmarks.append(dets.landmarks[int(np.argmax(iou))])
        rects.append(hb[h])
    assert len(rects) >= 140, f"only {len(rects)} of {len(files)} LFW images had a face found by both detectors"
    return images, np.array(boxes), np.array(landmarks), np.array(rects)


def per_face_iou(rects: np.ndarray, hog: np.ndarray) -> np.ndarray:
    return np.diag(iou_matrix(bm.rect_to_xyxy(rects), bm.rect_to_xyxy(hog)))


def test_mapped_rect_overlaps_dlib_hog_rect(lfw_pairs) -> None:
    _, boxes, landmarks, hog = lfw_pairs
    raw = per_face_iou(np.floor(boxes + 0.5).astype(np.int64) - [0, 0, 1, 1], hog)
    box_only = per_face_iou(bm.dlib_rect_from_detection(boxes), hog)
    with_landmarks = per_face_iou(bm.dlib_rect_from_detection(boxes, landmarks), hog)
    # With landmarks the bar of the issue (median IoU ≥ 0.8) holds with margin (fit: 0.867 on 797 faces).
    assert np.median(with_landmarks) >= 0.8
    # Box only, the population median is 0.802 (797 faces, see box_mapping's docstring): HOG reports box sides in
    # 6/5 steps, which caps any box-only mapping near there. On this 150-face sample the median's sampling spread
    # is about ±0.02, so the bar is 0.78; the raw box sits near 0.70.
    assert np.median(box_only) >= 0.78
    assert np.median(box_only) > np.median(raw) + 0.07


def test_shape_predictor_on_mapped_rect_agrees_with_dlib_pipeline(lfw_pairs) -> None:
    """What the mapping is for: dlib's 5 points on the mapped rect ≈ on the HOG rect it was trained with."""
    dlib = need_dlib()
    import face_recognition_models

    predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location())
    images, boxes, landmarks, hog = lfw_pairs

    def points(image: np.ndarray, rect: np.ndarray) -> np.ndarray:
        shape = predictor(np.ascontiguousarray(image[..., ::-1]), dlib.rectangle(*(int(v) for v in rect)))
        return np.array([[p.x, p.y] for p in shape.parts()], float)

    def errors(rects: np.ndarray) -> np.ndarray:
        out = []
        for image, rect, ref_rect in zip(images, rects, hog, strict=True):
            ref = points(image, ref_rect)
            iod = np.linalg.norm(ref[[0, 1]].mean(0) - ref[[2, 3]].mean(0))
            out.append(np.linalg.norm(points(image, rect) - ref, axis=1).mean() / iod)
        return np.array(out)

    raw = errors(np.floor(boxes + 0.5).astype(np.int64) - [0, 0, 1, 1])
    mapped = errors(bm.dlib_rect_from_detection(boxes))
    mapped_lm = errors(bm.dlib_rect_from_detection(boxes, landmarks))
    # Fit set: median 0.005 (mapped) vs 0.026 (raw), in inter-ocular distances.
    assert np.median(mapped) < 0.012 and np.median(mapped_lm) < 0.012
    assert np.median(mapped) < 0.5 * np.median(raw)
