"""The shared ONNX helpers: detector manifest checks before a graph is loaded, and model naming in errors."""

from __future__ import annotations

import pytest

from facegate.errors import ModelError
from facegate.packs.manifest import load_manifest
from facegate.packs.onnx_runner import detector_input_size, make_session, model_label

SPEC = load_manifest("default").detector


def test_detector_input_size_checks_kind_and_stride():
    assert detector_input_size(SPEC, "retinaface", "RetinaFace detector", b"", 1) == (640, 640)
    with pytest.raises(ModelError, match="kind is 'retinaface', not 'yunet'"):
        detector_input_size(SPEC, "yunet", "YuNet detector", "/m.onnx", 32)
    odd = SPEC.model_copy(update={"kind": "yunet", "input_size": (640, 360)})
    with pytest.raises(ModelError, match=r"\(/m.onnx\): input_size \[640, 360\] must be multiples of 32"):
        detector_input_size(odd, "yunet", "YuNet detector", "/m.onnx", 32)
    tiny = SPEC.model_copy(update={"input_size": (16, 16)})
    with pytest.raises(ModelError, match="at least 32"):
        detector_input_size(tiny, "retinaface", "RetinaFace detector", b"", 1)


def test_model_label_and_missing_file(tmp_path):
    assert model_label("X", b"bytes") == "X" and model_label("X", tmp_path / "m.onnx") == f"X ({tmp_path / 'm.onnx'})"
    with pytest.raises(ModelError, match="not found"):
        make_session(tmp_path / "m.onnx", "X")
