"""``FacePipeline``: one pack's detector, recogniser (and liveness) loaded once, run batched.

Images are H×W×3 uint8 **BGR**. Every method takes a list of images so that callers (the inference stage, enrolment,
evaluation) batch across cameras or files; the detector runs them as one batch and the recogniser runs every face of
every image as one batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import numpy as np

from facegate.detections import Detections
from facegate.packs.cache import PreparedPack, ensure_prepared
from facegate.packs.manifest import PackManifest, load_manifest
from facegate.packs.protocols import Detector, JitterRecogniser, Liveness, Recogniser
from facegate.packs.registry import build_detector, build_liveness, build_recogniser
from facegate.scoring import Scorer

log = logging.getLogger(__name__)


class FacePipeline:
    """Detection → alignment → embedding (→ liveness) for one model pack.

    Attributes: ``manifest`` (PackManifest), ``detector`` (``Detector``), ``recogniser`` (``Recogniser``),
    ``liveness`` (``Liveness`` or None), ``scorer`` (``scoring.Scorer`` at the pack's operating point), ``metric``
    ("euclidean": lower distance = more similar; "cosine": higher similarity = more similar) and ``threshold`` (the
    pack's operating point) as in ``scorer``, ``providers`` (what ONNX Runtime really uses for the recogniser).
    The protocols are in ``packs/protocols.py``.
    """

    def __init__(
        self,
        prepared: PreparedPack,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        with_liveness: bool = True,
    ) -> None:
        self.prepared = prepared
        self.manifest: PackManifest = prepared.manifest
        providers = list(providers) if providers else None
        self.detector: Detector = build_detector(prepared, providers, threads)
        self.recogniser: Recogniser = build_recogniser(prepared, providers, threads)
        self.liveness: Liveness | None = build_liveness(prepared, providers, threads) if with_liveness else None
        self.scorer = Scorer.resolve(self.manifest)
        self.metric = self.scorer.metric
        self.threshold = self.scorer.threshold
        self.providers = list(self.recogniser.providers)

    @classmethod
    def load(
        cls,
        pack: str | Path = "default",
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        with_liveness: bool = True,
    ) -> FacePipeline:
        """Load a pack by name or manifest path, preparing it on first use.

        Raises ``ConfigError`` for an unknown pack, ``ChecksumError``/``ModelError`` naming the file for a missing,
        corrupt or mismatching model.
        """
        manifest = load_manifest(pack)
        return cls(ensure_prepared(manifest), providers, threads, with_liveness)

    @property
    def embedding_size(self) -> int:
        return self.manifest.recogniser.embedding_size

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Faces in each image (boxes, scores, 5 landmarks in source px), detection run as one batch."""
        if not images:
            return []
        return self.detector.detect(list(images))

    def align(self, image: np.ndarray, dets: Detections) -> np.ndarray:
        """The recogniser's aligned chips for the faces ``dets`` of ``image`` (N×S×S×3 uint8)."""
        return self.recogniser.align(image, dets)

    def embed_chips(self, chips: np.ndarray) -> np.ndarray:
        """Embeddings of aligned chips: N×D float32 (normalised only if the manifest says so)."""
        return self.recogniser.embed_chips(chips)

    def embed(self, image: np.ndarray, dets: Detections, jitters: int = 0) -> np.ndarray:
        """Align and embed the faces ``dets`` of one image: N×D float32. ``jitters`` ≥ 2 averages that many
        perturbed copies per face (``packs/jitter.py``; enrolment/evaluation only, it costs ``jitters``× time)."""
        count = self._jitter_count(jitters)
        if count:
            return self._embed_jittered([image], [dets], count)[0]
        return self.embed_chips(self.align(image, dets))

    def embed_many(
        self, images: Sequence[np.ndarray], dets_list: Sequence[Detections], jitters: int = 0,
    ) -> list[np.ndarray]:
        """Embeddings for the given faces of several images, all faces (and all their jittered copies) run as one
        batch. ``jitters`` 0 or 1: the plain descriptor; ≥ 2: the mean descriptor of that many copies (chip,
        mirror, dlib ``jitter_image`` perturbations; ``packs/jitter.py``). Raises ``UsageError`` when the pack's
        recogniser has no jitter support or ``jitters`` is negative."""
        count = self._jitter_count(jitters)
        if count:
            return self._embed_jittered(images, dets_list, count)
        chips = [self.align(img, d) for img, d in zip(images, dets_list, strict=True)]
        counts = [len(c) for c in chips]
        if sum(counts) == 0:
            return [np.zeros((0, self.embedding_size), np.float32) for _ in counts]
        flat = self.embed_chips(np.concatenate([c for c in chips if len(c)]))
        return np.split(flat, np.cumsum(counts)[:-1])

    def _jitter_count(self, jitters: int) -> int:
        from facegate.errors import UsageError
        from facegate.packs.jitter import effective_count

        try:
            count = effective_count(jitters)
        except ValueError as exc:
            raise UsageError(f"--jitters {jitters!r}: {exc}") from None
        if count and not isinstance(self.recogniser, JitterRecogniser):
            raise UsageError(f"pack {self.manifest.name}: jitter is implemented for the dlib recogniser only; "
                             "use --jitters 0")
        return count

    def _embed_jittered(
        self, images: Sequence[np.ndarray], dets_list: Sequence[Detections], count: int,
    ) -> list[np.ndarray]:
        from facegate.packs.jitter import mean_descriptors

        recogniser = cast(JitterRecogniser, self.recogniser)  # _jitter_count refused the other recognisers
        chips = [recogniser.jittered_chips(img, d, count) for img, d in zip(images, dets_list, strict=True)]
        counts = [len(c) for c in chips]
        if sum(counts) == 0:
            return [np.zeros((0, self.embedding_size), np.float32) for _ in counts]
        flat = np.concatenate([c for c in chips if len(c)])
        descriptors = self.embed_chips(flat.reshape((-1,) + flat.shape[2:]))
        return np.split(mean_descriptors(descriptors, count), np.cumsum(counts)[:-1])

    def analyse(self, images: Sequence[np.ndarray], liveness: bool = False, jitters: int = 0) -> list[Detections]:
        """Detect and embed every face of every image; returns Detections with ``data["embeddings"]`` (N×D float32)
        and, when ``liveness`` and the pack has PAD models, ``data["liveness"]`` (N float32 in [0, 1]).
        ``jitters`` as in ``embed_many`` (default 0: the plain descriptor, as the real-time probe path uses)."""
        dets_list = self.detect(images)
        embeddings = self.embed_many(images, dets_list, jitters)
        out = []
        for image, dets, emb in zip(images, dets_list, embeddings, strict=True):
            data = dict(dets.data)
            data["embeddings"] = emb
            if liveness and self.liveness is not None:
                data["liveness"] = (
                    self.liveness.score(image, dets) if len(dets) else np.zeros(0, np.float32)
                )
            out.append(Detections(dets.boxes, dets.scores, dets.landmarks, data))
        return out

    def compare(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Comparison scores between rows of ``a`` (N×D) and ``b`` (M×D): N×M float32 — Euclidean distance for
        the euclidean metric, cosine similarity for cosine (``Scorer.compare``)."""
        return self.scorer.compare(a, b)
