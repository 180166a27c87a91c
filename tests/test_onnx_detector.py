"""The detector plug-in base (``OnnxDetector``) and the registry built from the plug-ins' declared kinds: manifest
checks before loading, graph/manifest mismatches named the same way by every plug-in, the one score cut-off rule
(``>=``) applied by all three decoders, and the registry's kinds matching the manifest schema."""

from __future__ import annotations

import typing

import numpy as np
import onnx
import pytest
from conftest import need_shared
from retinaface.weights import WEIGHTS

from facegate.errors import ModelError
from facegate.packs.manifest import DetectorSpec, RecogniserSpec, load_manifest
from facegate.packs.onnx_detector import OnnxDetector
from facegate.packs.protocols import Detector, JitterRecogniser, Recogniser
from facegate.packs.registry import (
    DETECTOR_CLASSES,
    DETECTORS,
    RECOGNISER_CLASSES,
    RECOGNISERS,
    build_detector,
    detector_class,
    index_by_kind,
    recogniser_class,
)
from facegate.packs.retinaface import RetinaFaceDetector, decode_retinaface, retinaface_priors
from facegate.packs.scrfd import ScrfdDetector, decode_scrfd, scrfd_anchor_centres
from facegate.packs.yunet import STRIDES, YuNetDetector, decode_yunet, yunet_grid

SPEC = load_manifest("default").detector


def _spec(kind: str, path, **update) -> DetectorSpec:
    return SPEC.model_copy(update={"kind": kind, "source": {"file": str(path)}, **update})


# ------------------------------------------------------------------------------------------ registry and kinds


def test_registry_lists_exactly_the_declared_kinds_and_the_manifest_schema_agrees():
    assert set(DETECTORS) == {cls.kind for cls in DETECTOR_CLASSES} == {"retinaface", "yunet", "scrfd"}
    assert set(RECOGNISERS) == {cls.kind for cls in RECOGNISER_CLASSES} == {"dlib_resnet", "onnx"}
    assert all(DETECTORS[cls.kind] is cls for cls in DETECTOR_CLASSES)
    assert all(issubclass(cls, OnnxDetector) for cls in DETECTOR_CLASSES)
    # A manifest can name exactly the kinds the registry can build.
    assert set(typing.get_args(DetectorSpec.model_fields["kind"].annotation)) == set(DETECTORS)
    assert set(typing.get_args(RecogniserSpec.model_fields["kind"].annotation)) == set(RECOGNISERS)
    assert detector_class("yunet") is YuNetDetector and recogniser_class("onnx").__name__ == "ArcFaceRecogniser"


def test_unknown_kind_is_refused_with_the_known_ones():
    with pytest.raises(ModelError, match=r"unknown detector kind 'mtcnn'; known: retinaface, scrfd, yunet"):
        detector_class("mtcnn")
    with pytest.raises(ModelError, match=r"unknown recogniser kind 'facenet'; known: dlib_resnet, onnx"):
        recogniser_class("facenet")

    class Prepared:  # the one field build_detector reads before the kind is looked up
        manifest = load_manifest("default").model_copy(update={"detector": SPEC.model_copy(update={"kind": "x"})})

    with pytest.raises(ModelError, match="unknown detector kind 'x'"):
        build_detector(Prepared())  # type: ignore[arg-type]


def test_index_by_kind_refuses_duplicate_or_missing_kinds():
    class Again(YuNetDetector):
        pass

    with pytest.raises(TypeError, match="kind 'yunet' is declared by YuNetDetector and Again"):
        index_by_kind([YuNetDetector, Again], "detector")
    with pytest.raises(TypeError, match="class int declares no kind"):
        index_by_kind([int], "detector")


# ------------------------------------------------------------------------------- manifest checks, load errors


def test_manifest_checks_before_loading():
    assert RetinaFaceDetector.check_spec(SPEC, b"") == (640, 640)
    with pytest.raises(ModelError, match="YuNet detector: pack detector kind is 'retinaface', not 'yunet'"):
        YuNetDetector.check_spec(SPEC, "/m.onnx")
    odd = SPEC.model_copy(update={"kind": "scrfd", "input_size": (640, 360)})
    with pytest.raises(ModelError, match=r"\(/m.onnx\): input_size \[640, 360\] must be multiples of 32"):
        ScrfdDetector.check_spec(odd, "/m.onnx")
    tiny = SPEC.model_copy(update={"input_size": (16, 16)})
    with pytest.raises(ModelError, match="at least 32"):
        RetinaFaceDetector.check_spec(tiny, b"")


@pytest.mark.parametrize(("cls", "kind", "want"), [(RetinaFaceDetector, "retinaface", 3), (YuNetDetector, "yunet", 12),
                                                   (ScrfdDetector, "scrfd", 9)])
def test_a_graph_of_another_layout_is_named_the_same_way_by_every_plugin(cls, kind, want):
    path = need_shared("models", "recognition", "MobileFaceNet.onnx")
    with pytest.raises(ModelError) as err:
        cls(path, _spec(kind, path), threads=1)
    assert str(err.value) == (
        f"{cls.label} ({path}): graph has 1 outputs ({onnx.load(str(path)).graph.output[0].name}), the manifest "
        f"expects {want}; is this the right model file for this pack?"
    )


def _retinaface_with_input(shape: tuple[int, int, int, int]) -> bytes:
    model = onnx.load_from_string(WEIGHTS)
    for dim, value in zip(model.graph.input[0].type.tensor_type.shape.dim, shape, strict=True):
        dim.ClearField("dim_param")
        dim.dim_value = value
    return model.SerializeToString()


def test_fixed_input_size_must_match_the_manifest_for_every_plugin():
    frozen = _retinaface_with_input((1, 3, 640, 640))
    with pytest.raises(ModelError, match=r"input width is fixed to 640 px but the manifest's input_size says 320; "
                                         r"set input_size: \[640, 640\] and dynamic_input: false"):
        RetinaFaceDetector(frozen, SPEC.model_copy(update={"input_size": (320, 320)}), threads=1)
    path = need_shared("models", "detection", "face_detection_yunet_2023mar.onnx")
    with pytest.raises(ModelError, match=r"input height is fixed to 640 px but the manifest's input_size says 480"):
        YuNetDetector(path, _spec("yunet", path, input_size=(640, 480)), threads=1)


def test_a_graph_that_fails_its_warm_up_run_is_a_model_error():
    # Batch fixed to 2: the base runs such a graph one image at a time, which this graph cannot take.
    with pytest.raises(ModelError, match=r"RetinaFace detector: the graph does not run on a 1×3×640×640 input "
                                         r"\(input_size \[640, 640\]\): .*check the pack's detector input_size"):
        RetinaFaceDetector(_retinaface_with_input((2, 3, 640, 640)), SPEC, threads=1)


def test_batch_limit_follows_the_graph():
    assert RetinaFaceDetector(WEIGHTS, SPEC.model_copy(update={"max_batch": 5}), threads=1).batch_limit == 5
    assert RetinaFaceDetector(_retinaface_with_input((1, 3, 640, 640)), SPEC, threads=1).batch_limit == 1


def test_built_objects_satisfy_the_protocols():
    from facegate.pipeline import FacePipeline

    pipeline = FacePipeline.load("dlib", threads=1, with_liveness=False)
    assert isinstance(pipeline.detector, Detector) and isinstance(pipeline.detector, RetinaFaceDetector)
    assert isinstance(pipeline.recogniser, Recogniser) and isinstance(pipeline.recogniser, JitterRecogniser)
    assert pipeline.providers == pipeline.recogniser.providers and pipeline.providers


# ---------------------------------------------------------------------------------------------- score cut-off

#: Scores planted in otherwise empty outputs: one exactly at the threshold, one above, one below (all exact in
#: float32, and YuNet's sqrt(cls·obj) of their squares is exact too).
THRESHOLD = 0.5
PLANTED = {3: 0.5, 11: 0.75, 19: 0.25}


def _retinaface_raw(width: int, height: int):
    a = len(retinaface_priors(width, height))
    conf = np.zeros((a, 2), np.float32)
    for i, s in PLANTED.items():
        conf[i] = (1 - s, s)
    return np.zeros((a, 4), np.float32), conf, np.zeros((a, 10), np.float32)


def _yunet_raw(width: int, height: int) -> dict[str, np.ndarray]:
    cells, _ = yunet_grid(width, height)
    cls = np.zeros(len(cells), np.float32)
    for i, s in PLANTED.items():
        cls[i] = s * s
    out, start = {}, 0
    for s in STRIDES:
        n = (width // s) * (height // s)
        out[f"cls_{s}"] = cls[start : start + n, None]
        out[f"obj_{s}"] = np.ones((n, 1), np.float32)
        out[f"bbox_{s}"] = np.zeros((n, 4), np.float32)
        out[f"kps_{s}"] = np.zeros((n, 10), np.float32)
        start += n
    return out


def _scrfd_raw(width: int, height: int):
    _, strides = scrfd_anchor_centres(width, height)
    scores = np.zeros(len(strides), np.float32)
    for i, s in PLANTED.items():
        scores[i] = s
    per_level = [int((strides == s).sum()) for s in (8, 16, 32)]
    splits = np.cumsum(per_level)[:-1]
    return ([p[:, None] for p in np.split(scores, splits)],
            [np.ones((n, 4), np.float32) for n in per_level], [np.zeros((n, 10), np.float32) for n in per_level])


def _decode_all(threshold: float) -> dict[str, np.ndarray]:
    w = h = 64
    return {
        "retinaface": decode_retinaface(*_retinaface_raw(w, h), w, h, threshold, 1.0).scores,
        "yunet": decode_yunet(_yunet_raw(w, h), w, h, threshold, 1.0).scores,
        "scrfd": decode_scrfd(*_scrfd_raw(w, h), w, h, threshold, 1.0).scores,
    }


def test_all_three_decoders_keep_a_score_equal_to_the_threshold():
    for kind, scores in _decode_all(THRESHOLD).items():
        assert scores.tolist() == [0.75, 0.5], kind
    just_above = float(np.nextafter(np.float32(THRESHOLD), np.float32(1)))
    for kind, scores in _decode_all(just_above).items():
        assert scores.tolist() == [0.75], kind


def test_keep_candidates_rule_and_pre_nms_bound():
    scores = np.array([0.2, 0.5, 0.9, 0.5, 0.49999997], np.float32)
    assert OnnxDetector.keep_candidates(scores, 0.5).tolist() == [1, 2, 3]
    many = np.linspace(0.0, 1.0, OnnxDetector.PRE_NMS_TOP_K + 1000, dtype=np.float32)
    kept = OnnxDetector.keep_candidates(many, 0.0)
    assert len(kept) == OnnxDetector.PRE_NMS_TOP_K and many[kept].min() == np.sort(many)[1000]
