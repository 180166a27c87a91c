"""What the pipeline needs from a pack's models, as ``typing.Protocol``s: ``Detector``, ``Recogniser`` (and
``JitterRecogniser``, one that can average jittered chips), ``Liveness``.

``packs/registry.py`` builds objects that satisfy them from a pack's manifest; ``facegate.pipeline`` and the
runtime depend on these protocols only, not on a backend. Images are H×W×3 uint8 **BGR**; faces are
``facegate.detections.Detections`` in source-image px.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from facegate.detections import Detections


@runtime_checkable
class Detector(Protocol):
    """Finds faces. ``providers``: the ONNX Runtime execution providers really in use."""

    providers: list[str]

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """One ``Detections`` per BGR uint8 image (boxes, scores, 5 landmarks in source px). Raises ``ImageError``
        for a malformed image."""
        ...


@runtime_checkable
class Recogniser(Protocol):
    """Turns faces into embeddings: ``align`` cuts the chips the network takes, ``embed_chips`` embeds them."""

    providers: list[str]

    def align(self, image: np.ndarray, dets: Detections) -> np.ndarray:
        """Aligned chips of the faces ``dets`` of the BGR ``image``: N×S×S×3 uint8 (S and colour order are the
        recogniser's own)."""
        ...

    def embed_chips(self, chips: np.ndarray) -> np.ndarray:
        """Embeddings of chips from ``align``: N×D float32."""
        ...


@runtime_checkable
class JitterRecogniser(Recogniser, Protocol):
    """A recogniser that can also make ``count`` perturbed chips per face (test-time jitter, ``packs/jitter.py``)."""

    def jittered_chips(self, image: np.ndarray, dets: Detections, count: int, seed: int | None = None) -> np.ndarray:
        """N×count×S×S×3 uint8 chips; copy 0 is ``align``'s chip."""
        ...


@runtime_checkable
class Liveness(Protocol):
    """Presentation-attack detection: a live probability per face. ``threshold``: the pack's operating point (a face
    is live at or above it)."""

    threshold: float

    def score(self, image: np.ndarray, dets: Detections) -> np.ndarray:
        """Live probability of each face of the BGR ``image``: N float32 in [0, 1] (0 for a degenerate box)."""
        ...
