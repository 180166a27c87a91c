"""SCRFD detector: the vectorised decoder against a plain per-anchor transcription of insightface ``scrfd.py``
(``forward`` + ``distance2bbox``/``distance2kps``) on real raw outputs, preprocessing against ``cv2.dnn``, and
load-time errors for graphs that are not the 9-output keypoint layout."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import need_shared

from facegate.errors import ModelError
from facegate.imaging import letterbox, load_image
from facegate.packs.manifest import DetectorSpec
from facegate.packs.scrfd import ScrfdDetector, decode_scrfd, scrfd_anchor_centres

MODEL = ("models", "detection", "det_500m.onnx")


def _spec(path, **kw) -> DetectorSpec:
    base = dict(kind="scrfd", source={"file": str(path)}, sha256="0" * 64, score_threshold=0.5, nms_threshold=0.4,
                max_batch=1)
    base.update(kw)
    return DetectorSpec(**base)


@pytest.fixture(scope="module")
def scrfd():
    path = need_shared(*MODEL)
    return ScrfdDetector(path, _spec(path), threads=1)


def _reference_candidates(raw: list[np.ndarray], width: int, height: int, threshold: float) -> list[tuple]:
    """insightface scrfd.py forward(), written out one anchor at a time: (score, box, kps) per candidate."""
    out = []
    for level, stride in enumerate((8, 16, 32)):
        scores, boxes, kps = raw[level], raw[level + 3], raw[level + 6]
        cols = width // stride
        for a in range(len(scores)):
            if scores[a, 0] < threshold:
                continue
            cell = a // 2  # two anchors per cell, each centre repeated twice
            cx, cy = (cell % cols) * stride, (cell // cols) * stride
            d = boxes[a] * stride
            box = (cx - d[0], cy - d[1], cx + d[2], cy + d[3])
            points = [(cx + kps[a, 2 * i] * stride, cy + kps[a, 2 * i + 1] * stride) for i in range(5)]
            out.append((float(scores[a, 0]), box, points))
    return out


def test_anchor_centres_repeat_each_cell_twice():
    centres, strides = scrfd_anchor_centres(64, 32)
    assert len(centres) == 2 * (32 + 8 + 2)
    assert centres[:6].tolist() == [[0, 0], [0, 0], [8, 0], [8, 0], [16, 0], [16, 0]]
    assert centres[16].tolist() == [0, 8]  # second row of stride 8 (8 cells per row, 2 anchors each)
    assert strides[-1] == 32


def test_preprocessing_matches_cv2_dnn_blob(scrfd):
    """insightface: cv2.dnn.blobFromImage(img, 1/128, size, (127.5,)*3, swapRB=True) on the letterboxed image."""
    image = load_image(need_shared("data", "enroll_examples", "single", "obama_small.jpg"))
    blob, scales = scrfd.preprocess([image])
    canvas, scale = letterbox(image, 640, 640)
    reference = cv2.dnn.blobFromImage(canvas, 1.0 / 128, (640, 640), (127.5, 127.5, 127.5), swapRB=True)
    np.testing.assert_allclose(blob, reference, atol=1e-5)
    assert scales[0] == scale


@pytest.mark.parametrize("name", ["multi/2008_002470.jpg", "multi/bald_guys.jpg", "single/obama.jpg"])
def test_decoder_matches_per_anchor_reference(scrfd, name):
    image = load_image(need_shared("data", "enroll_examples", name))
    blob, _ = scrfd.preprocess([image])
    raw = scrfd.session.run(None, {scrfd.input_name: blob})
    # nms_threshold 1.0 keeps every candidate (IoU is never > 1), so the whole decoded set can be compared.
    ours = decode_scrfd(raw[0:3], raw[3:6], raw[6:9], 640, 640, 0.3, 1.0)
    ref = sorted(_reference_candidates(raw, 640, 640, 0.3), key=lambda c: -c[0])
    assert len(ours) == len(ref) > 0
    np.testing.assert_allclose(ours.scores, [c[0] for c in ref], atol=1e-6)
    order = np.lexsort((ours.boxes[:, 1], ours.boxes[:, 0], -ours.scores))
    ref_order = np.lexsort((np.array([c[1][1] for c in ref]), np.array([c[1][0] for c in ref]),
                            -np.array([c[0] for c in ref])))
    np.testing.assert_allclose(ours.boxes[order], np.array([c[1] for c in ref])[ref_order], atol=1e-3)
    np.testing.assert_allclose(ours.landmarks[order], np.array([c[2] for c in ref])[ref_order], atol=1e-3)


def test_detects_faces_one_image_at_a_time(scrfd):
    """det_500m.onnx has no batch dimension in its outputs: several images are run in a loop, each correctly."""
    assert not scrfd.batched and scrfd.batch_limit == 1
    names = ["multi/two_people.jpg", "multi/2008_007676.jpg", "multi/coffee.png"]
    images = [load_image(need_shared("data", "enroll_examples", n)) for n in names]
    counts = [len(d) for d in scrfd.detect(images)]
    assert counts == [2, 7, 0]
    for dets in scrfd.detect(images[:2]):
        assert (dets.landmarks[:, 0, 0] < dets.landmarks[:, 1, 0]).all()  # image-left eye first


def test_yunet_graph_is_refused_naming_model_file_and_mismatch():
    path = need_shared("models", "detection", "face_detection_yunet_2023mar.onnx")
    with pytest.raises(ModelError) as err:
        ScrfdDetector(path, _spec(path), threads=1)
    message = str(err.value)
    assert "SCRFD detector" in message and "face_detection_yunet_2023mar.onnx" in message
    assert "12 outputs" in message and "expects 9" in message


def test_recogniser_graph_is_refused():
    path = need_shared("models", "recognition", "MobileFaceNet.onnx")
    with pytest.raises(ModelError, match="MobileFaceNet.onnx.*1 outputs"):
        ScrfdDetector(path, _spec(path), threads=1)


def test_wrong_kind_is_refused():
    path = need_shared(*MODEL)
    with pytest.raises(ModelError, match="not 'scrfd'"):
        ScrfdDetector(path, _spec(path).model_copy(update={"kind": "yunet"}))
