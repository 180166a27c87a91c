"""Enrolment from photos: quality gates, duplicate check, and 1:N identification of images.

Gates (each refusal names its reason; limits in ``QualityLimits``):

1. exactly one face in the image (the detector's faces at the pack's score threshold);
2. face size: inter-eye distance ≥ ``min_inter_eye_px`` px;
3. sharpness: variance of the Laplacian (Pech-Pacheco et al., "Diatom autofocusing in brightfield microscopy: a
   comparative study", ICPR 2000) of the face box, grey, resized to 112×112 px so that the value does not depend on
   the face's size in the photo;
4. pose: the nose's offset from the eye midpoint along the eye line, divided by the inter-eye distance (0 for a
   frontal face, growing with yaw);
5. the other identities (one person must not have two names, and a face must not be admitted as someone else).
   Let X be the closest *other* identity, ``s`` its best comparison score with the face (``facegate/scoring.py``:
   the pack's threshold, ``FacePipeline.scorer``). When ``s`` passes the threshold the gallery would admit this
   face as X, so the face is first scored against **its own identity**: the templates already enrolled under the
   name (earlier photos of the same command count once enrolled), best score ``o``.

   * ``o`` exists and is better than ``s``: enrolled, with a ``lookalike`` note (the outcome's ``lookalike`` field,
     a stderr line from the CLI): the name and X are now lookalikes, and the daemon grants either only when one
     beats the other by ``decision.lookalike_margin`` (``runtime/decision.py``; ``gallery list --lookalikes``);
   * otherwise — a new identity, or the face closer to X than to its own photos — it is **refused**, with the
     reason in these words: "the gallery would admit this face as X (score s)". A photo refused so is tried once
     more after the command's other photos of the same name (so the file order does not matter). ``force``
     enrols it anyway (different people who look alike): the pair then becomes lookalikes as above.

   A refused photo leaves the gallery as it was: faces like it are still admitted as X, which the refusal says.
   The way to make the gallery tell the two apart is to enrol the photo (``--force``) so that the daemon requires
   the lookalike margin between them.
6. an image already enrolled for this identity (same sha256) is skipped ("already enrolled", not a refusal), so
   re-running an interrupted enrolment only adds what is missing. SQLite's UNIQUE (identity, image sha256) index
   makes this hold across processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from facegate.detections import Detections
from facegate.errors import FacegateError, GalleryError, UsageError
from facegate.gallery.core import Gallery
from facegate.gallery.store import PackBinding
from facegate.imaging import decode_image, load_image, read_image_file

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
BLUR_CROP_PX = 112
ALREADY_ENROLLED = "already enrolled: this image is already a template of this identity"


@dataclass(frozen=True)
class QualityLimits:
    """Enrolment quality limits.

    * ``min_inter_eye_px`` 40 px: below it the face is upsampled into the recogniser's chip; ISO/IEC 19794-5
      asks ≥ 60 px for passport photos, 40 keeps ordinary snapshots usable (the smallest face in
      ../shared/data/enroll_examples/knn_examples/train measures 52 px).
    * ``min_sharpness`` 40 (variance of the Laplacian at 112×112): measured on enroll_examples, sharp faces score
      117–1369; a Gaussian blur of σ = 2 px on a 130 px face drops them to ≈ 27, σ = 3 px on a 230 px face to ≈ 58.
    * ``max_yaw_ratio`` 0.5: the frontal examples stay within ±0.32; with the nose tip ≈ 0.7 inter-eye distances in
      front of the eye line, 0.5 corresponds to roughly 35° of yaw.
    """

    min_inter_eye_px: float = 40.0
    min_sharpness: float = 40.0
    max_yaw_ratio: float = 0.5


def sharpness(image: np.ndarray, box: np.ndarray) -> float:
    """Variance of the Laplacian of the face ``box`` (x1 y1 x2 y2 px) of a BGR uint8 image, grey, 112×112 px.
    Higher = sharper; 0.0 for an empty crop."""
    h, w = image.shape[:2]
    x1, y1 = max(int(box[0]), 0), max(int(box[1]), 0)
    x2, y2 = min(int(np.ceil(box[2])), w), min(int(np.ceil(box[3])), h)
    if x2 - x1 < 2 or y2 - y1 < 2:
        return 0.0
    grey = cv2.cvtColor(image[y1:y2, x1:x2], cv2.COLOR_BGR2GRAY)
    grey = cv2.resize(grey, (BLUR_CROP_PX, BLUR_CROP_PX), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def yaw_ratio(landmarks: np.ndarray) -> float:
    """Nose offset from the eye midpoint along the eye line, in inter-eye distances (5×2 landmarks, image order)."""
    eye_l, eye_r, nose = landmarks[0], landmarks[1], landmarks[2]
    axis = eye_r - eye_l
    dist = float(np.linalg.norm(axis))
    if dist < 1e-6:
        return float("inf")
    return float(np.dot(nose - (eye_l + eye_r) / 2, axis / dist) / dist)


def assess(image: np.ndarray, dets: Detections, limits: QualityLimits) -> tuple[str | None, dict[str, Any]]:
    """Apply gates 1–4 to one image's detections. Returns (refusal reason or None, quality record)."""
    if len(dets) == 0:
        return "no face found", {"faces": 0}
    if len(dets) > 1:
        return f"{len(dets)} faces found; enrolment needs exactly one face per photo", {"faces": len(dets)}
    quality = {
        "faces": 1,
        "detector_score": round(float(dets.scores[0]), 4),
        "inter_eye_px": round(float(dets.inter_eye_px[0]), 1),
        "sharpness": round(sharpness(image, dets.boxes[0]), 1),
        "yaw_ratio": round(yaw_ratio(dets.landmarks[0]), 3),
    }
    if quality["inter_eye_px"] < limits.min_inter_eye_px:
        return (f"face too small: inter-eye distance {quality['inter_eye_px']} px < {limits.min_inter_eye_px} px; "
                "use a closer or larger photo"), quality
    if quality["sharpness"] < limits.min_sharpness:
        return (f"face too blurred: sharpness {quality['sharpness']} < {limits.min_sharpness} "
                "(variance of Laplacian); use a sharper photo"), quality
    if abs(quality["yaw_ratio"]) > limits.max_yaw_ratio:
        return (f"head turned too far: nose offset {quality['yaw_ratio']} inter-eye distances "
                f"(limit ±{limits.max_yaw_ratio}); use a frontal photo"), quality
    return None, quality


@dataclass
class Outcome:
    """What happened to one enrolment photo."""

    file: str
    identity: str
    enrolled: bool
    reason: str | None = None
    quality: dict[str, Any] = field(default_factory=dict)
    template_id: int | None = None
    skipped: bool = False  # already enrolled for this identity: neither added nor refused
    #: the other identity this face is also within the threshold of: {"identity", "score", "own_score"}
    lookalike: dict[str, Any] | None = None
    _pending: tuple | None = field(default=None, repr=False)  # (embedding, quality, sha) of a lookalike refusal

    @property
    def status(self) -> str:
        return "enrolled" if self.enrolled else "skipped" if self.skipped else "refused"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"file": self.file, "identity": self.identity, "status": self.status}
        if self.reason:
            out["reason"] = self.reason
        if self.template_id is not None:
            out["template_id"] = self.template_id
        if self.quality:
            out["quality"] = self.quality
        if self.lookalike:
            out["lookalike"] = self.lookalike
        return out


def pack_binding(pipeline: Any) -> PackBinding:
    """The gallery binding of a ``FacePipeline`` (pack name, embedding size, metric)."""
    return PackBinding(pipeline.manifest.name, int(pipeline.embedding_size), str(pipeline.metric))


class Enroller:
    """Enrols photos into ``gallery`` with ``pipeline`` (a ``facegate.pipeline.FacePipeline``)."""

    def __init__(self, gallery: Gallery, pipeline: Any, limits: QualityLimits | None = None,
                 force: bool = False, jitters: int = 0) -> None:
        """``jitters`` ≥ 2: each template is the mean descriptor of that many jittered copies of the face
        (``facegate.packs.jitter``; raises ``UsageError`` for a negative count, or — before any photo is
        processed — when the pack's recogniser has no jitter support, i.e. no ``jittered_chips``, as
        ``FacePipeline.embed_many`` checks)."""
        from facegate.packs.jitter import effective_count

        try:
            self.jitters = effective_count(jitters)
        except ValueError as exc:
            raise UsageError(f"--jitters {jitters!r}: {exc}") from None
        if self.jitters and not hasattr(getattr(pipeline, "recogniser", None), "jittered_chips"):
            raise UsageError(f"--jitters {jitters}: pack {pipeline.manifest.name!r} has no jitter support (it is "
                             "implemented for the dlib recogniser only); use --jitters 0")
        self.gallery = gallery
        self.pipeline = pipeline
        self.pack = pack_binding(pipeline)
        self.scorer = pipeline.scorer  # the pack's operating point: the duplicate check's threshold
        self.limits = limits or QualityLimits()
        self.force = force
        if gallery.pack is not None and gallery.pack != self.pack:
            gallery.pack = gallery.store.bind(self.pack)  # raises GalleryError naming both packs (or renames)
        gallery.use_scorer(self.scorer)  # a fused gallery is searched with the pack's own comparison

    def enrol(self, name: str, files: Sequence[str | Path], groups: Iterable[str] = (),
              progress: Callable[[int], None] | None = None) -> list[Outcome]:
        """Enrol each photo of ``files`` as a template of identity ``name`` (created if new).

        Every file gets an ``Outcome`` (refusals carry the reason); one bad file never stops the others.
        ``progress(n)`` is called after each file.
        """
        return list(self.enrol_iter(name, files, groups, progress))

    def enrol_iter(self, name: str, files: Sequence[str | Path], groups: Iterable[str] = (),
                   progress: Callable[[int], None] | None = None) -> Iterator[Outcome]:
        """``enrol`` yielding each ``Outcome`` as soon as its photo is committed (or refused), so that a caller
        interrupted (Ctrl-C) can report exactly what was stored. A photo the gallery would admit as another
        identity (gate 5) is held back and decided after the other photos, against the templates they added."""
        groups = list(groups)
        existing: set[str] = set()
        with contextlib.suppress(GalleryError):  # GalleryError: a new identity, nothing enrolled yet
            existing = {str(t["image_sha256"]) for t in self.gallery.identity(name).template_info}
        deferred: list[Outcome] = []
        for path in files:
            outcome = self._one(name, Path(path), groups, existing)
            if outcome._pending is not None and len(files) > 1:
                deferred.append(outcome)  # tried again once the name's other photos are enrolled
                continue
            yield self._done(name, outcome, existing, progress)
        for first in deferred:
            embedding, quality, sha = first._pending
            outcome = self._decide(name, Path(first.file), embedding, quality, sha, groups)
            yield self._done(name, outcome, existing, progress)

    def _done(self, name: str, outcome: Outcome, existing: set[str], progress: Callable[[int], None] | None
              ) -> Outcome:
        if outcome.enrolled and outcome.quality.get("image_sha256"):
            existing.add(outcome.quality["image_sha256"])
        log.info("enrol file=%r identity=%r status=%s reason=%s lookalike=%s", outcome.file, name, outcome.status,
                 outcome.reason, outcome.lookalike)
        if progress:
            progress(1)
        outcome._pending = None
        return outcome

    def _one(self, name: str, path: Path, groups: list[str], existing: set[str]) -> Outcome:
        try:  # read once, bounded (never a device or FIFO): the hash and the decoded image come from these bytes
            data = read_image_file(path)
        except FacegateError as exc:
            return Outcome(str(path), name, False, str(exc))
        sha = hashlib.sha256(data).hexdigest()
        if sha in existing:
            return Outcome(str(path), name, False, ALREADY_ENROLLED, skipped=True)
        try:
            image = decode_image(data, str(path))
            dets = (self.pipeline.analyse([image], jitters=self.jitters) if self.jitters
                    else self.pipeline.analyse([image]))[0]
        except FacegateError as exc:
            return Outcome(str(path), name, False, str(exc))
        reason, quality = assess(image, dets, self.limits)
        if self.jitters:
            quality["jitters"] = self.jitters
        if reason:
            return Outcome(str(path), name, False, reason, quality)
        quality["image_sha256"] = sha
        return self._decide(name, path, dets.data["embeddings"][:1], quality, sha, groups)

    def _own_best(self, name: str, embedding: np.ndarray) -> float | None:
        """The best comparison score of ``embedding`` (1×D) with the templates enrolled under ``name`` (None when
        there are none)."""
        try:
            ident = self.gallery.identity(name)
        except GalleryError:
            return None
        if ident.name != name or not ident.template_info:
            return None
        vectors = [v for _, _, v in self.gallery.store.embeddings(np.array([t["id"] for t in ident.template_info]))]
        if not vectors:
            return None
        return self.scorer.best(self.scorer.compare(embedding, np.concatenate(vectors))[0].tolist())

    def _decide(self, name: str, path: Path, embedding: np.ndarray, quality: dict[str, Any], sha: str,
                groups: list[str]) -> Outcome:
        """Gate 5 (module docstring), then store the template."""
        lookalike = None
        other = next((m for m in self.gallery.search(embedding, k=3)[0] if m.name != name), None)
        if other is not None and self.scorer.passes(other.score):
            own = self._own_best(name, embedding)
            lookalike = {"identity": other.name, "score": round(other.score, 5),
                         "own_score": None if own is None else round(own, 5)}
            closer_to_own = own is not None and self.scorer.better(own, other.score)
            if not closer_to_own and not self.force:
                why = (f"{name!r} has no enrolled photo to compare it with" if own is None else
                       f"it is closer to {other.name!r} than to {name!r}'s own photos (best score {own:.3f})")
                reason = (f"the gallery would admit this face as {other.name!r} (score {other.score:.3f}; threshold: "
                          f"{self.scorer.describe()}): {why}. If the photo shows {other.name!r}, enrol it under that "
                          f"name; if they are different people, enrol it with --force: the two then count as "
                          f"lookalikes and the daemon grants either only when one beats the other by "
                          f"decision.lookalike_margin (see `facegate gallery list --lookalikes`)")
                return Outcome(str(path), name, False, reason, quality, lookalike=lookalike,
                               _pending=(embedding, quality, sha))
        stored = {k: v for k, v in quality.items() if k != "image_sha256"}
        _, tids = self.gallery.enrol(name, embedding, self.pack, groups, [sha], [stored])
        if tids[0] < 0:  # another process enrolled this photo meanwhile (UNIQUE index)
            return Outcome(str(path), name, False, ALREADY_ENROLLED, quality, skipped=True)
        return Outcome(str(path), name, True, None, quality, int(tids[0]), lookalike=lookalike)


def scan_folder(folder: str | Path) -> list[tuple[str, list[Path]]]:
    """(identity name, image files) for each sub-folder of ``folder`` (one sub-folder per person), sorted.

    Raises ``UsageError`` when the folder is missing or holds no sub-folder with images.
    """
    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"{root}: no such directory; --from-dir needs a folder with one sub-folder per person")
    people = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(f for f in sub.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            people.append((sub.name, files))
    if not people:
        raise UsageError(f"{root}: no sub-folder with images ({', '.join(IMAGE_SUFFIXES)}); "
                         "lay it out as DIR/<person name>/<photo>")
    return people


def identify(gallery: Gallery, pipeline: Any, files: Sequence[str | Path], k: int = 3) -> list[dict[str, Any]]:
    """1:N identification of every face of every image.

    Returns per image ``{"image", "faces": [{"box", "detector_score", "matches": [top-k], "decision",
    "score"}]}``; ``decision`` is the best identity when its score passes the pack's threshold
    (``pipeline.scorer``), else ``"unknown"`` (also for an empty gallery). An unreadable image gives
    ``{"image", "error"}``.
    """
    pack = pack_binding(pipeline)
    scorer = pipeline.scorer
    if gallery.pack is not None and gallery.pack != pack:
        gallery.pack = gallery.store.bind(pack)  # raises the mismatch error (or renames a legacy gallery)
    gallery.use_scorer(scorer)
    results: list[dict[str, Any]] = []
    for path in files:
        try:
            image = load_image(path)
        except FacegateError as exc:
            results.append({"image": str(path), "error": str(exc)})
            continue
        dets = pipeline.analyse([image])[0]
        emb = dets.data.get("embeddings", np.zeros((0, pack.dim), np.float32))
        finite = np.isfinite(emb).all(axis=1) if len(emb) else np.zeros(0, bool)
        found = gallery.search(np.where(np.isfinite(emb), emb, 0.0), k=k) if len(dets) else []
        faces = []
        for i, (face, matches) in enumerate(zip(dets.to_json(), found, strict=True)):
            # Fail closed: a non-finite probe or score is "unknown" and printed as null (JSON has no NaN).
            matches = [m for m in matches if np.isfinite(m.score)] if finite[i] else []
            top = matches[0] if matches else None
            accepted = top is not None and scorer.passes(top.score)
            row = {
                "box": face["box"],
                "detector_score": face["score"] if np.isfinite(face["score"]) else None,
                "decision": top.name if accepted and top else "unknown",
                "score": round(top.score, 5) if top else None,
                "matches": [m.to_json() for m in matches],
            }
            if not finite[i]:
                row["error"] = "the face's embedding is not finite (NaN or infinity); treated as unknown"
            faces.append(row)
        results.append({"image": str(path), "metric": scorer.metric, "threshold": scorer.threshold, "faces": faces})
    return results
