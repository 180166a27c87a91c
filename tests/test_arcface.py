"""ArcFace-class recogniser with MobileFaceNet: preprocessing against ``cv2.dnn.blobFromImage`` + ImageNet
normalisation (foamliu ``lfw_eval.py``), fixed-batch loop vs a dynamic-batch copy of the same graph, L2
normalisation, and same-person vs different-person cosine on enroll_examples/knn_examples."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from conftest import need_shared

from facegate.detections import Detections
from facegate.errors import ImageError
from facegate.imaging import load_image
from facegate.packs.arcface_recogniser import ArcFaceRecogniser
from facegate.packs.manifest import load_manifest, source_path
from facegate.packs.registry import detector_class

PACK = "retinaface-mobilefacenet"


@pytest.fixture(scope="module")
def manifest():
    need_shared("models", "recognition", "MobileFaceNet.onnx")
    return load_manifest(PACK)


@pytest.fixture(scope="module")
def recogniser(manifest):
    return ArcFaceRecogniser(source_path(manifest.recogniser.source, manifest.manifest_path), manifest.recogniser,
                             threads=1)


@pytest.fixture(scope="module")
def detector(manifest):
    cls = detector_class(manifest.detector.kind)
    return cls(source_path(manifest.detector.source, manifest.manifest_path), manifest.detector, threads=1)


def _chips(detector, recogniser, names: list[str]) -> np.ndarray:
    out = []
    for name in names:
        image = load_image(need_shared("data", "enroll_examples", *name.split("/")))
        dets = detector.detect([image])[0]
        out.append(recogniser.align(image, dets[int(np.argmax(dets.widths))]))
    return np.concatenate(out)


def test_preprocessing_is_rgb_over_255_with_imagenet_mean_std(recogniser):
    rng = np.random.default_rng(3)
    chips = rng.integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    blob = recogniser.preprocess(chips)
    reference = cv2.dnn.blobFromImages(list(chips), 1 / 255.0, (112, 112), swapRB=True)
    mean = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
    std = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(blob, (reference - mean) / std, atol=1e-5)


def test_embeddings_are_unit_length_float32_and_batch_independent(detector, recogniser):
    chips = _chips(detector, recogniser, ["single/obama.jpg", "single/biden.jpg", "single/alex-lacamoire.png"])
    assert chips.shape == (3, 112, 112, 3) and chips.dtype == np.uint8
    emb = recogniser.embed_chips(chips)
    assert emb.shape == (3, 128) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(recogniser.embed_chips(chips[1:2]), emb[1:2], atol=1e-6)
    assert recogniser.one_at_a_time  # batch fixed to 1 in this graph: run in a loop
    assert recogniser.embed_chips(np.zeros((0, 112, 112, 3), np.uint8)).shape == (0, 128)


def _dynamic_batch_copy(path: Path) -> bytes:
    """The same MobileFaceNet graph with a free batch dimension: the one Reshape's target [1, -1] becomes [0, -1]
    (0 = keep the input's batch size)."""
    model = onnx.load(str(path))
    for value in (model.graph.input[0], model.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = "N"
    reshape = next(n for n in model.graph.node if n.op_type == "Reshape")
    const = next(n for n in model.graph.node if n.output[0] == reshape.input[1])
    tensor = const.attribute[0].t
    shape = np.frombuffer(tensor.raw_data, np.int64).copy()
    assert shape.tolist() == [1, -1]
    tensor.raw_data = np.array([0, -1], np.int64).tobytes()
    return model.SerializeToString()


def test_dynamic_batch_graph_runs_as_one_batch_with_the_same_result(manifest, detector, recogniser):
    path = source_path(manifest.recogniser.source, manifest.manifest_path)
    spec = manifest.recogniser.model_copy(update={"fixed_batch": False})
    dynamic = ArcFaceRecogniser(_dynamic_batch_copy(path), spec, threads=1)
    assert not dynamic.one_at_a_time
    chips = _chips(detector, recogniser, ["single/obama.jpg", "single/biden.jpg", "multi/two_people.jpg"])
    np.testing.assert_allclose(dynamic.embed_chips(chips), recogniser.embed_chips(chips), atol=1e-5)


def test_same_person_is_closer_than_different_people(detector, recogniser):
    """knn_examples: every same-person cosine similarity exceeds every different-person one (measured 2026-11-30:
    lowest same-person 0.644, highest different-person 0.189)."""
    root = need_shared("data", "enroll_examples", "knn_examples")
    files = sorted((root / "train").glob("*/*"))
    labels = [p.parent.name for p in files]
    tests = {"alex_lacamoire1.jpg": "alex_lacamoire", "johnsnow_test1.jpg": "kit_harington", "obama1.jpg": "obama"}
    files += [root / "test" / name for name in tests]
    labels += list(tests.values())
    chips = _chips(detector, recogniser, [str(p.relative_to(root.parent)) for p in files])
    emb = recogniser.embed_chips(chips)
    sim = emb @ emb.T
    same_label = np.array(labels)[:, None] == np.array(labels)[None, :]
    same = sim[same_label & ~np.eye(len(labels), dtype=bool)]
    different = sim[~same_label]
    assert same.min() > different.max(), (same.min(), different.max())
    assert same.mean() > 0.5 > different.max() + 0.2


def test_bad_chips_and_no_faces(recogniser):
    with pytest.raises(ImageError, match="N×112×112×3 uint8"):
        recogniser.embed_chips(np.zeros((1, 150, 150, 3), np.uint8))
    assert recogniser.align(np.zeros((50, 50, 3), np.uint8), Detections.empty()).shape == (0, 112, 112, 3)
