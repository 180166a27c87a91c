"""A fused recogniser (manifest ``recogniser.kind: fused``): several recognisers run on the same detected face, and
their embeddings are concatenated into one template.

The built-in ``default`` pack fuses the dlib ResNet (128-d, Euclidean, dlib's 150×150 chip from dlib's 5-point
landmarks) and MobileFaceNet (128-d, cosine, the ArcFace 112×112 chip from the detector's 5 landmarks): template
columns 0–127 are the dlib descriptor (raw, as dlib makes it), 128–255 the L2-normalised MobileFaceNet embedding.
How two such templates are compared — each part scored in its own metric, mapped to a calibrated log-likelihood
ratio, summed — is ``facegate/scoring.py``'s (``Fusion``); this module only makes the embeddings.

Each part aligns the face its own way, so one face has one chip per part. ``align`` returns them together as a
numpy **structured array** (one record per face, field ``p0``, ``p1``, … holding that part's chip), which
concatenates, slices and counts like the chip arrays of a single recogniser; ``embed_chips`` embeds every part's
chips as one batch and joins the columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from facegate.detections import Detections
from facegate.errors import ImageError, ModelError
from facegate.packs.protocols import Recogniser

if TYPE_CHECKING:
    from facegate.packs.manifest import FusedRecogniserSpec


class FusedRecogniser:
    """Runs ``parts`` (built ``Recogniser``s, in the manifest's order) on the same faces.

    ``spec``: the manifest's ``FusedRecogniserSpec``. Raises ``ModelError`` when the number of parts differs from
    the manifest's or a part's chips are not N×S×S×3 uint8.
    """

    #: The manifest's ``recogniser.kind`` this class runs.
    kind = "fused"

    def __init__(self, parts: Sequence[Recogniser], spec: FusedRecogniserSpec) -> None:
        if len(parts) != len(spec.parts):
            raise ModelError(f"fused recogniser: {len(parts)} recognisers built, the manifest lists {len(spec.parts)}")
        self.parts = list(parts)
        self.spec = spec
        self.dims = [p.embedding_size for p in spec.parts]
        self.providers = list(dict.fromkeys(p for part in self.parts for p in part.providers))

    @property
    def metric(self) -> str:
        return self.spec.metric

    def _record_type(self, chips: list[np.ndarray]) -> np.dtype:
        for i, c in enumerate(chips):
            if c.ndim != 4 or c.shape[3] != 3 or c.dtype != np.uint8:
                raise ModelError(f"fused recogniser part {i}: chips must be N×S×S×3 uint8, got {c.dtype} {c.shape}")
        return np.dtype([(f"p{i}", np.uint8, c.shape[1:]) for i, c in enumerate(chips)])

    def align(self, image: np.ndarray, dets: Detections) -> np.ndarray:
        """Each part's aligned chips of the faces ``dets`` of the BGR uint8 ``image``, as N records of a structured
        array: field ``p<i>`` is part i's chip (its own size and colour order: dlib 150×150 RGB, ArcFace 112×112
        BGR)."""
        chips = [part.align(image, dets) for part in self.parts]
        dtype = self._record_type(chips)
        out = np.empty(len(dets), dtype)
        for i, c in enumerate(chips):
            out[f"p{i}"] = c
        return out

    def embed_chips(self, chips: np.ndarray) -> np.ndarray:
        """Templates of the chip records from ``align``: N×(sum of the parts' sizes) float32, each part's embedding
        in its columns as that part makes it (normalised only where its manifest block says so). Raises
        ``ImageError`` for anything but ``align``'s records."""
        chips = np.asarray(chips)
        names = chips.dtype.names or ()
        if chips.ndim != 1 or names != tuple(f"p{i}" for i in range(len(self.parts))):
            raise ImageError(f"fused recogniser: chips must be the records that align() returns (fields "
                             f"{', '.join(f'p{i}' for i in range(len(self.parts)))}), got {chips.dtype} {chips.shape}")
        if not len(chips):
            return np.zeros((0, self.spec.embedding_size), np.float32)
        columns = [part.embed_chips(np.ascontiguousarray(chips[f"p{i}"])) for i, part in enumerate(self.parts)]
        for i, (c, dim) in enumerate(zip(columns, self.dims, strict=True)):
            if c.shape != (len(chips), dim):
                raise ModelError(f"fused recogniser part {i}: embedded {c.shape}, expected ({len(chips)}, {dim})")
        return np.concatenate(columns, axis=1).astype(np.float32, copy=False)

    def embed(self, image: np.ndarray, dets: Detections) -> np.ndarray:
        """``embed_chips(align(image, dets))``: N×D float32."""
        return self.embed_chips(self.align(image, dets))
