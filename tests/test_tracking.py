"""FaceTracker: ids stay with moving faces, new faces get new ids, unseen tracks expire, landmarks separate faces."""

from __future__ import annotations

import numpy as np
import pytest

from facegate.detections import Detections
from facegate.errors import UsageError
from facegate.runtime.tracking import FaceTracker, box_iou, landmark_agreement

# 5 landmarks of a frontal face inside a unit box (image order: eyes, nose, mouth corners), from ArcFace's template
UNIT_LM = np.array([[0.34, 0.46], [0.66, 0.46], [0.50, 0.64], [0.37, 0.82], [0.63, 0.82]], np.float32)


def faces(*boxes: tuple[float, float, float, float]) -> Detections:
    b = np.array(boxes, np.float32).reshape(-1, 4)
    size = (b[:, 2:] - b[:, :2])[:, None, :]
    lm = b[:, None, :2] + UNIT_LM[None] * size
    return Detections(b, np.full(len(b), 0.9, np.float32), lm)


def test_box_iou_matches_hand_computed_values():
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 0, 0]], np.float32)
    np.testing.assert_allclose(box_iou(a, b), [[1.0, 50 / 150, 0.0, 0.0]], rtol=1e-6)


def test_landmark_agreement_is_one_for_same_points_and_falls_with_distance():
    d = faces((0, 0, 100, 100), (10, 0, 110, 100), (100, 0, 200, 100))
    agree = landmark_agreement(d.landmarks[:1], d.boxes[:1], d.landmarks)
    assert agree[0, 0] == pytest.approx(1.0)
    assert agree[0, 1] == pytest.approx(0.9, abs=1e-5)  # moved 10 px of a 100 px face
    assert agree[0, 2] == 0.0


def test_ids_follow_moving_faces_and_new_faces_get_new_ids():
    tr = FaceTracker()
    ids0 = tr.update(faces((0, 0, 100, 100), (300, 0, 400, 100)), now=0.0)
    assert ids0.dtype == np.int64 and ids0.tolist() == [1, 2]
    # both move 10 px right; order in the frame reversed; a third face appears
    ids1 = tr.update(faces((310, 0, 410, 100), (600, 0, 700, 100), (10, 0, 110, 100)), now=0.04)
    assert ids1.tolist() == [2, 3, 1]
    assert tr.update(Detections.empty(), now=0.08).tolist() == []


def test_unseen_tracks_expire_after_timeout_and_ids_are_not_reused():
    tr = FaceTracker(timeout_s=0.5)
    tr.update(faces((0, 0, 100, 100)), now=0.0)
    tr.update(faces((0, 0, 100, 100)), now=0.4)
    assert tr.expired == []
    ids = tr.update(faces((0, 0, 100, 100)), now=1.0)  # 0.6 s unseen > 0.5 s
    assert tr.expired == [1]
    assert ids.tolist() == [2]
    assert tr.active_ids == [2]
    assert tr.expire(5.0) == [2] and tr.active_ids == []


def test_each_tracker_owns_its_id_counter():
    a, b = FaceTracker(), FaceTracker()
    assert a.update(faces((0, 0, 50, 50)), 0.0).tolist() == [1]
    assert b.update(faces((0, 0, 50, 50)), 0.0).tolist() == [1]


def test_a_jump_far_away_starts_a_new_track():
    tr = FaceTracker()
    tr.update(faces((0, 0, 100, 100)), 0.0)
    assert tr.update(faces((150, 0, 250, 100)), 0.04).tolist() == [2]


def test_greedy_pairs_best_affinity_first():
    tr = FaceTracker()
    tr.update(faces((0, 0, 100, 100), (60, 0, 160, 100)), 0.0)
    # the face at x=55 overlaps both tracks; it must go to track 2 (closer), the one at x=5 to track 1
    assert tr.update(faces((55, 0, 155, 100), (5, 0, 105, 100)), 0.04).tolist() == [2, 1]


def test_bad_parameters_are_usage_errors():
    with pytest.raises(UsageError, match="timeout_s"):
        FaceTracker(timeout_s=0)
    with pytest.raises(UsageError, match="min_affinity"):
        FaceTracker(min_affinity=1.5)
