"""YuNet detector: our numpy decoder against OpenCV's own ``cv2.FaceDetectorYN`` (the reference implementation of
the decoding in ``face_detect.cpp``) on real photos, batching, and load-time errors for a mismatching graph."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import need_shared

from facegate.errors import ImageError, ModelError
from facegate.imaging import letterbox, load_image
from facegate.packs.manifest import DetectorSpec
from facegate.packs.yunet import YuNetDetector, decode_yunet, yunet_grid

FILES = {
    "2023mar": "detection/face_detection_yunet_2023mar.onnx",
    "n_dynamic": "detection/yunet_n_dynamic.onnx",
}
PHOTOS = ["single/obama.jpg", "multi/two_people.jpg", "multi/2007_007763.jpg", "multi/bald_guys.jpg"]


def _spec(path, **kw) -> DetectorSpec:
    base = dict(kind="yunet", source={"file": str(path)}, sha256="0" * 64, score_threshold=0.6, nms_threshold=0.3)
    base.update(kw)
    return DetectorSpec(**base)


@pytest.fixture(scope="module", params=sorted(FILES))
def yunet(request):
    path = need_shared("models", FILES[request.param])
    return path, YuNetDetector(path, _spec(path, max_batch=4), threads=1)


def test_grid_is_row_major_per_stride():
    cells, strides = yunet_grid(64, 32)
    # stride 8: 8 cols × 4 rows, then stride 16: 4×2, then stride 32: 2×1
    assert len(cells) == 32 + 8 + 2
    assert cells[:9].tolist() == [[c, 0] for c in range(8)] + [[0, 1]]
    assert strides.tolist() == [8] * 32 + [16] * 8 + [32] * 2


@pytest.mark.parametrize("name", PHOTOS)
def test_matches_opencv_face_detector_yn(yunet, name):
    """Same faces, boxes, scores and landmarks as OpenCV's FaceDetectorYN on the same 640×640 letterboxed input."""
    path, det = yunet
    image = load_image(need_shared("data", "enroll_examples", name))
    ours = det.detect([image])[0]
    canvas, scale = letterbox(image, 640, 640)
    reference = cv2.FaceDetectorYN.create(str(path), "", (640, 640), 0.6, 0.3, 5000)
    _, faces = reference.detect(canvas)
    faces = np.zeros((0, 15), np.float32) if faces is None else faces
    assert len(ours) == len(faces) > 0
    faces = faces[np.argsort(-faces[:, 14], kind="stable")]
    ref_boxes = np.concatenate([faces[:, :2], faces[:, :2] + faces[:, 2:4]], axis=1) / scale
    # Boxes at the image border are clipped by us, not by OpenCV.
    h, w = image.shape[:2]
    ref_boxes[:, 0::2] = np.clip(ref_boxes[:, 0::2], 0, w)
    ref_boxes[:, 1::2] = np.clip(ref_boxes[:, 1::2], 0, h)
    np.testing.assert_allclose(ours.scores, faces[:, 14], atol=1e-4)
    np.testing.assert_allclose(ours.boxes, ref_boxes, atol=0.05 / scale + 1e-3)
    np.testing.assert_allclose(ours.landmarks, faces[:, 4:14].reshape(-1, 5, 2) / scale, atol=0.05 / scale + 1e-3)
    # facegate's order: the image-left eye and mouth corner first
    assert (ours.landmarks[:, 0, 0] < ours.landmarks[:, 1, 0]).all()
    assert (ours.landmarks[:, 3, 0] < ours.landmarks[:, 4, 0]).all()


def test_batch_equals_one_by_one(yunet):
    """A batch of images (one run for the dynamic graph, a loop for the fixed one) gives each image's own result."""
    _, det = yunet
    images = [load_image(need_shared("data", "enroll_examples", n)) for n in PHOTOS[:3]]
    together = det.detect(images)
    for image, batched in zip(images, together, strict=True):
        alone = det.detect([image])[0]
        np.testing.assert_allclose(batched.boxes, alone.boxes, atol=1e-3)
        np.testing.assert_allclose(batched.scores, alone.scores, atol=1e-5)
    assert det.detect([]) == []


def test_batch_limits_follow_the_graph():
    fixed = need_shared("models", FILES["2023mar"])
    dynamic = need_shared("models", FILES["n_dynamic"])
    assert YuNetDetector(fixed, _spec(fixed, max_batch=8), threads=1).batch_limit == 1
    assert YuNetDetector(dynamic, _spec(dynamic, max_batch=8), threads=1).batch_limit == 8


def test_dynamic_graph_runs_at_another_input_size():
    path = need_shared("models", FILES["n_dynamic"])
    det = YuNetDetector(path, _spec(path, input_size=(640, 480)), threads=1)
    faces = det.detect([load_image(need_shared("data", "enroll_examples", "multi", "two_people.jpg"))])[0]
    assert len(faces) == 2


def test_decoder_rejects_outputs_that_do_not_fit_the_grid():
    outputs = {f"{k}_{s}": np.zeros((10, w), np.float32)
               for k, w in (("cls", 1), ("obj", 1), ("bbox", 4), ("kps", 10)) for s in (8, 16, 32)}
    with pytest.raises(ModelError, match="anchors"):
        decode_yunet(outputs, 640, 640, 0.5, 0.3)


def test_fixed_graph_refuses_another_input_size():
    path = need_shared("models", FILES["2023mar"])
    with pytest.raises(ModelError, match=r"fixed to 640 px.*input_size"):
        YuNetDetector(path, _spec(path, input_size=(320, 320)), threads=1)


def test_input_size_must_be_a_multiple_of_32():
    path = need_shared("models", FILES["n_dynamic"])
    with pytest.raises(ModelError, match="multiples of 32"):
        YuNetDetector(path, _spec(path, input_size=(650, 480)), threads=1)


def test_wrong_graph_is_refused_at_load_naming_model_file_and_mismatch():
    """A YuNet manifest pointing at MobileFaceNet.onnx fails at load, not at the first frame."""
    path = need_shared("models", "recognition", "MobileFaceNet.onnx")
    with pytest.raises(ModelError) as err:
        YuNetDetector(path, _spec(path), threads=1)
    message = str(err.value)
    assert "YuNet detector" in message and "MobileFaceNet.onnx" in message
    assert "graph has 1 outputs" in message and "expects 12" in message


def test_another_detector_graph_is_refused():
    path = need_shared("models", "detection", "retinaface_mv1_0.25.onnx")
    with pytest.raises(ModelError, match="retinaface_mv1_0.25.onnx.*3 outputs"):
        YuNetDetector(path, _spec(path), threads=1)


def test_missing_file_and_bad_images(tmp_path, yunet):
    with pytest.raises(ModelError, match="not found"):
        YuNetDetector(tmp_path / "absent.onnx", _spec(tmp_path / "absent.onnx"))
    _, det = yunet
    with pytest.raises(ImageError, match="image 1"):
        det.detect([np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10), np.uint8)])
    assert len(det.detect([np.zeros((480, 640, 3), np.uint8)])[0]) == 0
