"""Idle gating: a cheap per-camera change test decides whether the face detector runs on a frame, and a zone
limits a camera to the door's area.

Most door cameras see nobody most of the time; the detector (about 10 ms of CPU for a 640×360 frame here, see
README, Benchmarks) is the cost of an idle camera. ``ChangeDetector`` runs in the camera's reader thread: it turns
each delivered frame grey, shrinks it by an integer factor to about ``scale_px`` wide (``cv2.INTER_AREA``, i.e.
the mean of each factor×factor block, which also averages sensor noise away) and counts the pixels inside the zone
whose grey level differs from the previous frame's by at least ``threshold``: the frame-differencing test of
classic motion detectors (frigate's ``ImprovedMotionDetector`` also works on a downscaled grey frame; OpenCV's
``absdiff`` + threshold). About 0.2 ms of CPU for a 768×432 frame on this machine, below the ~0.7 ms its decode
costs. ``DetectGate`` (in the inference thread) runs the detector when the changed share reaches ``min_area``,
while a face was seen within ``hold_s`` (a live track keeps detection on, so a standing person keeps being
decided), or when ``detect_every_s`` passed since the last detection (a person who arrived without a visible
change is still found). Skipping the detector can only make the daemon decide nothing for that frame: it never
produces a grant.

Zones are polygons of normalised points (x, y fractions of the frame's width and height, [0, 0] = top-left):
the same zone fits a camera's main and sub-stream and survives a resolution change, where pixel coordinates
would silently point elsewhere.

Times are monotonic seconds (the frames' ``captured_at``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from facegate.detections import Detections

#: Reasons ``DetectGate.reason`` gives for running the detector.
MOTION, TRACK, PERIODIC, UNMEASURED = "motion", "track", "periodic", "unmeasured"


def zone_px(zone: Sequence[Sequence[float]], width: int, height: int) -> np.ndarray:
    """Normalised zone points → K×2 float32 px of a ``width``×``height`` frame."""
    pts = np.asarray(zone, np.float32).reshape(-1, 2)
    return pts * np.array([width, height], np.float32)


def zone_mask(zone: Sequence[Sequence[float]] | None, width: int, height: int) -> np.ndarray:
    """H×W bool mask of the pixels inside ``zone`` (normalised points; None = every pixel)."""
    if zone is None:
        return np.ones((height, width), bool)
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [np.round(zone_px(zone, width, height)).astype(np.int32)], 1)
    return mask.astype(bool)


def in_zone(dets: Detections, zone: Sequence[Sequence[float]] | None, width: int, height: int) -> np.ndarray:
    """N bool: the face's box centre lies inside ``zone`` (normalised points) of a ``width``×``height`` px frame, or
    on its edge (``cv2.pointPolygonTest`` ≥ 0). None = every face."""
    n = len(dets)
    if zone is None or n == 0:
        return np.ones(n, bool)
    poly = zone_px(zone, width, height).reshape(-1, 1, 2)
    cx = (dets.boxes[:, 0] + dets.boxes[:, 2]) / 2
    cy = (dets.boxes[:, 1] + dets.boxes[:, 3]) / 2
    return np.array([cv2.pointPolygonTest(poly, (float(x), float(y)), False) >= 0 for x, y in zip(cx, cy,
                                                                                                  strict=True)])


class ChangeDetector:
    """Frame differencing for one camera (not thread-safe: one per reader thread).

    ``threshold``: grey levels (1-255) a downscaled pixel must change by; ``scale_px``: target width (px) of the
    downscaled frame (the frame is shrunk by the integer factor ``max(1, width // scale_px)``); ``zone``:
    normalised polygon or None.
    """

    def __init__(self, *, threshold: int = 12, scale_px: int = 160,
                 zone: Sequence[Sequence[float]] | None = None) -> None:
        self.threshold = int(threshold)
        self.scale_px = max(1, int(scale_px))
        self.zone = None if zone is None else [tuple(map(float, p)) for p in zone]
        self._prev: np.ndarray | None = None
        self._mask: np.ndarray | None = None
        self._mask_pixels = 0
        self._shape: tuple[int, int] | None = None

    def small_grey(self, image: np.ndarray) -> np.ndarray:
        """H×W×3 uint8 BGR → the grey frame shrunk by an integer factor (h×w uint8)."""
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        factor = max(1, image.shape[1] // self.scale_px)
        if factor == 1:
            return grey
        size = (max(1, image.shape[1] // factor), max(1, image.shape[0] // factor))
        return cv2.resize(grey, size, interpolation=cv2.INTER_AREA)

    def update(self, image: np.ndarray) -> float | None:
        """The share (0-1) of the zone's downscaled pixels that changed since the previous frame given here, or
        None for the first frame (or the first after a resolution change: nothing to compare with)."""
        small = self.small_grey(image)
        prev, self._prev = self._prev, small
        if self._shape != small.shape:
            self._shape = small.shape
            mask = zone_mask(self.zone, small.shape[1], small.shape[0])
            self._mask = mask if self.zone is not None else None
            self._mask_pixels = int(mask.sum())
            return None
        if prev is None or self._mask_pixels == 0:
            return None
        changed = cv2.absdiff(small, prev) >= self.threshold
        if self._mask is not None:
            changed &= self._mask
        return int(np.count_nonzero(changed)) / self._mask_pixels


@dataclass
class DetectGate:
    """Whether the detector runs on one camera's frame (one per camera, used by the inference thread).

    ``min_area``: changed share (0-1) that counts as a change; ``detect_every_s``: longest time between two
    detections (s); ``hold_s``: detection stays on this long after the last frame with a face (the tracker's
    ``track_max_age_s``: a live track keeps detection on).
    """

    min_area: float = 0.002
    detect_every_s: float = 1.0
    hold_s: float = 1.0
    last_detect_at: float | None = None
    last_face_at: float | None = None

    def reason(self, change: float | None, t: float) -> str | None:
        """Why the detector must run on a frame captured at ``t`` whose changed share is ``change`` (None = not
        measured), or None when it may be skipped."""
        if change is None:
            return UNMEASURED
        if self.last_face_at is not None and t - self.last_face_at <= self.hold_s:
            return TRACK
        if change >= self.min_area:
            return MOTION
        if self.last_detect_at is None or t - self.last_detect_at >= self.detect_every_s:
            return PERIODIC
        return None

    def detected(self, t: float, faces: int) -> None:
        """Record a detection run on the frame captured at ``t`` that kept ``faces`` faces (after zone and size
        filters: the faces that make tracks)."""
        self.last_detect_at = t
        if faces:
            self.last_face_at = t
