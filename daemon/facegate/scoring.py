"""Comparison scores and thresholds: the one place that says which score passes, which is better, how to sort.

Every stage that looks at a comparison score — the decision engine's votes, the gallery's search result, the
enrolment duplicate check, ``facegate identify`` and the evaluation reports — asks a ``Scorer`` instead of testing
the metric itself. One vocabulary, the pack manifest's ``recogniser.metric``:

* ``euclidean`` (dlib-style packs): the score is the Euclidean distance ‖a − b‖₂ (≥ 0, lower = more alike); a
  score passes when ``score ≤ threshold``;
* ``cosine`` (ArcFace-style packs): the score is the cosine similarity a·b / (‖a‖ ‖b‖) (in [−1, 1], higher = more
  alike); a score passes when ``score ≥ threshold``;
* ``fused`` (``recogniser.kind: fused``, the built-in ``default`` pack): the template is the concatenation of
  several recognisers' embeddings; each part is compared in its own metric, its score mapped to a calibrated
  log-likelihood ratio (``llr = intercept + slope · score``, natural log; the manifest's ``llr`` maps) and the score
  is the **sum of the parts' LLRs** (``Fusion``; higher = more alike, 0 = as likely the same person as not); a
  score passes when ``score ≥ threshold``. Summing LLRs is the product rule of independent evidence (Kittler et
  al., "On combining classifiers", IEEE TPAMI 20(3), 1998); the parts are not independent, which is why the
  threshold comes from the fused score's own measured impostor distribution, never from the LLR's nominal value.

The test is inclusive because the operating point is measured that way (``evaluation/metrics.py`` accepts
``score ≥ T`` in its higher-is-better units, and a distance threshold is the negation of that). A non-finite score
(NaN, ±inf) never passes and is never better than a finite one: fail closed.

**Which threshold applies** (``Scorer.resolve``): the config's ``decision.threshold`` when it is set; else, when
``decision.false_accept_rate`` is set, the threshold derived from the pack's calibration (``facegate/calibration.py``),
the live gallery size and the k-of-n vote (the model is in ``required_fmr`` / ``attempt_rate``); else the pack's
measured ``operating_point.threshold`` (``models/<pack>.yaml``). Whatever the source, the ``Scorer`` carries the
rate that threshold gives (``ThresholdBasis``), for the log and ``facegate gallery list``. **Which liveness
threshold applies** (``liveness_threshold``): the config's ``liveness.threshold`` (or ``facegate liveness
--threshold``) when set, else the pack's ``liveness.threshold`` (0.5 when the manifest leaves it out).

This module is in the bottom layer: it imports numpy, ``facegate.errors`` and ``facegate.calibration`` only, and
takes the manifest as any object with its attributes (``packs/manifest.py``'s ``PackManifest``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol, TypeVar

import numpy as np

from facegate.errors import ConfigError, FalseAcceptGoalError, UsageError

if TYPE_CHECKING:
    from facegate.calibration import Calibration

Metric = Literal["euclidean", "cosine", "fused"]
#: The metric names of pack manifests (``recogniser.metric``), the only ones facegate knows.
METRICS: tuple[Metric, ...] = ("euclidean", "cosine", "fused")
#: The metrics of one embedding compared with another (``compare``); ``fused`` needs the pack's ``Fusion``.
PLAIN_METRICS: tuple[Metric, ...] = ("euclidean", "cosine")
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


def _check_metric(metric: str, plain: bool = True) -> None:
    if metric not in (PLAIN_METRICS if plain else METRICS):
        if metric == "fused":
            raise ValueError("fused scores need the pack's LLR maps: compare with Scorer.compare (a Fusion)")
        raise ValueError(f"unknown metric {metric!r}; expected 'euclidean', 'cosine' or 'fused'")


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
    ROC/DET code counts them: ``−distance`` for euclidean, unchanged for cosine and fused. A scalar gives a float,
    anything else a float64 array. Negation is exact, so ``d ≤ t`` ⇔ ``−d ≥ −t`` holds bit for bit."""
    _check_metric(metric, plain=False)
    sign = -1.0 if metric == "euclidean" else 1.0
    if np.ndim(values) == 0:
        return sign * float(values)
    return sign * np.asarray(values, dtype=np.float64)


def from_higher_better(values: Any, metric: str) -> Any:
    """Inverse of ``to_higher_better``: "higher = more alike" units → the metric's own (a Euclidean distance)."""
    return to_higher_better(values, metric)  # the negation is its own inverse


class _LlrMap(Protocol):
    @property
    def intercept(self) -> float: ...

    @property
    def slope(self) -> float: ...


class _FusedPartSpec(Protocol):
    @property
    def embedding_size(self) -> int: ...

    @property
    def metric(self) -> str: ...

    @property
    def llr(self) -> _LlrMap: ...


@dataclass(frozen=True, slots=True)
class FusionPart:
    """One recogniser of a fused template: its ``dim`` columns, its ``metric`` (euclidean or cosine) and the map of
    its score to a log-likelihood ratio, ``llr = intercept + slope · score``."""

    dim: int
    metric: Metric
    intercept: float
    slope: float

    def llr(self, scores: np.ndarray) -> np.ndarray:
        """LLRs (natural log) of this part's comparison scores (any shape; same dtype)."""
        return self.intercept + self.slope * scores


@dataclass(frozen=True, slots=True)
class Fusion:
    """The fused comparison score: each part's columns compared in its metric, mapped to an LLR, summed.

    Templates are the parts' embeddings side by side (``parts`` in the manifest's order; D = Σ dim). Build it
    with ``Fusion.from_spec(manifest.recogniser)``. Raises ``UsageError`` for a part metric that is not
    euclidean/cosine, a non-positive size or a non-finite map.
    """

    parts: tuple[FusionPart, ...]

    def __post_init__(self) -> None:
        for p in self.parts:
            if p.metric not in PLAIN_METRICS or p.dim < 1 or not (math.isfinite(p.intercept)
                                                                   and math.isfinite(p.slope)):
                raise UsageError(f"fused recogniser part {p}: needs a euclidean/cosine metric, a positive size and "
                                 "a finite llr map")
        if len(self.parts) < 2:
            raise UsageError("a fused recogniser needs at least two parts")

    @classmethod
    def from_spec(cls, spec: Any) -> Fusion:
        """From a manifest's ``FusedRecogniserSpec`` (anything with ``parts`` holding ``embedding_size``,
        ``metric`` and ``llr.intercept``/``llr.slope``)."""
        parts: list[_FusedPartSpec] = list(spec.parts)
        return cls(tuple(FusionPart(int(p.embedding_size), p.metric, float(p.llr.intercept),  # type: ignore[arg-type]
                                    float(p.llr.slope)) for p in parts))

    @property
    def dim(self) -> int:
        return sum(p.dim for p in self.parts)

    def split(self, x: np.ndarray) -> list[np.ndarray]:
        """The parts' column blocks of N×D templates (views, no copy). Raises ``ValueError`` for another width."""
        x = np.atleast_2d(x)
        if x.shape[1] != self.dim:
            raise ValueError(f"fused templates are {self.dim}-d ({'+'.join(str(p.dim) for p in self.parts)}), "
                             f"got {x.shape[1]}-d")
        edges = np.cumsum([0, *(p.dim for p in self.parts)])
        return [x[:, a:b] for a, b in zip(edges[:-1], edges[1:], strict=True)]

    def part_scores(self, a: np.ndarray, b: np.ndarray, dtype: type = np.float32) -> list[np.ndarray]:
        """Each part's own comparison scores, N×M in its metric's units (module ``compare``)."""
        return [compare(x, y, p.metric, dtype)
                for p, x, y in zip(self.parts, self.split(a), self.split(b), strict=True)]

    def compare(self, a: np.ndarray, b: np.ndarray, dtype: type = np.float32) -> np.ndarray:
        """Fused scores N×M (``dtype``): Σ over parts of ``llr(part score)``."""
        scores = self.part_scores(a, b, dtype)
        total = self.parts[0].llr(scores[0])
        for p, sc in zip(self.parts[1:], scores[1:], strict=True):
            total = total + p.llr(sc)
        return np.asarray(total, dtype=dtype)

    def compare_pairs(self, a: np.ndarray, b: np.ndarray, dtype: type = np.float64) -> np.ndarray:
        """Fused scores of row i of ``a`` with row i of ``b`` (both N×D): N array of ``dtype``."""
        total = np.zeros(len(np.atleast_2d(a)), dtype)
        for p, x, y in zip(self.parts, self.split(a), self.split(b), strict=True):
            total += p.llr(compare_pairs(x, y, p.metric, dtype))
        return total


# ------------------------------------------------------------------------------------ the security level model


def frame_fpir(fmr: float, templates: int) -> float:
    """Chance that a stranger's face in one frame passes the threshold against at least one of ``templates``
    gallery templates: ``1 − (1 − FMR)^T`` (NIST FRVT 1:N's FPIR from the per-comparison FMR assuming independent
    comparisons; the templates of one identity are correlated, which makes this an over-estimate, i.e.
    conservative). ``fmr`` is the per-comparison false match rate at the threshold."""
    if fmr >= 1.0:
        return 1.0
    return float(-math.expm1(max(int(templates), 0) * math.log1p(-max(fmr, 0.0))))


def attempt_rate(fmr: float, templates: int, k: int, n: int) -> float:
    """Upper bound of the chance per attempt that a stranger is granted as someone (one attempt = one decision
    window of the track's last ``n`` frames, of which ``k`` must match the same identity):
    ``min(1, n/k · frame_fpir(fmr, templates))``.

    Why n/k and not a product over frames: frames of one track are strongly correlated (a lookalike stranger
    passes on every frame), so the independent-frames figure (≈ C(n,k)·p^k) would be far too optimistic. Markov's
    inequality needs no independence: with X the number of the window's frames that match, E[X] = n·p, so
    P(X ≥ k) ≤ n·p/k. Perfect correlation gives p; this bound is at most n/k times that. A stranger who stays in
    front of the camera for several windows makes several attempts."""
    return min(1.0, n / max(k, 1) * frame_fpir(fmr, templates))


def required_fmr(goal: float, templates: int, k: int, n: int) -> float:
    """The per-comparison FMR that makes ``attempt_rate`` = ``goal`` (the inverse of ``attempt_rate``):
    ``1 − (1 − goal·k/n)^(1/T)`` with T = max(templates, 1) (an empty gallery is calibrated as if it held one
    template, so the first enrolment is already covered)."""
    frame = min(1.0, goal * k / max(n, 1))
    if frame >= 1.0:
        return 1.0
    return float(-math.expm1(math.log1p(-frame) / max(int(templates), 1)))


def _max_templates(goal: float, floor: float, k: int, n: int) -> int:
    """The largest gallery (templates) for which ``required_fmr`` stays ≥ ``floor``."""
    frame = min(1.0, goal * k / max(n, 1))
    if frame >= 1.0 or floor >= 1.0:
        return 1 << 62
    return max(0, int(math.floor(math.log1p(-frame) / math.log1p(-floor))))


@dataclass(frozen=True, slots=True)
class ThresholdBasis:
    """Where the threshold in force comes from and the rate it gives (``Scorer.basis``).

    ``source``: ``decision.threshold``, ``decision.false_accept_rate`` or ``operating_point``; ``goal``: the
    configured false-accept rate (None unless that is the source); ``templates``: the gallery size the rate is for
    (None when unknown); ``k``/``n``: the vote; ``fmr``: the calibrated per-comparison FMR at the threshold
    (conservative; ``fmr_at_floor``: the true rate is ≤ it, the calibration measured no further), from data set
    ``fmr_dataset``; ``frame_fpir`` and ``attempt_rate``: ``frame_fpir``/``attempt_rate`` at that FMR;
    ``fnmr``: the measured FNMR at the threshold per calibration data set; ``calibration``: the file's description.
    Every rate is None when the pack has no calibration.
    """

    source: str
    goal: float | None = None
    templates: int | None = None
    k: int = 1
    n: int = 1
    fmr: float | None = None
    fmr_at_floor: bool = False
    fmr_dataset: str | None = None
    frame_fpir: float | None = None
    attempt_rate: float | None = None
    fnmr: dict[str, float] | None = None
    calibration: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """For ``facegate gallery list`` (JSON)."""
        out: dict[str, Any] = {
            "threshold_source": self.source, "false_accept_rate_goal": self.goal, "templates": self.templates,
            "vote": {"k": self.k, "n": self.n},
            "per_comparison_fmr": _sig(self.fmr), "per_comparison_fmr_is_upper_bound": self.fmr_at_floor,
            "fmr_from": self.fmr_dataset, "per_frame_fpir": _sig(self.frame_fpir),
            "per_attempt_false_accept_rate_bound": _sig(self.attempt_rate), "measured_fnmr": self.fnmr,
            "model": "per attempt <= n/k * (1 - (1 - FMR)^templates) (facegate/scoring.py attempt_rate)",
        }
        if self.calibration is None:
            out["note"] = "the pack has no calibration: the rate of this threshold is unknown"
        else:
            out["calibration"] = self.calibration
        return out

    def log_fields(self) -> str:
        """``key=value`` fields for the daemon's ``event=threshold`` line."""
        rate = "unknown" if self.attempt_rate is None else f"{self.attempt_rate:.3g}"
        fmr = "unknown" if self.fmr is None else f"{'<=' if self.fmr_at_floor else ''}{self.fmr:.3g}"
        return (f"source={self.source} goal={self.goal if self.goal is not None else 'none'} "
                f"templates={self.templates} vote={self.k}of{self.n} per_comparison_fmr={fmr} "
                f"per_attempt_rate_bound={rate} fmr_from={self.fmr_dataset}")


def _sig(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.4g}")


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
    """A pack's metric, the comparison-score threshold in force and, for a fused pack, its ``Fusion`` (see the
    module docstring). ``basis`` says where the threshold comes from and what rate it gives (not part of equality).

    Build it with ``Scorer.resolve``. Raises ``UsageError`` for an unknown metric, a threshold that is not a finite
    number, or a fused metric without its ``Fusion`` (or a ``Fusion`` on another metric).
    """

    metric: Metric
    threshold: float
    fusion: Fusion | None = None
    basis: ThresholdBasis | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise UsageError(f"metric {self.metric!r}: must be 'euclidean', 'cosine' or 'fused' (the pack's "
                             "recogniser.metric)")
        if (self.metric == "fused") != (self.fusion is not None):
            raise UsageError("a fused metric needs the pack's Fusion (and only a fused metric has one)")
        try:
            threshold = float(self.threshold)
        except (TypeError, ValueError):
            threshold = math.nan
        if not math.isfinite(threshold):
            raise UsageError(f"comparison-score threshold {self.threshold!r}: must be a finite number")
        object.__setattr__(self, "threshold", threshold)

    @classmethod
    def resolve(
        cls,
        manifest: ManifestLike,
        override: float | None = None,
        *,
        false_accept_rate: float | None = None,
        calibration: Calibration | None = None,
        templates: int | None = None,
        vote: tuple[int, int] = (1, 1),
    ) -> Scorer:
        """The scorer in force (the one answer to "which threshold applies"):

        1. ``override`` (the config's ``decision.threshold``) when it is not None;
        2. else, when ``false_accept_rate`` (``decision.false_accept_rate``: the chance per attempt that a stranger
           is granted as someone) is set, the loosest threshold whose calibrated per-comparison FMR is at most
           ``required_fmr(goal, templates, k, n)`` (``vote`` = (k, n) of ``decision``; ``templates`` = the live
           gallery's template count);
        3. else the pack's ``operating_point.threshold``.

        ``calibration`` is the pack's (``packs.manifest.pack_calibration``), None when it has none; with it the
        ``basis`` carries the rate the threshold gives whatever its source. Raises ``ConfigError`` when both
        ``override`` and ``false_accept_rate`` are set or a goal is set for a pack without calibration, and
        ``FalseAcceptGoalError`` (a ``ConfigError``) when the goal cannot be met with this gallery, its message
        saying what to change.
        """
        metric = manifest.recogniser.metric
        fusion = Fusion.from_spec(manifest.recogniser) if metric == "fused" else None
        k, n = int(vote[0]), int(vote[1])
        if override is not None and false_accept_rate is not None:
            raise ConfigError("decision: set either threshold or false_accept_rate, not both (threshold fixes the "
                              "comparison score; false_accept_rate derives it from the pack's calibration)")
        if false_accept_rate is not None:
            if not 0.0 < float(false_accept_rate) < 1.0:
                raise ConfigError(f"decision.false_accept_rate {false_accept_rate!r}: must be between 0 and 1 "
                                  "(e.g. 1.0e-4)")
            if calibration is None:
                raise ConfigError(f"decision.false_accept_rate needs a calibrated pack, and pack {manifest.name!r} "
                                  "has no calibration; set decision.threshold instead, or use a calibrated pack "
                                  "(default, dlib, retinaface-mobilefacenet)")
            needed = required_fmr(false_accept_rate, templates or 0, k, n)
            threshold = calibration.threshold_for(needed)
            if threshold is None:
                raise FalseAcceptGoalError(_unmet(manifest.name, false_accept_rate, templates or 0, k, n, needed,
                                                  calibration))
            source = "decision.false_accept_rate"
        elif override is not None:
            threshold, source = override, "decision.threshold"
        else:
            threshold, source = manifest.operating_point.threshold, "operating_point"
        basis = _basis(float(threshold), source, false_accept_rate, templates, k, n, calibration)
        return cls(metric, threshold, fusion, basis)  # type: ignore[arg-type]

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
        """Comparison scores N×M (``dtype``) of N×D ``a`` against M×D ``b`` in this metric (module ``compare``;
        ``Fusion.compare`` for a fused pack)."""
        if self.fusion is not None:
            return self.fusion.compare(a, b, dtype)
        return compare(a, b, self.metric, dtype)

    def compare_pairs(self, a: np.ndarray, b: np.ndarray, dtype: type = np.float64) -> np.ndarray:
        """Row-wise comparison scores of two N×D arrays (module ``compare_pairs``; ``Fusion.compare_pairs``)."""
        if self.fusion is not None:
            return self.fusion.compare_pairs(a, b, dtype)
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
        if self.fusion is not None:
            return f"fused log-likelihood ratio >= {self.threshold:g}"
        return f"cosine similarity >= {self.threshold:g}"


def _basis(threshold: float, source: str, goal: float | None, templates: int | None, k: int, n: int,
           calibration: Calibration | None) -> ThresholdBasis:
    if calibration is None:
        return ThresholdBasis(source, goal, templates, k, n)
    est = calibration.fmr_at(threshold)
    frame = attempt = None
    if templates is not None:
        frame = frame_fpir(est.fmr, max(templates, 1))
        attempt = attempt_rate(est.fmr, max(templates, 1), k, n)
    return ThresholdBasis(source, goal, templates, k, n, est.fmr, est.at_floor, est.dataset, frame, attempt,
                          calibration.fnmr_at(threshold), calibration.describe())


def _unmet(pack: str, goal: float, templates: int, k: int, n: int, needed: float, calibration: Calibration) -> str:
    floor = calibration.floor
    most = _max_templates(goal, floor, k, n)
    loosest = attempt_rate(floor, max(templates, 1), k, n)
    largest = max(calibration.describe()["datasets"], key=lambda d: d["impostor_pairs"])
    return (f"decision.false_accept_rate {goal:g} cannot be met with this gallery: with {templates} templates and a "
            f"{k}-of-{n} vote it needs a per-comparison false match rate of {needed:.3g}, but pack {pack!r} is "
            f"calibrated only down to {floor:.3g} (a few impostors in the {largest['impostor_pairs']:,} comparisons "
            f"of {largest['name']}); use a smaller gallery (at most {most} templates at this goal), a looser goal "
            f"(decision.false_accept_rate >= {loosest:.2g} with this gallery), or a stronger pack")


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


#: The margins of a pack whose manifest names none (a distance or cosine pack: same units as its threshold).
DEFAULT_MARGIN = 0.05
DEFAULT_LOOKALIKE_MARGIN = 0.10


class Margins(NamedTuple):
    """Score gaps a frame's vote needs, in the pack's score units (a distance, a cosine similarity or, for a fused
    pack, a log-likelihood ratio): ``margin`` over the best other identity, ``lookalike`` over each of its
    lookalikes (``runtime/decision.py``)."""

    margin: float
    lookalike: float


def margins(manifest: ManifestLike | None, margin: float | None = None, lookalike: float | None = None) -> Margins:
    """The margins in force: the config's ``decision.margin`` / ``decision.lookalike_margin`` when set, else the
    pack's ``operating_point.margin`` / ``lookalike_margin`` (units differ per pack: 0.05 of a dlib distance is not
    0.05 of a fused LLR), else ``DEFAULT_MARGIN`` / ``DEFAULT_LOOKALIKE_MARGIN``."""
    op = getattr(manifest, "operating_point", None)
    pack_margin = getattr(op, "margin", None)
    pack_lookalike = getattr(op, "lookalike_margin", None)
    m = margin if margin is not None else pack_margin if pack_margin is not None else DEFAULT_MARGIN
    la = lookalike if lookalike is not None else pack_lookalike if pack_lookalike is not None else \
        DEFAULT_LOOKALIKE_MARGIN
    return Margins(float(m), float(max(la, m)))
