"""Presentation-attack detection (PAD, "liveness") with Minivision's MiniFASNet pair.

Upstream: ``minivision-ai/Silent-Face-Anti-Spoofing`` (Apache-2.0); the ONNX exports and the facts below are in
../shared/models/README.md ("Anti-spoofing"). Per model:

* crop (``src/generate_patches.py`` ``CropImage._get_new_box``/``crop``): the face box ``[x, y, w, h]`` is scaled
  about its centre by ``scale = min((H−1)/h, (W−1)/w, crop_scale)`` (2.7 for MiniFASNetV2, 4.0 for
  MiniFASNetV1SE), shifted back inside the image, truncated to int, and the inclusive pixel range
  ``[y1..y2, x1..x2]`` is ``cv2.resize``d to 80×80;
* input: **BGR, raw 0..255 float, no mean/std** (``src/data_io/functional.py`` ``to_tensor`` has ``.div(255)``
  commented out), NCHW;
* output: 3 logits; softmax; **index 1 = real** (``test.py``: "Real Face"), 0 and 2 are spoof classes.

Fusion (``test.py``): ``prediction = softmax(V2) + softmax(V1SE)``; facegate reports the live probability
``prediction[1] / 2`` (the mean of the models' live probabilities); a face is live when it is at or above the
threshold in force, ``facegate.scoring.liveness_threshold``: the config's or the command line's when given, else the
manifest's ``liveness.threshold`` (default 0.5, which implies upstream's ``argmax == 1``).

Upstream also says inputs must come from a camera with a frontal face turned less than 30°; photos of faces taken
from the web (as in part of ../shared/data/antispoof) are outside that domain. Fail closed: a degenerate box
scores 0 (not live).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from facegate.detections import Detections
from facegate.errors import ImageError, ModelError
from facegate.packs.manifest import LivenessModel as LivenessModelSpec
from facegate.packs.manifest import LivenessSpec
from facegate.packs.onnx_session import check_io, make_session

log = logging.getLogger(__name__)


def minifasnet_crop_boxes(boxes: np.ndarray, width: int, height: int, crop_scale: float) -> np.ndarray:
    """Crop rectangles for MiniFASNet, vectorised over faces (upstream ``CropImage._get_new_box``).

    ``boxes``: N×4 ``x1 y1 x2 y2`` px (as ``Detections.boxes``; upstream's ``[x, y, w, h]`` is
    ``[x1, y1, x2−x1, y2−y1]``). ``width``/``height``: image size px. Returns N×4 int64 ``(x1, y1, x2, y2)`` with
    **inclusive** ``x2``/``y2`` (upstream slices ``[y1 : y2+1, x1 : x2+1]``). Boxes with no area give a crop of the
    whole image; callers treat them separately.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x, y = boxes[:, 0], boxes[:, 1]
    w = np.maximum(boxes[:, 2] - boxes[:, 0], 1e-6)
    h = np.maximum(boxes[:, 3] - boxes[:, 1], 1e-6)
    scale = np.minimum(np.minimum((height - 1) / h, (width - 1) / w), crop_scale)
    new_w, new_h = w * scale, h * scale
    cx, cy = x + w / 2, y + h / 2
    x1, y1 = cx - new_w / 2, cy - new_h / 2
    x2, y2 = cx + new_w / 2, cy + new_h / 2
    # Shift the crop back inside the image, left/top first, then right/bottom (upstream order).
    x2 = np.where(x1 < 0, x2 - x1, x2)
    x1 = np.where(x1 < 0, 0.0, x1)
    y2 = np.where(y1 < 0, y2 - y1, y2)
    y1 = np.where(y1 < 0, 0.0, y1)
    over_x = x2 > width - 1
    x1 = np.where(over_x, x1 - (x2 - width + 1), x1)
    x2 = np.where(over_x, width - 1.0, x2)
    over_y = y2 > height - 1
    y1 = np.where(over_y, y1 - (y2 - height + 1), y1)
    y2 = np.where(over_y, height - 1.0, y2)
    # Python's int() truncates toward zero; np.trunc does the same.
    return np.trunc(np.stack([x1, y1, x2, y2], axis=1)).astype(np.int64)


def crop_faces(image: np.ndarray, boxes: np.ndarray, crop_scale: float, size: tuple[int, int]) -> np.ndarray:
    """MiniFASNet input patches: N×H×W×3 uint8 in the image's colour order, ``size`` = (W, H) px.

    Uses ``minifasnet_crop_boxes`` and ``cv2.resize`` (bilinear, upstream's default) per face.
    """
    height, width = image.shape[:2]
    rects = minifasnet_crop_boxes(boxes, width, height, crop_scale)
    out = np.empty((len(rects), size[1], size[0], 3), np.uint8)
    for i, (x1, y1, x2, y2) in enumerate(rects):
        # Negative starts can only come from a crop wider than the image; clamp like numpy slicing would not.
        patch = image[max(y1, 0) : y2 + 1, max(x1, 0) : x2 + 1]
        out[i] = cv2.resize(patch, size) if patch.size else 0
    return out


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class LivenessModel:
    """One MiniFASNet model run by ONNX Runtime.

    ``model``: path of the ONNX file or its bytes; ``spec``: its entry in the manifest's ``liveness.models``.
    Raises ``ModelError`` naming the model, the file and the mismatch when the graph is not one rank-4 float
    input (fixed size, if fixed, equal to ``input_size``) and one rank-2 float output with more classes than
    ``live_index``.
    """

    def __init__(
        self,
        model: Path | str | bytes,
        spec: LivenessModelSpec,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
    ) -> None:
        where = "" if isinstance(model, bytes) else f" ({model})"
        label = f"liveness model (crop scale {spec.crop_scale})"
        self.name = f"{label}{where}"
        self.spec = spec
        self.session = make_session(model, label, providers, threads)
        check_io(self.session, self.name, inputs=[(None, 4, "tensor(float)")], outputs=[(None, 2, "tensor(float)")])
        arg, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.input_name = arg.name
        want_w, want_h = (int(v) for v in spec.input_size)
        batch, channels, in_h, in_w = arg.shape
        for got, want, what in ((channels, 3, "channels"), (in_h, want_h, "height"), (in_w, want_w, "width")):
            if isinstance(got, int) and got != want:
                raise ModelError(
                    f"{self.name}: input {arg.name!r} has shape {arg.shape}: {what} {got}, the manifest expects {want}"
                )
        classes = out.shape[1]
        if isinstance(classes, int) and classes <= spec.live_index:
            raise ModelError(
                f"{self.name}: output {out.name!r} has {classes} classes but the manifest's live_index is "
                f"{spec.live_index}"
            )
        self.one_at_a_time = isinstance(batch, int)
        self.size = (want_w, want_h)
        self.probabilities(np.zeros((want_h, want_w, 3), np.uint8), Detections(
            np.array([[0, 0, want_w, want_h]], np.float32), np.ones(1), np.zeros((1, 5, 2))))

    def probabilities(self, image: np.ndarray, dets: Detections) -> np.ndarray:
        """Softmax class probabilities for each face: N×C float32 (column ``live_index`` = live).

        ``image``: H×W×3 uint8 BGR; ``dets``: faces in that image (source px).
        """
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ImageError("liveness: expected an H×W×3 uint8 BGR image")
        if not len(dets):
            return np.zeros((0, 3), np.float32)
        patches = crop_faces(image, dets.boxes, self.spec.crop_scale, self.size)
        if self.spec.colour_order == "rgb":
            patches = patches[..., ::-1]
        blob = np.ascontiguousarray(patches.transpose(0, 3, 1, 2), dtype=np.float32)
        if self.one_at_a_time:
            logits = np.concatenate([self.session.run(None, {self.input_name: blob[i : i + 1]})[0]
                                     for i in range(len(blob))])
        else:
            logits = self.session.run(None, {self.input_name: blob})[0]
        return _softmax(logits.astype(np.float64)).astype(np.float32)

    def live_probability(self, image: np.ndarray, dets: Detections) -> np.ndarray:
        """N float32: probability of the live class for each face."""
        return self.probabilities(image, dets)[:, self.spec.live_index]


class LivenessFusion:
    """The manifest's liveness block: every model run on every face, fused as upstream ``test.py`` does.

    ``spec``: the manifest's ``liveness`` block; ``models``: one ONNX path or bytes per entry of ``spec.models``
    (same order, e.g. ``PreparedPack.liveness``). Raises ``ModelError`` when the counts differ or any model does
    not match its manifest entry.
    """

    def __init__(
        self,
        spec: LivenessSpec,
        models: Sequence[Path | str | bytes],
        providers: Sequence[str] | None = None,
        threads: int | None = None,
    ) -> None:
        if len(models) != len(spec.models) or not models:
            raise ModelError(
                f"liveness: the manifest lists {len(spec.models)} models but {len(models)} files were given"
            )
        self.spec = spec
        self.threshold = float(spec.threshold)
        self.models = [LivenessModel(m, s, providers, threads) for m, s in zip(models, spec.models, strict=True)]
        log.info("liveness models=%d fusion=%s threshold=%.3f", len(self.models), spec.fusion, self.threshold)

    def score(self, image: np.ndarray, dets: Detections) -> np.ndarray:
        """Fused live probability of each face in ``image`` (H×W×3 uint8 BGR): N float32 in [0, 1], the mean
        over the models of their softmax live probability. Faces with a degenerate box score 0 (fail closed)."""
        if not len(dets):
            return np.zeros(0, np.float32)
        total = np.zeros(len(dets), np.float64)
        for model in self.models:
            total += model.live_probability(image, dets)
        fused = total / len(self.models)
        degenerate = (dets.widths <= 0) | (dets.boxes[:, 3] - dets.boxes[:, 1] <= 0) | ~np.isfinite(dets.boxes).all(1)
        fused[degenerate] = 0.0
        return fused.astype(np.float32)
