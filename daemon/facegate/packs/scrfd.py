"""SCRFD face detector with keypoints (InsightFace): ONNX Runtime inference and a vectorised numpy decoder.

The supported layout is InsightFace's 9-output graph with keypoints (``det_500m.onnx`` of the ``buffalo_s`` pack,
SCRFD-500MF-KPS; ../shared/models/README.md "SCRFD-500MF"). **Its weights are for non-commercial research only**
(InsightFace ``python-package/README.md``); the pack manifest says so.

Facts used (insightface ``python-package/insightface/model_zoo/scrfd.py``):

* preprocessing: letterbox into the input size (aspect kept, image at the top-left, zero padding), then
  ``cv2.dnn.blobFromImage(img, 1/128, size, (127.5,)*3, swapRB=True)``: **RGB, (x − 127.5)/128**, NCHW;
* outputs, in graph order: scores for strides 8, 16, 32 (A_s×1, already probabilities), then boxes (A_s×4), then
  keypoints (A_s×10) — ``fmc = 3``, **2 anchors per cell**;
* anchor centres ``(x·s, y·s)`` over the ``(H/s)×(W/s)`` grid in row-major order, each repeated twice;
  ``distance2bbox``: box ``(cx − d0, cy − d1, cx + d2, cy + d3)`` with ``d = pred·s``; ``distance2kps``:
  point i ``(cx + k[2i]·s, cy + k[2i+1]·s)``; divide by the letterbox scale for source px.

The published file has **no batch dimension in its outputs** (``443 [12800,1]`` …), so images run one at a time;
a graph whose outputs carry a batch dimension (rank 3) is run in batches of ``max_batch``. Landmark order: the
image-left eye first, as every detector in ../shared/models/README.md (checked there on a frontal face); that is
facegate's order, so no reordering is done.
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

#: Feature strides of the three output levels (``scrfd.py``: ``_feat_stride_fpn = [8, 16, 32]`` when fmc = 3).
STRIDES: tuple[int, ...] = (8, 16, 32)
#: Anchors per feature-map cell (``scrfd.py``: ``_num_anchors = 2`` for the 9-output layout).
ANCHORS_PER_CELL = 2
#: Pixel normalisation (``scrfd.py``: ``input_mean = 127.5``, ``input_std = 128.0``), applied to RGB.
INPUT_MEAN = 127.5
INPUT_STD = 128.0

_MODEL_NAME = "SCRFD detector"


@lru_cache(maxsize=16)
def scrfd_anchor_centres(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Anchor centres of all three levels for a ``width``×``height`` input (multiples of 32), in output order.

    Returns ``(centres, strides)``: A×2 float64 ``(x, y)`` input px and A float64 strides, read-only and cached;
    A = Σ_s 2·(W/s)·(H/s) (16 800 at 640×640).
    """
    centres, strides = [], []
    for s in STRIDES:
        rows, cols = height // s, width // s
        y, x = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        grid = np.stack([x.ravel(), y.ravel()], axis=1) * s
        centres.append(np.repeat(grid, ANCHORS_PER_CELL, axis=0))
        strides.append(np.full(rows * cols * ANCHORS_PER_CELL, s))
    out = np.concatenate(centres).astype(np.float64), np.concatenate(strides).astype(np.float64)
    for a in out:
        a.setflags(write=False)
    return out


def decode_scrfd(
    scores: Sequence[np.ndarray],
    bboxes: Sequence[np.ndarray],
    kps: Sequence[np.ndarray],
    width: int,
    height: int,
    score_threshold: float,
    nms_threshold: float,
) -> Detections:
    """Decode one image's raw SCRFD outputs (one array per stride 8, 16, 32 in each list: A_s×1 scores, A_s×4
    distances, A_s×10 keypoint offsets, float32) for a ``width``×``height`` input, in **network-input px**.

    Anchors passing the detectors' score cut-off (``OnnxDetector.keep_candidates``: ``>= score_threshold``, as
    insightface, the best ``PRE_NMS_TOP_K``) are decoded with ``distance2bbox``/``distance2kps`` (module
    docstring) and greedy NMS at ``nms_threshold`` applied. Returns ``Detections`` (x1 y1 x2 y2
    float32 px, unclipped), best first. Raises ``ModelError`` when the anchor counts do not fit the input size.
    """
    centres, strides = scrfd_anchor_centres(int(width), int(height))
    try:
        score = np.concatenate([np.asarray(a).reshape(-1) for a in scores])
        dist = np.concatenate([np.asarray(a).reshape(-1, 4) for a in bboxes])
        offs = np.concatenate([np.asarray(a).reshape(-1, 10) for a in kps])
    except ValueError as exc:
        raise ModelError(f"{_MODEL_NAME}: output shapes do not fit the decoder: {exc}") from None
    if not (len(score) == len(dist) == len(offs) == len(centres)):
        raise ModelError(
            f"{_MODEL_NAME}: outputs have {len(score)}/{len(dist)}/{len(offs)} anchors, but a {width}×{height} "
            f"input has {len(centres)} anchors ({ANCHORS_PER_CELL} per cell); the model file does not fit this decoder"
        )
    idx = OnnxDetector.keep_candidates(score, score_threshold)
    if not idx.size:
        return Detections.empty()
    c, s = centres[idx], strides[idx, None]
    d = dist[idx].astype(np.float64) * s
    boxes = np.concatenate([c - d[:, :2], c + d[:, 2:]], axis=1)
    points = c[:, None, :] + offs[idx].astype(np.float64).reshape(-1, 5, 2) * s[:, None, :]
    return OnnxDetector.suppress(boxes, score[idx], points, nms_threshold)


#: Width of the last axis of each output, in graph order: scores, boxes, keypoints for strides 8, 16, 32.
_OUTPUT_WIDTHS = (1,) * 3 + (4,) * 3 + (10,) * 3


class ScrfdDetector(OnnxDetector):
    """SCRFD (InsightFace, 9 outputs with keypoints) run by ONNX Runtime (``OnnxDetector`` does loading, checks,
    batching and errors).

    The graph: one rank-4 float input; 9 float outputs all of rank 2 (the published export, no batch axis: one
    image per run) or all of rank 3 (batched exports: ``max_batch`` images per run), last axes 1/4/10 per stride.
    ``input_size`` multiples of 32. Raises ``ModelError`` naming the output for a graph without keypoints.
    """

    kind = "scrfd"
    label = _MODEL_NAME

    @staticmethod
    def _outputs_batched(outputs: Sequence[ort.NodeArg]) -> bool:
        # The published export drops the batch axis (rank 2); InsightFace's batched exports keep it (rank 3).
        return bool(outputs) and all(len(o.shape) == 3 for o in outputs)

    def expected_outputs(self, outputs: Sequence[ort.NodeArg]) -> list[IoSpec]:
        rank = 3 if self._outputs_batched(outputs) else 2
        return [(None, rank, "tensor(float)")] * (3 * len(STRIDES))

    def configure(self, arg: ort.NodeArg, outputs: Sequence[ort.NodeArg]) -> None:
        self.batched = self._outputs_batched(outputs)
        for i, width in enumerate(_OUTPUT_WIDTHS):
            last = outputs[i].shape[-1]
            if isinstance(last, int) and last != width:
                raise ModelError(
                    f"{self.name}: output {i} ({outputs[i].name!r}) has last dimension {last}, expected {width} "
                    "(scores, boxes, keypoints per stride 8/16/32); only SCRFD graphs with keypoints are supported"
                )
        if not self.batched:
            self.batch_limit = 1

    def preprocess(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Letterbox BGR uint8 images (top-left, zero padding) → N×3×H×W float32 **RGB** blob, (x − 127.5)/128,
        and the letterbox scales (N float64; source px = input px / scale). Raises ``ImageError``."""
        canvases, scales = letterbox_batch(
            images, self.input_width, self.input_height, self.input_width, self.input_height,
        )
        blob = np.empty((len(images), 3, self.input_height, self.input_width), np.float32)
        blob[...] = canvases[..., ::-1].transpose(0, 3, 1, 2)
        blob -= INPUT_MEAN
        blob /= INPUT_STD
        return blob, scales

    def decode(
        self, raw: list[np.ndarray], k: int, width: int, height: int, score_threshold: float, nms_threshold: float,
    ) -> Detections:
        per_image = [r[k] for r in raw] if self.batched else raw
        return decode_scrfd(
            per_image[0:3], per_image[3:6], per_image[6:9], width, height, score_threshold, nms_threshold,
        )
