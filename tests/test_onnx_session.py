"""The shared ONNX Runtime session helpers: model naming in errors, and a missing file refused by name."""

from __future__ import annotations

import pytest

from facegate.errors import ModelError
from facegate.packs.onnx_session import make_session, model_label


def test_model_label_and_missing_file(tmp_path):
    assert model_label("X", b"bytes") == "X" and model_label("X", tmp_path / "m.onnx") == f"X ({tmp_path / 'm.onnx'})"
    with pytest.raises(ModelError, match="not found"):
        make_session(tmp_path / "m.onnx", "X")
