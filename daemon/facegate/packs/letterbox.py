"""Detector input and output geometry shared by every detector plug-in: checking the BGR images, letterboxing a batch
into the network input, and mapping decoded faces back to source-image px.

Letterboxing (``facegate.imaging.letterbox``): the image is resized with its aspect kept so that it fits the
detector's input size, placed at the **top-left** of a zero canvas; ``scale`` = canvas px per source px, and a
source point is ``input point / scale``. OpenCV's ``FaceDetectorYN`` also pads only bottom/right
(``face_detect.cpp`` ``padWithDivisor``) and insightface ``scrfd.py`` ``detect`` puts the resized image at
``det_img[:new_height, :new_width]``; RetinaFace's graph takes any size, and facegate letterboxes it the same way so
that images of different sizes can share one batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from facegate.detections import Detections
from facegate.errors import ImageError
from facegate.imaging import letterbox


def check_bgr_images(images: Sequence[np.ndarray]) -> None:
    """Raise ``ImageError`` naming the index of any image that is not a non-empty H×W×3 uint8 (BGR) array."""
    for i, image in enumerate(images):
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ImageError(f"image {i}: expected an H×W×3 uint8 BGR array, got {desc}; load it with facegate.imaging")
        if image.shape[0] < 1 or image.shape[1] < 1:
            raise ImageError(f"image {i}: empty image {image.shape}")


def letterbox_batch(
    images: Sequence[np.ndarray], fit_width: int, fit_height: int, width: int, height: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Letterbox each BGR uint8 image into ``fit_width``×``fit_height`` px and keep the top-left
    ``width``×``height`` px of each canvas (``width``/``height`` ≤ the fit size; smaller only trims zero padding).

    Returns the canvases (N×height×width×3 uint8, BGR) and the scales (N float64; source px = input px / scale).
    Raises ``ImageError`` for an image that is not H×W×3 uint8.
    """
    check_bgr_images(images)
    canvases = np.empty((len(images), height, width, 3), np.uint8)
    scales = np.empty(len(images), np.float64)
    for i, image in enumerate(images):
        canvas, scales[i] = letterbox(image, fit_width, fit_height)
        canvases[i] = canvas[:height, :width]
    return canvases, scales


def to_source_px(dets: Detections, scale: float, width: int, height: int) -> Detections:
    """Map letterboxed-input px back to source px (÷ ``scale``), clip boxes to ``width``×``height`` and drop boxes
    left with no area. Landmarks are divided but not clipped (a point of a face cut by the border stays outside)."""
    if not len(dets):
        return dets
    boxes = dets.boxes.astype(np.float64) / scale
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
    ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    out = Detections(boxes, dets.scores, dets.landmarks.astype(np.float64) / scale, dict(dets.data))
    return out if ok.all() else out[ok]
