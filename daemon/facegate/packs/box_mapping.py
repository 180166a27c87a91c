"""Map detector boxes to the boxes dlib's 5-point shape predictor expects.

``shape_predictor_5_face_landmarks.dat`` was trained on rectangles from dlib's HOG frontal-face detector: square,
about 11 % wider than a RetinaFace box and centred lower (../shared/notes/dlib-models.md §8). The shape predictor
places its initial shape in normalised box coordinates, so a box with another convention shifts and scales its
start (§8: descriptor distance to dlib's own pipeline, median 0.078 with the raw RetinaFace box, 0.038 with a
mapped box).

Mapping, for a RetinaFace box with centre (cx, cy), width w and height h (px), and optionally its 5 landmarks
with centroid (lx, ly)::

    side     = SIDE_PER_WIDTH·w + SIDE_PER_HEIGHT·h
    centre   = (cx + SHIFT_X_PER_WIDTH·w,    cy + SHIFT_Y_PER_HEIGHT·h)          boxes only
    centre   = (lx + LM_SHIFT_X_PER_WIDTH·w, ly + LM_SHIFT_Y_PER_HEIGHT·h)       with landmarks

then a square of that side on that centre, rounded to whole pixels in dlib's inclusive ``rectangle`` convention.
HOG boxes follow the facial features while a RetinaFace box's centre moves with yaw and hair, so centring on the
landmarks predicts the HOG box better (IoU); the shape predictor's cascade absorbs the difference, though, and its
points agree with dlib's own pipeline equally well either way (table below).

Fitted 2026-11-30 by ``bench/fit_box_mapping.py`` (medians of per-face ratios; side by least squares without
intercept) on 794 LFW deep-funneled faces (every 10th image of the sorted tree, 800 tried) that dlib 20.0.1's HOG
detector (1 upsample) and facegate's RetinaFace (pack ``default``: 640×640, score > 0.8) both found, each image
resized by a reproducible log-uniform factor in [1/1.44, 1.44] so the fit is not tied to one of HOG's discrete
pyramid sizes (it only reports sides 6/5 apart). Agreement with the HOG rect: IoU of the mapped rect, and "sp err",
the mean distance between dlib's 5 points on the mapped rect and on the HOG rect over the inter-ocular distance:

==================  ============================  ==========  =====  =====  ===========  =====
model               set                           IoU median  p10    p90    sp err med   p90
==================  ============================  ==========  =====  =====  ===========  =====
raw RetinaFace box  held-out half (fit on other)  0.701       0.621  0.757  0.0252       0.048
side = 1.116·w      held-out half                 0.793       0.684  0.887  0.0059       0.018
box only (default)  held-out half                 0.795       0.685  0.888  0.0058       0.017
box + landmarks     held-out half                 0.838       0.749  0.912  0.0056       0.017
raw RetinaFace box  797 faces at native 250×250   0.705       0.627  0.756  0.0258       0.050
box only (default)  797 faces at native 250×250   0.802       0.697  0.901  0.0052       0.018
box + landmarks     797 faces at native 250×250   0.867       0.751  0.921  0.0053       0.018
==================  ============================  ==========  =====  =====  ===========  =====

Descriptor distance between dlib's own pipeline (HOG rect → 5 points → chip → ResNet) and the same pipeline fed
the mapped rect, first 200 native-scale faces (``--descriptors 200``): raw box median 0.084 (p90 0.136, max 0.330);
box only median 0.040 (p90 0.073, max 0.137); box + landmarks median 0.039 (p90 0.072, **max 0.313**: a wrong
RetinaFace landmark set drags the centre). Same-person distances in dlib's space are typically below 0.6. Use the
box-only mapping by default; the landmark-centred one fits HOG's rect better but adds a failure mode.

The IoU ceiling is set by HOG's quantised sides: at native scale, the true HOG side with our centre gives a median
of 0.84; the true HOG centre with our side gives 0.91. A box-only median IoU of 0.80 is therefore about as good as
any box-only mapping gets (maximising IoU directly with Nelder–Mead gave the same ±0.003).
"""

from __future__ import annotations

import numpy as np

#: Square side per RetinaFace box width and height (least squares, no intercept). Fitted 2026-11-30.
SIDE_PER_WIDTH = 0.7159
SIDE_PER_HEIGHT = 0.2877
#: Box-only centre shift, per box width (x) and height (y); median of (HOG centre − box centre)/size.
SHIFT_X_PER_WIDTH = -0.0098
SHIFT_Y_PER_HEIGHT = 0.0561
#: Centre shift from the centroid of the 5 landmarks, per box width (x) and height (y); medians.
LM_SHIFT_X_PER_WIDTH = -0.0072
LM_SHIFT_Y_PER_HEIGHT = -0.0102


def _validated(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"dlib_rect_from_detection: boxes must be N×4, got shape {boxes.shape}")
    if not np.isfinite(boxes).all():
        raise ValueError("dlib_rect_from_detection: boxes contain NaN or infinite coordinates")
    return boxes


def dlib_rect_from_detection(
    boxes: np.ndarray,
    landmarks: np.ndarray | None = None,
    *,
    side_per_width: float = SIDE_PER_WIDTH,
    side_per_height: float = SIDE_PER_HEIGHT,
    shift_x_per_width: float | None = None,
    shift_y_per_height: float | None = None,
) -> np.ndarray:
    """Square dlib rectangles for detector boxes (see the module docstring for the formula and its fit).

    ``boxes``: N×4 float ``x1 y1 x2 y2`` px (exclusive right/bottom edges, as ``Detections.boxes``).
    ``landmarks``: optional N×5×2 float px (``Detections.landmarks``); when given, the square is centred on their
    centroid plus ``LM_SHIFT_*`` (closer to HOG's rect, but see the module docstring), else on the box centre plus
    ``SHIFT_*`` (the default). The keyword constants
    exist for the fitting script; the shift defaults depend on whether landmarks are given.
    Returns N×4 int64 ``(left, top, right, bottom)`` with **inclusive** right/bottom (``dlib.rectangle``: width =
    right − left + 1), square, not clipped to the image (the shape predictor reads outside pixels as 0, as dlib
    does). Raises ``ValueError`` for wrongly shaped arrays or non-finite coordinates.
    """
    boxes = _validated(boxes)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    if landmarks is None:
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        sx = SHIFT_X_PER_WIDTH if shift_x_per_width is None else shift_x_per_width
        sy = SHIFT_Y_PER_HEIGHT if shift_y_per_height is None else shift_y_per_height
    else:
        landmarks = np.asarray(landmarks, dtype=np.float64)
        if landmarks.shape != (len(boxes), 5, 2):
            raise ValueError(
                f"dlib_rect_from_detection: landmarks must be N×5×2 with N={len(boxes)}, got {landmarks.shape}"
            )
        if not np.isfinite(landmarks).all():
            raise ValueError("dlib_rect_from_detection: landmarks contain NaN or infinite coordinates")
        centre = landmarks.mean(axis=1)
        sx = LM_SHIFT_X_PER_WIDTH if shift_x_per_width is None else shift_x_per_width
        sy = LM_SHIFT_Y_PER_HEIGHT if shift_y_per_height is None else shift_y_per_height
    cx = centre[:, 0] + sx * w
    cy = centre[:, 1] + sy * h
    side = np.maximum(np.rint(side_per_width * w + side_per_height * h), 1.0)
    left = np.floor(cx - side / 2 + 0.5)
    top = np.floor(cy - side / 2 + 0.5)
    return np.stack([left, top, left + side - 1, top + side - 1], axis=1).astype(np.int64)


def rect_to_xyxy(rects: np.ndarray) -> np.ndarray:
    """dlib inclusive rects N×4 int (left, top, right, bottom) → N×4 float64 ``x1 y1 x2 y2`` with exclusive edges."""
    rects = np.asarray(rects, dtype=np.float64).reshape(-1, 4)
    return rects + np.array([0.0, 0.0, 1.0, 1.0])
