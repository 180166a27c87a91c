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

import logging
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from facegate.detections import Detections
from facegate.errors import ModelError
from facegate.imaging import letterbox
from facegate.packs.manifest import DetectorSpec
from facegate.packs.nms import nms
from facegate.packs.onnx_runner import check_io, detector_input_size, make_session, model_label
from facegate.packs.yunet import check_bgr_images, to_source_px

log = logging.getLogger(__name__)

#: Feature strides of the three output levels (``scrfd.py``: ``_feat_stride_fpn = [8, 16, 32]`` when fmc = 3).
STRIDES: tuple[int, ...] = (8, 16, 32)
#: Anchors per feature-map cell (``scrfd.py``: ``_num_anchors = 2`` for the 9-output layout).
ANCHORS_PER_CELL = 2
#: Pixel normalisation (``scrfd.py``: ``input_mean = 127.5``, ``input_std = 128.0``), applied to RGB.
INPUT_MEAN = 127.5
INPUT_STD = 128.0
#: Candidates kept (best score first) before NMS (same bound as the other decoders; SCRFD keeps all above threshold).
PRE_NMS_TOP_K = 5000

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

    Anchors scoring ``>= score_threshold`` are decoded with ``distance2bbox``/``distance2kps`` (module docstring),
    the best ``PRE_NMS_TOP_K`` kept, greedy NMS at ``nms_threshold`` applied. Returns ``Detections`` (x1 y1 x2 y2
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
    idx = np.flatnonzero(score >= score_threshold)
    if idx.size > PRE_NMS_TOP_K:
        idx = idx[np.argsort(-score[idx], kind="stable")[:PRE_NMS_TOP_K]]
    if not idx.size:
        return Detections.empty()
    c, s = centres[idx], strides[idx, None]
    d = dist[idx].astype(np.float64) * s
    boxes = np.concatenate([c - d[:, :2], c + d[:, 2:]], axis=1)
    points = c[:, None, :] + offs[idx].astype(np.float64).reshape(-1, 5, 2) * s[:, None, :]
    keep = nms(boxes, score[idx], nms_threshold)
    return Detections(boxes[keep], score[idx][keep], points[keep])


class ScrfdDetector:
    """SCRFD (InsightFace, 9 outputs with keypoints) run by ONNX Runtime; ``detect`` takes BGR images of any size.

    ``model``: path of the ONNX file or its bytes. ``spec``: the pack's ``DetectorSpec`` (``kind: scrfd``; input
    size W×H, multiples of 32; thresholds; ``max_batch``, used only when the graph's outputs carry a batch
    dimension). ``providers``/``threads`` go to ``make_session``.
    Raises ``ModelError`` naming the model and the mismatch when the file cannot be loaded, or its graph is not
    this layout (one rank-4 float input; 9 float outputs all of rank 2, or all of rank 3), or a trial run's outputs
    do not fit the anchor grid.
    """

    def __init__(
        self,
        model: Path | str | bytes,
        spec: DetectorSpec,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
    ) -> None:
        self.spec = spec
        self.name = model_label(_MODEL_NAME, model)
        self.input_width, self.input_height = detector_input_size(spec, "scrfd", _MODEL_NAME, model, 32)
        self.session = make_session(model, _MODEL_NAME, providers, threads)
        outputs = self.session.get_outputs()
        # The published export drops the batch axis (rank 2); InsightFace's batched exports keep it (rank 3).
        self.batched = bool(outputs) and all(len(o.shape) == 3 for o in outputs)
        rank = 3 if self.batched else 2
        check_io(
            self.session,
            self.name,
            inputs=[(None, 4, "tensor(float)")],
            outputs=[(None, rank, "tensor(float)")] * (3 * len(STRIDES)),
        )
        for i, width in enumerate([1] * 3 + [4] * 3 + [10] * 3):
            last = outputs[i].shape[-1]
            if isinstance(last, int) and last != width:
                raise ModelError(
                    f"{self.name}: output {i} ({outputs[i].name!r}) has last dimension {last}, expected {width} "
                    "(scores, boxes, keypoints per stride 8/16/32); only SCRFD graphs with keypoints are supported"
                )
        arg = self.session.get_inputs()[0]
        self.input_name = arg.name
        self.batch_limit = max(1, spec.max_batch) if self.batched and not isinstance(arg.shape[0], int) else 1
        self.providers = self.session.get_providers()
        blank = np.zeros((1, 3, self.input_height, self.input_width), np.float32)
        self._decode(self.session.run(None, {self.input_name: blank}), 0, 1.0, 1.0)
        log.info(
            "detector=scrfd input=%dx%d batch_limit=%d providers=%s",
            self.input_width, self.input_height, self.batch_limit, ",".join(self.providers),
        )

    def _decode(self, raw: list[np.ndarray], k: int, score: float, nms_iou: float) -> Detections:
        per_image = [r[k] for r in raw] if self.batched else raw
        return decode_scrfd(
            per_image[0:3], per_image[3:6], per_image[6:9],
            self.input_width, self.input_height, score, nms_iou,
        )

    def preprocess(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Letterbox BGR uint8 images (top-left, zero padding) → N×3×H×W float32 **RGB** blob, (x − 127.5)/128,
        and the letterbox scales (N float64; source px = input px / scale)."""
        check_bgr_images(images)
        blob = np.empty((len(images), 3, self.input_height, self.input_width), np.float32)
        scales = np.empty(len(images), np.float64)
        for i, image in enumerate(images):
            canvas, scales[i] = letterbox(image, self.input_width, self.input_height)
            blob[i] = canvas[..., ::-1].transpose(2, 0, 1)
        blob -= INPUT_MEAN
        blob /= INPUT_STD
        return blob, scales

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Find faces in each BGR uint8 image; one ``Detections`` per image in source px (boxes clipped to the
        image, landmarks not). Raises ``ImageError`` for a bad image."""
        check_bgr_images(images)  # every image first, so an error names its index in the whole list
        results: list[Detections] = []
        for start in range(0, len(images), self.batch_limit):
            chunk = images[start : start + self.batch_limit]
            blob, scales = self.preprocess(chunk)
            raw = self.session.run(None, {self.input_name: blob})
            for k, image in enumerate(chunk):
                dets = self._decode(raw, k, self.spec.score_threshold, self.spec.nms_threshold)
                results.append(to_source_px(dets, scales[k], image.shape[1], image.shape[0]))
        return results
