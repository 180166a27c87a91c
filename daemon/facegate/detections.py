"""The ``Detections`` container: faces found in one image.

Fields (N faces):

* ``boxes``: N×4 float32, ``x1 y1 x2 y2`` in source-image px (x2, y2 exclusive edges as the detector gives them);
* ``scores``: N float32 detector confidences in [0, 1];
* ``landmarks``: N×5×2 float32 px, in the order of ``LANDMARK_NAMES``. "Left"/"right" are as seen **in the image**
  (smaller x first), which for a frontal face is the subject's right eye first. This is the order every detector
  in ../shared/models/README.md emits and the order of the ArcFace 112×112 template.
* ``data``: optional extra per-face arrays (first dimension N), e.g. ``embeddings`` (N×D float32) or
  ``track_ids`` (N int64). Indexing applies to them too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

LANDMARK_NAMES = (
    "eye_image_left",  # eye with the smaller x (subject's right eye)
    "eye_image_right",  # eye with the larger x (subject's left eye)
    "nose",
    "mouth_image_left",
    "mouth_image_right",
)


@dataclass
class Detections:
    """Faces in one image; see the module docstring for shapes, dtypes and the landmark order."""

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray
    data: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        n = len(self.boxes)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.landmarks = np.asarray(self.landmarks, dtype=np.float32).reshape(-1, 5, 2)
        if len(self.scores) != n or len(self.landmarks) != n:
            raise ValueError(
                f"Detections: boxes {self.boxes.shape}, scores {self.scores.shape} and landmarks "
                f"{self.landmarks.shape} must all have N={n} rows"
            )
        for key, value in self.data.items():
            if len(value) != n:
                raise ValueError(f"Detections.data[{key!r}] has {len(value)} rows, expected {n}")

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, index: Any) -> Detections:
        """Select faces by int, slice, index array or boolean mask; always returns ``Detections``."""
        if isinstance(index, int | np.integer):
            index = [int(index)]
        return Detections(
            self.boxes[index],
            self.scores[index],
            self.landmarks[index],
            {k: v[index] for k, v in self.data.items()},
        )

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32))

    @classmethod
    def merge(cls, parts: list[Detections]) -> Detections:
        """Concatenate several containers; ``data`` keys must agree across non-empty parts."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        keys = set(parts[0].data)
        if any(set(p.data) != keys for p in parts):
            raise ValueError("Detections.merge: parts carry different data keys")
        return cls(
            np.concatenate([p.boxes for p in parts]),
            np.concatenate([p.scores for p in parts]),
            np.concatenate([p.landmarks for p in parts]),
            {k: np.concatenate([p.data[k] for p in parts]) for k in keys},
        )

    @property
    def widths(self) -> np.ndarray:
        return self.boxes[:, 2] - self.boxes[:, 0]

    @property
    def inter_eye_px(self) -> np.ndarray:
        """Distance between the two eye landmarks, px (N float32)."""
        return np.linalg.norm(self.landmarks[:, 1] - self.landmarks[:, 0], axis=1)

    def to_json(self) -> list[dict[str, Any]]:
        """Per-face dicts for CLI output: box [x1,y1,x2,y2] px, score, landmarks {name: [x, y]} px."""
        out = []
        for i in range(len(self)):
            out.append(
                {
                    "box": [round(float(v), 2) for v in self.boxes[i]],
                    "score": round(float(self.scores[i]), 4),
                    "landmarks": {
                        name: [round(float(x), 2), round(float(y), 2)]
                        for name, (x, y) in zip(LANDMARK_NAMES, self.landmarks[i], strict=True)
                    },
                }
            )
        return out
