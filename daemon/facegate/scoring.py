"""Comparison scores and thresholds: the one place that says which score passes, which is better, how to sort.

Every stage that looks at a comparison score — the decision engine's votes, the gallery's search result, the
enrolment duplicate check, ``facegate identify`` and the evaluation reports — asks a ``Scorer`` instead of testing
the metric itself. One vocabulary, the pack manifest's ``recogniser.metric``:

* ``euclidean`` (dlib-style packs): the score is the Euclidean distance ‖a − b‖₂ (≥ 0, lower = more alike); a
  score passes when ``score ≤ threshold``;
* ``cosine`` (ArcFace-style packs): the score is the cosine similarity a·b / (‖a‖ ‖b‖) (in [−1, 1], higher = more
  alike); a score passes when ``score ≥ threshold``.

The test is inclusive because the operating point is measured that way (``evaluation/metrics.py`` accepts
``score ≥ T`` in its higher-is-better units, and a distance threshold is the negation of that). A non-finite score
(NaN, ±inf) never passes and is never better than a finite one: fail closed.

**Which threshold applies** (``Scorer.resolve``): the config's ``decision.threshold`` when it is set, else the
pack's measured ``operating_point.threshold`` (``models/<pack>.yaml``). **Which liveness threshold applies**
(``liveness_threshold``): the config's ``liveness.threshold`` (or ``facegate liveness --threshold``) when set, else
the pack's ``liveness.threshold`` (0.5 when the manifest leaves it out).

This module is in the bottom layer: it imports numpy and ``facegate.errors`` only, and takes the manifest as any
object with its attributes (``packs/manifest.py``'s ``PackManifest``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

import numpy as np

from facegate.errors import UsageError

Metric = Literal["euclidean", "cosine"]
#: The metric names of pack manifests (``RecogniserSpec.metric``), the only ones facegate knows.
METRICS: tuple[Metric, ...] = ("euclidean", "cosine")
#: Norms below this are treated as this when normalising for cosine (a zero vector then scores 0, not NaN).
MIN_NORM = 1e-12

T = TypeVar("T")


class _Recogniser(Protocol):
    @property
    def metric(self) -> str: ...


class _OperatingPoint(Protocol):
    @property
    def threshold(self) -> float: ...


class _Liveness(Protocol):
    @property
    def threshold(self) -> float: ...


class ManifestLike(Protocol):
    """What ``Scorer.resolve`` and ``liveness_threshold`` read of a ``packs.manifest.PackManifest``."""

    @property
    def name(self) -> str: ...

    @property
    def recogniser(self) -> _Recogniser: ...

    @property
    def operating_point(self) -> _OperatingPoint: ...

    @property
    def liveness(self) -> _Liveness | None: ...


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected 'euclidean' or 'cosine'")


def compare(a: np.ndarray, b: np.ndarray, metric: str, dtype: type = np.float32) -> np.ndarray:
    """Comparison scores of every row of ``a`` (N×D) against every row of ``b`` (M×D): N×M array of ``dtype``
    (a 1-D vector counts as one row).

    ``euclidean``: ‖a − b‖₂, computed as √max(‖a‖² + ‖b‖² − 2a·b, 0) so that it is one matrix product (the
    clipping absorbs rounding below zero); ``cosine``: a·b / (max(‖a‖, 1e-12) · max(‖b‖, 1e-12)). The arithmetic
    runs in ``dtype`` (float32 for the real-time path, float64 for the evaluation). Raises ``ValueError`` for
    another metric.
    """
    _check_metric(metric)
    a = np.atleast_2d(np.asarray(a, dtype=dtype))  # one 1-D vector is one row
    b = np.atleast_2d(np.asarray(b, dtype=dtype))
    if metric == "euclidean":
        sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
        return np.sqrt(np.maximum(sq, 0.0)).astype(dtype, copy=False)
    an = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), MIN_NORM)
    bn = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), MIN_NORM)
    return (an @ bn.T).astype(dtype, copy=False)


def compare_pairs(a: np.ndarray, b: np.ndarray, metric: str, dtype: type = np.float64) -> np.ndarray:
    """Comparison scores of row i of ``a`` with row i of ``b`` (both N×D): N array of ``dtype``.

    ``euclidean``: ‖aᵢ − bᵢ‖₂ (computed directly, exact for identical rows); ``cosine``: aᵢ·bᵢ / max(‖aᵢ‖‖bᵢ‖,
    1e-12). Raises ``ValueError`` for another metric.
    """
    _check_metric(metric)
    a = np.asarray(a, dtype=dtype)
    b = np.asarray(b, dtype=dtype)
    if metric == "euclidean":
        return np.linalg.norm(a - b, axis=1).astype(dtype, copy=False)
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    return (np.einsum("nd,nd->n", a, b) / np.maximum(na * nb, MIN_NORM)).astype(dtype, copy=False)


def to_higher_better(values: Any, metric: str) -> Any:
    """Scores (or thresholds) in the metric's own units → "higher = more alike" units, as the evaluation's
    ROC/DET code counts them: ``−distance`` for euclidean, unchanged for cosine. A scalar gives a float, anything
    else a float64 array. Negation is exact, so ``d ≤ t`` ⇔ ``−d ≥ −t`` holds bit for bit."""
    _check_metric(metric)
    sign = -1.0 if metric == "euclidean" else 1.0
    if np.ndim(values) == 0:
        return sign * float(values)
    return sign * np.asarray(values, dtype=np.float64)


def from_higher_better(values: Any, metric: str) -> Any:
    """Inverse of ``to_higher_better``: "higher = more alike" units → the metric's own (a Euclidean distance)."""
    return to_higher_better(values, metric)  # the negation is its own inverse


@dataclass(frozen=True, slots=True)
class Candidate:
    """One identity found for a probe face: its best template and comparison ``score`` in the pack's metric.

    The gallery's search returns lists of these, best first; the decision engine votes on them.
    ``identity_id`` is the gallery's identity id (any hashable value for other searches), ``groups`` its access
    groups, ``template_id`` the template that gave the score (None when the search has no templates).
    """

    identity_id: Any
    name: str
    groups: tuple[str, ...]
    score: float
    template_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The CLI's JSON for one match (``facegate identify``); the score is rounded to 5 decimals."""
        return {"identity": self.name, "identity_id": self.identity_id, "score": round(self.score, 5),
                "template_id": self.template_id, "groups": list(self.groups)}


@dataclass(frozen=True, slots=True)
class Scorer:
    """A pack's metric and the comparison-score threshold in force (see the module docstring).

    Build it with ``Scorer.resolve(manifest, override)``. Raises ``UsageError`` for a metric other than
    ``euclidean``/``cosine`` or a threshold that is not a finite number.
    """

    metric: Metric
    threshold: float

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise UsageError(f"metric {self.metric!r}: must be 'euclidean' or 'cosine' (the pack's recogniser.metric)")
        try:
            threshold = float(self.threshold)
        except (TypeError, ValueError):
            threshold = math.nan
        if not math.isfinite(threshold):
            raise UsageError(f"comparison-score threshold {self.threshold!r}: must be a finite number")
        object.__setattr__(self, "threshold", threshold)

    @classmethod
    def resolve(cls, manifest: ManifestLike, override: float | None = None) -> Scorer:
        """The scorer in force: the pack's ``recogniser.metric`` with ``override`` (the config's
        ``decision.threshold``) when it is not None, else the pack's ``operating_point.threshold``."""
        threshold = manifest.operating_point.threshold if override is None else override
        return cls(manifest.recogniser.metric, threshold)  # type: ignore[arg-type]

    # -- one score ------------------------------------------------------------------------------------------
    @property
    def lower_is_better(self) -> bool:
        """True for distances (euclidean), False for similarities (cosine)."""
        return self.metric == "euclidean"

    def passes(self, score: float) -> bool:
        """True when ``score`` is a match at the threshold: distance ≤ t, similarity ≥ t. NaN never passes."""
        score = float(score)
        return score <= self.threshold if self.lower_is_better else score >= self.threshold

    def passes_all(self, scores: Any) -> np.ndarray:
        """``passes`` element-wise: a bool array of the shape of ``scores`` (NaN → False)."""
        scores = np.asarray(scores, dtype=np.float64)
        return scores <= self.threshold if self.lower_is_better else scores >= self.threshold

    def better(self, a: float, b: float) -> bool:
        """True when score ``a`` is strictly more alike than ``b``; False when either is NaN."""
        return float(a) < float(b) if self.lower_is_better else float(a) > float(b)

    def gap(self, best: float, other: float) -> float:
        """How far ``best`` beats ``other`` in score units: ≥ 0 when ``best`` is at least as good (the margin of
        open-set identification), negative when ``other`` is better; NaN when either is NaN."""
        return float(other) - float(best) if self.lower_is_better else float(best) - float(other)

    # -- several scores -------------------------------------------------------------------------------------
    def sort_key(self, score: float) -> float:
        """Key that sorts ascending = best first (the distance, or the negated similarity); NaN sorts last."""
        score = float(score)
        if math.isnan(score):
            return math.inf
        return score if self.lower_is_better else -score

    def best_first(self, items: Iterable[T], score: Callable[[T], float] = lambda item: item.score) -> list[T]:
        """``items`` sorted best score first (stable: equal scores keep their order; NaN last); ``score`` gets
        an item's score (default: its ``.score``, e.g. a ``Candidate``)."""
        return sorted(items, key=lambda item: self.sort_key(score(item)))

    def best(self, scores: Iterable[float]) -> float | None:
        """The best finite score of ``scores``, None when there is none."""
        finite = [float(s) for s in scores if math.isfinite(float(s))]
        if not finite:
            return None
        return min(finite) if self.lower_is_better else max(finite)

    # -- embeddings and units -------------------------------------------------------------------------------
    def compare(self, a: np.ndarray, b: np.ndarray, dtype: type = np.float32) -> np.ndarray:
        """Comparison scores N×M (``dtype``) of N×D ``a`` against M×D ``b`` in this metric (module ``compare``)."""
        return compare(a, b, self.metric, dtype)

    def compare_pairs(self, a: np.ndarray, b: np.ndarray, dtype: type = np.float64) -> np.ndarray:
        """Row-wise comparison scores of two N×D arrays (module ``compare_pairs``)."""
        return compare_pairs(a, b, self.metric, dtype)

    def to_higher_better(self, values: Any) -> Any:
        """Scores or thresholds → "higher = more alike" units (module ``to_higher_better``)."""
        return to_higher_better(values, self.metric)

    def from_higher_better(self, values: Any) -> Any:
        """"Higher = more alike" units → this metric's own (module ``from_higher_better``)."""
        return from_higher_better(values, self.metric)

    def describe(self) -> str:
        """For logs and reports, e.g. ``euclidean distance <= 0.6``."""
        if self.lower_is_better:
            return f"euclidean distance <= {self.threshold:g}"
        return f"cosine similarity >= {self.threshold:g}"


def liveness_threshold(manifest: ManifestLike, override: float | None = None) -> float:
    """The fused live-probability threshold in force: ``override`` (the config's ``liveness.threshold``, or
    ``facegate liveness --threshold``) when it is not None, else the pack's ``liveness.threshold``. A face (the
    daemon: the mean of a track's last ``liveness.frames`` scores) is live when its score is ≥ this.

    Raises ``UsageError`` when the pack has no liveness block or the threshold is outside [0, 1].
    """
    if manifest.liveness is None:
        raise UsageError(f"pack {manifest.name!r} has no liveness block; choose a pack with liveness models")
    value = float(manifest.liveness.threshold if override is None else override)
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"liveness threshold {value}: must be between 0 and 1")
    return value
