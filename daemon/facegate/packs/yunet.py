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
  ``(exp(b2)·s, exp(b3)·s)``; landmark n ``((k[2n] + c)·s, (k[2n+1] + r)·s)``.

Landmark order: OpenCV names the five points "right eye, left eye, nose tip, right mouth corner, left mouth corner"
(the subject's right and left), i.e. the image-left point of each pair first: facegate's order
(``facegate.detections.LANDMARK_NAMES``); no reordering is done.

This module also holds the two helpers every third-party detector here shares (``check_bgr_images``,
``to_source_px``); ``facegate.packs.scrfd`` imports them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from facegate.detections import Detections
from facegate.errors import ImageError, ModelError
from facegate.imaging import letterbox
from facegate.packs.manifest import DetectorSpec
from facegate.packs.nms import nms
from facegate.packs.onnx_runner import check_io, detector_input_size, make_session, model_label

log = logging.getLogger(__name__)

#: Feature strides of the three output levels, input px (``face_detect.cpp``: ``strides = {8, 16, 32}``).
STRIDES: tuple[int, ...] = (8, 16, 32)
#: Candidates kept (best score first) before NMS: ``top_k`` default of the opencv_zoo YuNet demo.
PRE_NMS_TOP_K = 5000
#: Output names in graph order, as both published YuNet graphs declare them.
OUTPUT_NAMES: tuple[str, ...] = tuple(f"{kind}_{s}" for kind in ("cls", "obj", "bbox", "kps") for s in STRIDES)

_MODEL_NAME = "YuNet detector"


def check_bgr_images(images: Sequence[np.ndarray]) -> None:
    """Raise ``ImageError`` naming the index of any image that is not a non-empty H×W×3 uint8 array."""
    for i, image in enumerate(images):
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ImageError(f"image {i}: expected an H×W×3 uint8 BGR array, got {desc}; load it with facegate.imaging")
        if image.shape[0] < 1 or image.shape[1] < 1:
            raise ImageError(f"image {i}: empty image {image.shape}")


def to_source_px(dets: Detections, scale: float, width: int, height: int) -> Detections:
    """Map letterboxed-input px back to source px (÷ ``scale``), clip boxes to ``width``×``height`` and drop boxes
    left with no area. Landmarks are divided but not clipped."""
    if not len(dets):
        return dets
    boxes = dets.boxes.astype(np.float64) / scale
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
    ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    out = Detections(boxes, dets.scores, dets.landmarks.astype(np.float64) / scale, dict(dets.data))
    return out if ok.all() else out[ok]


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
    for an input of ``width``×``height`` px. Faces scoring ``>= score_threshold`` are decoded with the formulas of
    the module docstring, the best ``PRE_NMS_TOP_K`` kept, greedy NMS at ``nms_threshold`` applied. Returns
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
    idx = np.flatnonzero(scores >= score_threshold)
    if idx.size > PRE_NMS_TOP_K:
        idx = idx[np.argsort(-scores[idx], kind="stable")[:PRE_NMS_TOP_K]]
    if not idx.size:
        return Detections.empty()
    cell, s = cells[idx], strides[idx, None]
    b = bbox[idx].astype(np.float64)
    centre = (cell + b[:, :2]) * s
    wh = np.exp(b[:, 2:]) * s
    boxes = np.concatenate([centre - wh / 2, centre + wh / 2], axis=1)
    points = (kps[idx].astype(np.float64).reshape(-1, 5, 2) + cell[:, None, :]) * s[:, None, :]
    keep = nms(boxes, scores[idx], nms_threshold)
    return Detections(boxes[keep], scores[idx][keep], points[keep])


class YuNetDetector:
    """YuNet run by ONNX Runtime; ``detect`` takes BGR images of any size.

    ``model``: path of the ONNX file or its bytes. ``spec``: the pack's ``DetectorSpec`` (``kind: yunet``; input
    size W×H, both multiples of 32; thresholds; ``max_batch``). A graph whose batch dimension is fixed to 1 (the
    2023mar file) is run one image at a time whatever ``max_batch`` says; a graph with fixed H×W must match
    ``input_size``. ``providers``/``threads`` go to ``make_session``.
    Raises ``ModelError`` naming the model and the mismatch when the file cannot be loaded, its graph is not YuNet
    (one rank-4 float input; the 12 rank-3 outputs of ``OUTPUT_NAMES``), its fixed input size differs from the
    manifest, or a trial run's outputs do not fit the anchor grid.
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
        self.input_width, self.input_height = detector_input_size(spec, "yunet", _MODEL_NAME, model, 32)
        self.session = make_session(model, _MODEL_NAME, providers, threads)
        check_io(
            self.session,
            self.name,
            inputs=[(None, 4, "tensor(float)")],
            outputs=[(name, 3, "tensor(float)") for name in OUTPUT_NAMES],
        )
        arg = self.session.get_inputs()[0]
        self.input_name = arg.name
        batch, _, fixed_h, fixed_w = arg.shape
        for got, want, axis in ((fixed_w, self.input_width, "width"), (fixed_h, self.input_height, "height")):
            if isinstance(got, int) and got != want:
                raise ModelError(
                    f"{self.name}: the graph's input {axis} is fixed to {got} px but the manifest's input_size says "
                    f"{want}; set input_size: [{fixed_w}, {fixed_h}] and dynamic_input: false"
                )
        self.batch_limit = 1 if isinstance(batch, int) else max(1, spec.max_batch)
        self.providers = self.session.get_providers()
        blank = np.zeros((1, 3, self.input_height, self.input_width), np.float32)
        self._decode(self.session.run(OUTPUT_NAMES, {self.input_name: blank}), 0, 1.0, 1.0)
        log.info(
            "detector=yunet input=%dx%d batch_limit=%d providers=%s",
            self.input_width, self.input_height, self.batch_limit, ",".join(self.providers),
        )

    def _decode(self, raw: list[np.ndarray], k: int, score: float, nms_iou: float) -> Detections:
        return decode_yunet(
            {name: out[k] for name, out in zip(OUTPUT_NAMES, raw, strict=True)},
            self.input_width, self.input_height, score, nms_iou,
        )

    def preprocess(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Letterbox BGR uint8 images into the input size (top-left, zero padding) → N×3×H×W float32 0..255 BGR
        blob, and the letterbox scales (N float64; source px = input px / scale)."""
        check_bgr_images(images)
        blob = np.empty((len(images), 3, self.input_height, self.input_width), np.float32)
        scales = np.empty(len(images), np.float64)
        for i, image in enumerate(images):
            canvas, scales[i] = letterbox(image, self.input_width, self.input_height)
            blob[i] = canvas.transpose(2, 0, 1)
        return blob, scales

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Find faces in each BGR uint8 image; one ``Detections`` per image in source px (boxes clipped to the
        image, landmarks not). Batches of at most ``batch_limit`` images. Raises ``ImageError`` for a bad image."""
        check_bgr_images(images)  # every image first, so an error names its index in the whole list
        results: list[Detections] = []
        for start in range(0, len(images), self.batch_limit):
            chunk = images[start : start + self.batch_limit]
            blob, scales = self.preprocess(chunk)
            raw = self.session.run(OUTPUT_NAMES, {self.input_name: blob})
            for k, image in enumerate(chunk):
                dets = self._decode(raw, k, self.spec.score_threshold, self.spec.nms_threshold)
                results.append(to_source_px(dets, scales[k], image.shape[1], image.shape[0]))
        return results
