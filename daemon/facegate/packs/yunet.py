"""YuNet face detector (libfacedetection): batched ONNX Runtime inference and a vectorised numpy decoder.

Two graphs are supported, both described in ../shared/models/README.md ("YuNet"):

* ``face_detection_yunet_2023mar.onnx`` (YuNet-s, OpenCV Zoo name): input fixed to ``1×3×640×640``, so images are
  letterboxed to 640×640 and run one at a time;
* ``yunet_n_dynamic.onnx`` (YuNet-n): input ``batch×3×H×W`` with H and W multiples of 32, so a batch of letterboxed
  images runs at once.

Facts used (OpenCV ``modules/objdetect/src/face_detect.cpp``, ``FaceDetectorYN``):

* preprocessing: BGR, float32 0..255, **no mean and no scaling** (``dnn::blobFromImage`` defaults), NCHW;
* 12 outputs ``cls_s``, ``obj_s`` (A×1), ``bbox_s`` (A×4), ``kps_s`` (A×10) for strides s = 8, 16, 32; one anchor per
  cell, anchor index ``r·cols + c`` (row-major) with ``cols = W/s``;
* score ``sqrt(clip(cls,0,1)·clip(obj,0,1))``; box centre ``((c + b0)·s, (r + b1)·s)``, size
  ``(exp(b2)·s, exp(b3)·s)``; landmark n ``((k[2n] + c)·s, (k[2n+1] + r)·s)``;
* score cut-off: facegate keeps ``score >= score_threshold`` as every detector here does (``OnnxDetector``, which
  also says where OpenCV's own rule differs on an exactly equal score).

Landmark order: OpenCV names the five points "right eye, left eye, nose tip, right mouth corner, left mouth corner"
(the subject's right and left), i.e. the image-left point of each pair first: facegate's order
(``facegate.detections.LANDMARK_NAMES``); no reordering is done.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import onnxruntime as ort

from facegate.detections import Detections
from facegate.errors import ModelError
from facegate.packs.letterbox import letterbox_batch
from facegate.packs.onnx_detector import IoSpec, OnnxDetector

#: Feature strides of the three output levels, input px (``face_detect.cpp``: ``strides = {8, 16, 32}``).
STRIDES: tuple[int, ...] = (8, 16, 32)
#: Output names in graph order, as both published YuNet graphs declare them.
OUTPUT_NAMES: tuple[str, ...] = tuple(f"{kind}_{s}" for kind in ("cls", "obj", "bbox", "kps") for s in STRIDES)

_MODEL_NAME = "YuNet detector"


@lru_cache(maxsize=16)
def yunet_grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Anchor cells of all three levels for a ``width``×``height`` input (multiples of 32), in output order.

    Returns ``(cells, strides)``: A×2 float64 ``(c, r)`` column/row indices and A float64 strides, read-only and
    cached; A = Σ_s (W/s)·(H/s) (8400 at 640×640).
    """
    cells, strides = [], []
    for s in STRIDES:
        rows, cols = height // s, width // s
        r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        cells.append(np.stack([c.ravel(), r.ravel()], axis=1))
        strides.append(np.full(rows * cols, s))
    out = np.concatenate(cells).astype(np.float64), np.concatenate(strides).astype(np.float64)
    for a in out:
        a.setflags(write=False)
    return out


def decode_yunet(
    outputs: dict[str, np.ndarray],
    width: int,
    height: int,
    score_threshold: float,
    nms_threshold: float,
) -> Detections:
    """Decode one image's raw YuNet outputs into faces, in **network-input px**.

    ``outputs`` maps the 12 names of ``OUTPUT_NAMES`` to that image's arrays (A_s×1, A_s×1, A_s×4, A_s×10 float32)
    for an input of ``width``×``height`` px. Faces passing the detectors' score cut-off
    (``OnnxDetector.keep_candidates``: ``>= score_threshold``, the best ``PRE_NMS_TOP_K``) are decoded with the
    formulas of the module docstring and greedy NMS at ``nms_threshold`` applied. Returns
    ``Detections`` (x1 y1 x2 y2 float32 px, unclipped; landmarks in facegate's order), best first.
    Raises ``ModelError`` when the anchor counts do not fit the input size.
    """
    cells, strides = yunet_grid(int(width), int(height))
    try:
        cls = np.concatenate([outputs[f"cls_{s}"].reshape(-1) for s in STRIDES])
        obj = np.concatenate([outputs[f"obj_{s}"].reshape(-1) for s in STRIDES])
        bbox = np.concatenate([outputs[f"bbox_{s}"].reshape(-1, 4) for s in STRIDES])
        kps = np.concatenate([outputs[f"kps_{s}"].reshape(-1, 10) for s in STRIDES])
    except ValueError as exc:
        raise ModelError(f"{_MODEL_NAME}: output shapes do not fit the decoder: {exc}") from None
    if not (len(cls) == len(obj) == len(bbox) == len(kps) == len(cells)):
        raise ModelError(
            f"{_MODEL_NAME}: outputs have {len(cls)}/{len(obj)}/{len(bbox)}/{len(kps)} anchors, but a "
            f"{width}×{height} input has {len(cells)} cells; the model file does not fit this decoder"
        )
    scores = np.sqrt(np.clip(cls, 0, 1) * np.clip(obj, 0, 1))
    idx = OnnxDetector.keep_candidates(scores, score_threshold)
    if not idx.size:
        return Detections.empty()
    cell, s = cells[idx], strides[idx, None]
    b = bbox[idx].astype(np.float64)
    centre = (cell + b[:, :2]) * s
    wh = np.exp(b[:, 2:]) * s
    boxes = np.concatenate([centre - wh / 2, centre + wh / 2], axis=1)
    points = (kps[idx].astype(np.float64).reshape(-1, 5, 2) + cell[:, None, :]) * s[:, None, :]
    return OnnxDetector.suppress(boxes, scores[idx], points, nms_threshold)


class YuNetDetector(OnnxDetector):
    """YuNet run by ONNX Runtime (``OnnxDetector`` does loading, checks, batching and errors).

    The graph: one rank-4 float input, the 12 rank-3 outputs of ``OUTPUT_NAMES``; ``input_size`` multiples of 32.
    A graph whose batch dimension is fixed to 1 (the 2023mar file) runs one image at a time whatever ``max_batch``
    says; a graph with fixed H×W must match ``input_size``. Images are letterboxed to ``input_size`` (no trimming).
    """

    kind = "yunet"
    label = _MODEL_NAME

    def expected_outputs(self, outputs: Sequence[ort.NodeArg]) -> list[IoSpec]:
        return [(name, 3, "tensor(float)") for name in OUTPUT_NAMES]

    def preprocess(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Letterbox BGR uint8 images into the input size (top-left, zero padding) → N×3×H×W float32 0..255 BGR
        blob, and the letterbox scales (N float64; source px = input px / scale). Raises ``ImageError``."""
        canvases, scales = letterbox_batch(
            images, self.input_width, self.input_height, self.input_width, self.input_height,
        )
        blob = np.empty((len(images), 3, self.input_height, self.input_width), np.float32)
        blob[...] = canvases.transpose(0, 3, 1, 2)
        return blob, scales

    def decode(
        self, raw: list[np.ndarray], k: int, width: int, height: int, score_threshold: float, nms_threshold: float,
    ) -> Detections:
        # run() returns the outputs in graph order, which check_io pinned to OUTPUT_NAMES.
        per_image = {name: out[k] for name, out in zip(OUTPUT_NAMES, raw, strict=True)}
        return decode_yunet(per_image, width, height, score_threshold, nms_threshold)
