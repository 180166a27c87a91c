"""Per-camera face tracker: associates the faces of consecutive frames by box overlap and landmark agreement.

One ``FaceTracker`` per camera (it owns its id counter, so ids are unique per camera, not across cameras).
Association is greedy on an affinity that mixes the IoU of the boxes with the agreement of the 5 landmarks:
the IOU tracker of Bochinski, Eiselein and Sikora, "High-Speed Tracking-by-Detection Without Using Image
Information" (AVSS 2017), which matches each detection to the track it overlaps most, with a landmark term
added because a face box moves little between frames at door distances while the landmarks tell two overlapping
faces apart. Greedy matching instead of the Hungarian assignment of SORT (Bewley et al., ICIP 2016) is what
the IOU tracker does; at the few faces a door camera sees the two agree almost always, and the greedy pass
needs no SciPy.

Times are monotonic seconds (``time.monotonic()`` of the frame's capture).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from facegate.detections import Detections
from facegate.errors import UsageError

log = logging.getLogger(__name__)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box in ``a`` (M×4 float, x1 y1 x2 y2 px) with every box in ``b`` (N×4).

    Returns M×N float32 in [0, 1]; empty or degenerate boxes give 0.
    """
    a = np.asarray(a, np.float32).reshape(-1, 4)
    b = np.asarray(b, np.float32).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou.astype(np.float32)


def landmark_agreement(track_lm: np.ndarray, track_boxes: np.ndarray, det_lm: np.ndarray) -> np.ndarray:
    """How well each detection's landmarks agree with each track's last landmarks, M×N float32 in [0, 1].

    ``track_lm`` M×5×2 and ``det_lm`` N×5×2 are px; the mean point distance is divided by the track face's size
    (sqrt of its box area, px) so the term does not depend on how near the face is: 1 for identical points,
    0 once the points are on average a whole face size apart.
    """
    d = np.linalg.norm(track_lm[:, None, :, :] - det_lm[None, :, :, :], axis=-1).mean(axis=-1)
    w = np.clip(track_boxes[:, 2] - track_boxes[:, 0], 1.0, None)
    h = np.clip(track_boxes[:, 3] - track_boxes[:, 1], 1.0, None)
    scale = np.sqrt(w * h)[:, None]
    return np.clip(1.0 - d / scale, 0.0, 1.0).astype(np.float32)


@dataclass
class _Track:
    track_id: int
    box: np.ndarray  # 4 float32 px
    landmarks: np.ndarray  # 5×2 float32 px
    first_seen: float
    last_seen: float
    hits: int = 1


class FaceTracker:
    """IoU + landmark tracker for one camera.

    Parameters (keyword only):

    * ``min_affinity``: a detection joins a track only when ``(1 - landmark_weight)·IoU + landmark_weight·agreement``
      reaches this value (0..1, default 0.3, the IOU tracker's sigma_IoU for IoU alone);
    * ``landmark_weight``: share of the landmark term in the affinity (0..1, default 0.5);
    * ``timeout_s``: a track not matched for longer than this (monotonic seconds) expires (default 1.0 s).
    """

    def __init__(self, *, min_affinity: float = 0.3, landmark_weight: float = 0.5, timeout_s: float = 1.0) -> None:
        if not 0.0 < min_affinity <= 1.0:
            raise UsageError(f"tracker min_affinity must be in (0, 1], got {min_affinity}")
        if not 0.0 <= landmark_weight <= 1.0:
            raise UsageError(f"tracker landmark_weight must be in [0, 1], got {landmark_weight}")
        if not timeout_s > 0:
            raise UsageError(f"tracker timeout_s must be > 0 seconds, got {timeout_s}")
        self.min_affinity = float(min_affinity)
        self.landmark_weight = float(landmark_weight)
        self.timeout_s = float(timeout_s)
        self._tracks: dict[int, _Track] = {}
        self._next_id = 1
        self.expired: list[int] = []  # ids expired by the latest update()/expire() call

    @property
    def active_ids(self) -> list[int]:
        """Ids of the live tracks, oldest first."""
        return list(self._tracks)

    def expire(self, now: float) -> list[int]:
        """Drop tracks not seen for more than ``timeout_s`` before ``now`` (monotonic s); returns their ids."""
        gone = [tid for tid, t in self._tracks.items() if now - t.last_seen > self.timeout_s]
        for tid in gone:
            del self._tracks[tid]
        self.expired = gone
        if gone:
            log.debug("event=tracks_expired ids=%s", gone)
        return gone

    def update(self, dets: Detections, now: float) -> np.ndarray:
        """Assign a track id to every face of one frame captured at ``now`` (monotonic s).

        Returns N int64 ids in the order of ``dets`` (new faces get fresh ids). Tracks unseen for more than
        ``timeout_s`` are expired first; their ids are in ``self.expired`` afterwards. ``dets`` is not modified.
        """
        self.expire(now)
        n = len(dets)
        ids = np.zeros(n, np.int64)
        if n == 0:
            return ids
        tracks = list(self._tracks.values())
        assigned = np.zeros(n, bool)
        if tracks:
            t_boxes = np.stack([t.box for t in tracks])
            t_lm = np.stack([t.landmarks for t in tracks])
            affinity = (1.0 - self.landmark_weight) * box_iou(t_boxes, dets.boxes)
            if self.landmark_weight > 0:
                affinity += self.landmark_weight * landmark_agreement(t_lm, t_boxes, dets.landmarks)
            # Greedy: best pair first, each track and each detection used once.
            order = np.argsort(-affinity, axis=None, kind="stable")
            used_t = np.zeros(len(tracks), bool)
            for flat in order:
                ti, di = divmod(int(flat), n)
                if affinity[ti, di] < self.min_affinity:
                    break
                if used_t[ti] or assigned[di]:
                    continue
                used_t[ti] = assigned[di] = True
                t = tracks[ti]
                t.box = dets.boxes[di].copy()
                t.landmarks = dets.landmarks[di].copy()
                t.last_seen = now
                t.hits += 1
                ids[di] = t.track_id
        for di in np.flatnonzero(~assigned):
            tid = self._next_id
            self._next_id += 1
            self._tracks[tid] = _Track(tid, dets.boxes[di].copy(), dets.landmarks[di].copy(), now, now)
            ids[di] = tid
        return ids
