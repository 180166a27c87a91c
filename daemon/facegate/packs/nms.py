"""Box overlap and greedy non-maximum suppression in numpy, shared by every detector decoder.

Boxes are ``x1 y1 x2 y2`` in px with ``x2``/``y2`` as exclusive edges, so a box's area is ``(x2-x1)·(y2-y1)``
(no ``+1``): the convention of the detectors' decoders (yakhyo/retinaface-pytorch ``utils/box_utils.py``,
OpenCV ``cv::dnn::NMSBoxes`` on ``Rect2d``). The algorithm is the classic greedy NMS of the Fast R-CNN
``py_cpu_nms.py`` (Girshick), which RetinaFace's reference inference also uses: take the best remaining box, drop
every remaining box whose IoU with it exceeds the threshold, repeat. The loop runs once per *kept* box (a handful
per image); each pass is a vectorised IoU of one box against the rest.
"""

from __future__ import annotations

import numpy as np


def box_areas(boxes: np.ndarray) -> np.ndarray:
    """Areas of N×4 ``x1 y1 x2 y2`` boxes in px² (float64, N); degenerate boxes give 0, never negative."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box in ``a`` (N×4) with every box in ``b`` (M×4), ``x1 y1 x2 y2`` px.

    Returns an N×M float64 array in [0, 1]. A pair whose union is empty (two degenerate boxes) has IoU 0.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = box_areas(a)[:, None] + box_areas(b)[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression.

    ``boxes`` N×4 ``x1 y1 x2 y2`` px, ``scores`` N. A box is suppressed when its IoU with a higher-scoring kept box
    is **greater than** ``iou_threshold`` (as ``py_cpu_nms.py`` and ``cv::dnn::NMSBoxes``). Ties in score keep the
    lower index first (stable sort). Returns the kept indices (int64), best score first.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(boxes) != len(scores):
        raise ValueError(f"nms: {len(boxes)} boxes but {len(scores)} scores")
    order = np.argsort(-scores, kind="stable")
    areas = box_areas(boxes)
    keep: list[int] = []
    while order.size:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        if not rest.size:
            break
        lt = np.maximum(boxes[best, :2], boxes[rest, :2])
        rb = np.minimum(boxes[best, 2:], boxes[rest, 2:])
        wh = np.clip(rb - lt, 0, None)
        inter = wh[:, 0] * wh[:, 1]
        union = areas[best] + areas[rest] - inter
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, inter / union, 0.0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)
