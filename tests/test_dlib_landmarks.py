"""facegate's numpy shape predictor against dlib-bin's ``shape_predictor`` on real faces: identical integer points.

Boxes come from dlib's HOG detector (upsample 1; 0 for photos over 1000 px, to keep the test quick), the boxes the
model was trained on, plus random perturbations (scale 0.7–1.4, shifts, some partly outside the image) so that the
feature pixels fall on other pixels, off the image, and the trees take other paths.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from conftest import need_dlib, need_shared

from facegate.errors import ModelError
from facegate.imaging import load_image
from facegate.packs.dlib_landmarks import MODEL_FILE_NAME, ShapePredictor5, default_model_path, read_shape_predictor
from facegate.packs.dlib_serial import DlibReader

LFW_IMAGES = 40


def enrol_images() -> list[Path]:
    """single/, knn_examples/ and multi/ photos (duplicated files once), plus LFW deep-funneled images."""
    root = need_shared("data", "enroll_examples")
    paths = [
        *sorted((root / "single").iterdir()),
        *sorted((root / "knn_examples").rglob("*.*")),
        *sorted((root / "multi").iterdir()),
    ]
    seen, unique = set(), []
    for path in paths:
        if path.suffix.lower() not in (".jpg", ".jpeg", ".png"):
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            unique.append(path)
    return unique


def lfw_images(count: int = LFW_IMAGES) -> list[Path]:
    """``count`` LFW deep-funneled images spread over the identities (deterministic)."""
    root = need_shared("data", "lfw", "lfw-deepfunneled")
    people = sorted(p for p in root.iterdir() if p.is_dir())
    step = max(1, len(people) // count)
    return [sorted(p.glob("*.jpg"))[0] for p in people[::step][:count]]


#: Images whose longer side exceeds this are searched without upsampling: their faces are large, and upsampling a
#: 2000-px photo costs seconds per image in dlib's HOG detector.
UPSAMPLE_MAX_SIDE = 1000


@cache
def hog_boxes(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(BGR image, N×4 int64 dlib rectangles from dlib's HOG detector, one upsampling up to UPSAMPLE_MAX_SIDE)."""
    image = load_image(path)
    upsample = 1 if max(image.shape[:2]) <= UPSAMPLE_MAX_SIDE else 0
    rects = _detector()(np.ascontiguousarray(image[:, :, ::-1]), upsample)
    boxes = np.array([[r.left(), r.top(), r.right(), r.bottom()] for r in rects], np.int64).reshape(-1, 4)
    return image, boxes


@cache
def _detector():
    return need_dlib().get_frontal_face_detector()


def perturbed(boxes: np.ndarray, shape: tuple[int, ...], rng: np.random.Generator, per_box: int) -> np.ndarray:
    """Random boxes around each box: side × U(0.7, 1.4), centre shifted by up to ±30 % of the side; every third
    one is pushed across the nearest image border so that part of it lies outside."""
    out = []
    height, width = shape[:2]
    for left, top, right, bottom in boxes:
        side = right - left
        for k in range(per_box):
            half = side * rng.uniform(0.7, 1.4) / 2
            cx = (left + right) / 2 + rng.uniform(-0.3, 0.3) * side
            cy = (top + bottom) / 2 + rng.uniform(-0.3, 0.3) * side
            if k % 3 == 2:
                # Move the centre to 0.2–0.6·half from the nearest border: the box then sticks out of the image.
                gaps = [cx, width - 1 - cx, cy, height - 1 - cy]
                nearest = int(np.argmin(gaps))
                shift = gaps[nearest] - half * rng.uniform(0.2, 0.6)
                if nearest < 2:
                    cx += -shift if nearest == 0 else shift
                else:
                    cy += -shift if nearest == 2 else shift
            out.append([round(cx - half), round(cy - half), round(cx + half), round(cy + half)])
    return np.array(out, np.int64).reshape(-1, 4)


@pytest.fixture(scope="module")
def predictor() -> ShapePredictor5:
    return ShapePredictor5.load()


@pytest.fixture(scope="module")
def reference():
    dlib = need_dlib()
    return dlib, dlib.shape_predictor(str(default_model_path()))


def dlib_points(reference, rgb_or_grey: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    dlib, sp = reference
    return np.array(
        [[(p.x, p.y) for p in sp(rgb_or_grey, dlib.rectangle(*map(int, b))).parts()] for b in boxes], np.float32
    ).reshape(-1, 5, 2)


def test_model_arrays_have_the_documented_layout(predictor: ShapePredictor5) -> None:
    m = predictor.model
    assert m.initial_shape.shape == (5, 2)
    assert m.split_idx.shape == (15, 500, 15, 2) and m.split_thresh.shape == (15, 500, 15)
    assert m.leaves.shape == (15, 500, 16, 5, 2)
    assert m.anchors.shape == (15, 800) and m.deltas.shape == (15, 800, 2)
    # First initial-shape point and value ranges as in ../shared/notes/dlib-models.md §3.1.
    np.testing.assert_allclose(m.initial_shape[0], [0.77625, 0.34554], atol=1e-5)
    assert np.abs(m.split_thresh).max() <= 64 and np.abs(m.leaves).max() <= 0.03
    assert np.abs(m.deltas).max() < 0.51 and m.anchors.max() == 4  # "range ±0.5" in the notes; 0.501 exactly


def test_matches_dlib_on_hog_and_perturbed_boxes(predictor: ShapePredictor5, reference) -> None:
    rng = np.random.default_rng(20261130)
    faces = cases = outside = 0
    for path in enrol_images() + lfw_images():
        image, boxes = hog_boxes(path)
        if len(boxes) == 0:
            continue
        faces += len(boxes)
        all_boxes = np.concatenate([boxes, perturbed(boxes, image.shape, rng, per_box=4 if len(boxes) < 5 else 1)])
        h, w = image.shape[:2]
        outside += int(np.sum((all_boxes[:, :2] < 0).any(1) | (all_boxes[:, 2] >= w) | (all_boxes[:, 3] >= h)))
        ours = predictor.predict(image, all_boxes)  # BGR in
        theirs = dlib_points(reference, np.ascontiguousarray(image[:, :, ::-1]), all_boxes)  # RGB to dlib
        assert ours.dtype == np.float32 and ours.shape == (len(all_boxes), 5, 2)
        mismatched = np.flatnonzero(np.any(ours != theirs, axis=(1, 2)))
        assert len(mismatched) == 0, f"{path.name}: boxes {all_boxes[mismatched].tolist()} differ from dlib"
        cases += len(all_boxes)
    assert faces >= 100 and cases >= 250 and outside >= 20, (faces, cases, outside)


def test_grey_input_matches_dlib_and_bgr(predictor: ShapePredictor5, reference) -> None:
    image, boxes = hog_boxes(need_shared("data", "enroll_examples", "multi", "2008_004176.jpg"))
    assert len(boxes) >= 3
    boxes = np.concatenate([boxes, perturbed(boxes, image.shape, np.random.default_rng(7), per_box=3)])
    grey = (image.sum(axis=2, dtype=np.uint16) // 3).astype(np.uint8)
    ours_grey = predictor.predict(grey, boxes)
    np.testing.assert_array_equal(ours_grey, dlib_points(reference, grey, boxes))
    np.testing.assert_array_equal(ours_grey, predictor.predict(image, boxes))


def test_points_follow_dlib_order(predictor: ShapePredictor5) -> None:
    """Point 0/1 on the image's right eye, 2/3 on the left, 4 (nose) below the eyes (notes §3.3)."""
    image, boxes = hog_boxes(need_shared("data", "enroll_examples", "single", "obama.jpg"))
    p = predictor.predict(image, boxes)[0]
    assert p[0, 0] > p[1, 0] > p[3, 0] > p[2, 0]
    assert p[4, 1] > p[:4, 1].max()


def test_batch_equals_single_and_empty(predictor: ShapePredictor5) -> None:
    image, boxes = hog_boxes(need_shared("data", "enroll_examples", "multi", "2007_007763.jpg"))
    batch = predictor.predict(image, boxes)
    for i, box in enumerate(boxes):
        np.testing.assert_array_equal(predictor.predict(image, box[None]), batch[i : i + 1])
    assert predictor.predict(image, np.zeros((0, 4), np.int64)).shape == (0, 5, 2)


def test_bad_inputs_raise_value_error(predictor: ShapePredictor5) -> None:
    image = np.zeros((50, 60, 3), np.uint8)
    with pytest.raises(ValueError, match="boxes"):
        predictor.predict(image, np.array([[1.5, 2, 30, 40]]))
    with pytest.raises(ValueError, match="boxes"):
        predictor.predict(image, np.array([1, 2, 30, 40]))
    with pytest.raises(ValueError, match="image"):
        predictor.predict(image.astype(np.float32), np.array([[1, 2, 30, 40]]))


def test_missing_truncated_and_corrupt_files_raise_model_error(tmp_path: Path) -> None:
    data = default_model_path().read_bytes()
    header = DlibReader(data, "header")
    header.int()
    header.float_matrix()
    forest = header.pos  # control byte of the cascade count
    with pytest.raises(ModelError, match="not found"):
        ShapePredictor5.load(tmp_path / MODEL_FILE_NAME)
    cases = {
        "truncated_header.dat": data[:30],
        "truncated_forest.dat": data[: len(data) // 2],
        "truncated_end.dat": data[:-3],
        "trailing.dat": data + b"\x01\x05",
        "bad_control.dat": data[:forest] + b"\x00" + data[forest + 1 :],
        "bad_count.dat": data[:forest] + b"\x01\x0e" + data[forest + 2 :],
        "bad_version.dat": b"\x01\x02" + data[2:],
    }
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ModelError) as info:
            read_shape_predictor(path)
        assert str(path) in str(info.value), name
