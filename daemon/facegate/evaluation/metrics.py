"""Biometric performance metrics in plain numpy: verification (1:1) and open-set identification (1:N).

Conventions used everywhere in this module:

* A **comparison score** is "higher means more similar". Euclidean distances are converted by negation, cosine
  similarities are used as they are (``facegate.scoring.to_higher_better``; ``from_higher_better`` turns a
  threshold back into the pack's own units, where ``Scorer.passes`` accepts exactly what ``score >= T`` accepts
  here).
* A comparison is **accepted** (declared a match) when ``score >= threshold``.
* **FMR** (false match rate) = fraction of impostor (non-mated) comparisons accepted; **FNMR** (false non-match
  rate) = fraction of genuine (mated) comparisons rejected; **TAR** = 1 − FNMR. "FAR" is used as a synonym for FMR
  in "TAR@FAR", following the face-recognition literature (ISO/IEC 19795-1 distinguishes them only by
  transaction-level effects that do not exist in these offline experiments).
* Open-set identification follows NIST FRVT 1:N (NISTIR 8271, §3): **FPIR(T)** = fraction of non-mated searches
  whose best gallery score is ≥ T; **FNIR(T)** = fraction of mated searches whose mate is not returned at rank 1
  with score ≥ T (rank R = 1, the access-control case: only the top candidate can open a door).

All inputs are 1-D float arrays (any float dtype; computed in float64). Functions raise ``ValueError`` on empty
or non-finite inputs (programming errors, not user errors).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facegate import scoring


def _as_scores(values: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise ValueError(f"{name}: no scores")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: scores must be finite")
    return array


Rule = str | scoring.Scorer
"""How to compare: a metric name (``euclidean``/``cosine``) or a pack's ``scoring.Scorer`` (needed for ``fused``)."""


def pair_scores(a: np.ndarray, b: np.ndarray, metric: Rule) -> np.ndarray:
    """Row-wise comparison scores of two N×D embedding arrays → N float64 (higher = more similar).

    ``metric`` ``"euclidean"``: −‖a−b‖₂; ``"cosine"``: a·b / (‖a‖‖b‖) (``scoring.compare_pairs`` in float64,
    then ``scoring.to_higher_better``); a ``Scorer``: its own comparison (the sum of LLRs for a fused pack).
    Raises ``ValueError`` for another metric.
    """
    if isinstance(metric, scoring.Scorer):
        return metric.to_higher_better(metric.compare_pairs(a, b, np.float64))
    return scoring.to_higher_better(scoring.compare_pairs(a, b, metric, np.float64), metric)


def score_matrix(probes: np.ndarray, gallery: np.ndarray, metric: Rule) -> np.ndarray:
    """All-against-all scores: P×D probes vs G×D gallery → P×G float64 (higher = more similar).

    ``scoring.compare`` in float64 (Euclidean as one matrix product, ‖p‖² + ‖g‖² − 2p·g clipped at 0), then
    ``scoring.to_higher_better``; a ``Scorer`` compares its own way. Raises ``ValueError`` for another metric.
    """
    if isinstance(metric, scoring.Scorer):
        return metric.to_higher_better(metric.compare(probes, gallery, np.float64))
    return scoring.to_higher_better(scoring.compare(probes, gallery, metric, np.float64), metric)


@dataclass(frozen=True)
class Roc:
    """An ROC curve as arrays of equal length K (one point per distinct score, plus the all-reject point).

    ``thresholds`` descending (the first is +inf: nothing accepted); ``fmr`` and ``tar`` non-decreasing in [0, 1].
    Point k gives the rates for "accept when score ≥ thresholds[k]".
    """

    thresholds: np.ndarray
    fmr: np.ndarray
    tar: np.ndarray

    @property
    def fnmr(self) -> np.ndarray:
        return 1.0 - self.tar


def roc(genuine: np.ndarray, impostor: np.ndarray) -> Roc:
    """ROC of genuine and impostor comparison scores (higher = more similar), every distinct score a threshold.

    Ties are kept together: all comparisons with the same score are accepted or rejected at once.
    """
    gen = _as_scores(genuine, "genuine")
    imp = _as_scores(impostor, "impostor")
    scores = np.concatenate([gen, imp])
    is_gen = np.concatenate([np.ones(gen.size, bool), np.zeros(imp.size, bool)])
    order = np.argsort(-scores, kind="stable")
    scores, is_gen = scores[order], is_gen[order]
    tp = np.cumsum(is_gen)
    fp = np.cumsum(~is_gen)
    # The last element of every run of equal scores closes a threshold.
    last = np.r_[scores[1:] != scores[:-1], True]
    thresholds = np.r_[np.inf, scores[last]]
    tar = np.r_[0.0, tp[last] / gen.size]
    fmr = np.r_[0.0, fp[last] / imp.size]
    return Roc(thresholds, fmr, tar)


def auc(curve: Roc) -> float:
    """Area under the ROC curve (TAR against FMR), trapezoidal; ties give diagonal segments (= Mann–Whitney U)."""
    x, y = curve.fmr, curve.tar
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def rates_at(genuine: np.ndarray, impostor: np.ndarray, threshold: float) -> tuple[float, float]:
    """(FMR, FNMR) when accepting ``score >= threshold``."""
    gen = _as_scores(genuine, "genuine")
    imp = _as_scores(impostor, "impostor")
    return float(np.mean(imp >= threshold)), float(np.mean(gen < threshold))


@dataclass(frozen=True)
class OperatingPoint:
    """One threshold and the rates it gives: ``threshold`` (score units), ``fmr``, ``tar`` (= 1 − FNMR)."""

    threshold: float
    fmr: float
    tar: float

    @property
    def fnmr(self) -> float:
        return 1.0 - self.tar


def tar_at_far(genuine: np.ndarray, impostor: np.ndarray, far: float) -> OperatingPoint:
    """The highest TAR whose FMR does not exceed ``far``, with its threshold (the lowest such threshold).

    With I impostor scores the achievable FMRs are multiples of 1/I; when ``far`` < 1/I only the all-reject point
    (threshold +inf above the best impostor) qualifies and the returned threshold is just above the largest
    impostor score, i.e. ``np.nextafter(max(impostor), inf)``.
    """
    curve = roc(genuine, impostor)
    ok = np.flatnonzero(curve.fmr <= far + 1e-15)
    k = int(ok[-1])
    threshold = float(curve.thresholds[k])
    if not np.isfinite(threshold):
        threshold = float(np.nextafter(np.max(np.asarray(impostor, dtype=np.float64)), np.inf))
    return OperatingPoint(threshold, float(curve.fmr[k]), float(curve.tar[k]))


def eer(genuine: np.ndarray, impostor: np.ndarray) -> tuple[float, float]:
    """Equal error rate and the score threshold where FMR = FNMR, by linear interpolation between ROC points.

    Returns ``(eer, threshold)``. Along the ROC, FMR rises and FNMR falls; the crossing lies between the last
    point with FMR < FNMR and the next one, and both rates are interpolated linearly on that segment. The
    threshold is interpolated likewise between the two thresholds (+inf replaced by the top score).
    """
    curve = roc(genuine, impostor)
    diff = curve.fmr - curve.fnmr  # rises from −1 to +1
    k = int(np.flatnonzero(diff >= 0)[0])
    if diff[k] == 0 or k == 0:
        t = curve.thresholds[k] if np.isfinite(curve.thresholds[k]) else curve.thresholds[1]
        return float(curve.fmr[k]), float(t)
    d0, d1 = diff[k - 1], diff[k]
    w = -d0 / (d1 - d0)
    rate = (1 - w) * curve.fmr[k - 1] + w * curve.fmr[k]
    t0 = curve.thresholds[k - 1] if np.isfinite(curve.thresholds[k - 1]) else curve.thresholds[k]
    threshold = (1 - w) * t0 + w * curve.thresholds[k]
    return float(rate), float(threshold)


def best_accuracy_threshold(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """The threshold maximising verification accuracy on labelled comparisons, and that accuracy.

    ``scores``: N comparison scores; ``same``: N bools (True = mated pair). Candidates are the midpoints between
    consecutive distinct scores plus one below the lowest and one above the highest, so the threshold never sits
    on a score. Of equally good candidates the strictest (highest) run is used — fail closed — and within it the
    middle candidate (runs of ties are common on small folds; the middle is the least sensitive to the test
    fold). Returns ``(threshold, accuracy)``.
    """
    s = _as_scores(scores, "scores")
    y = np.asarray(same, dtype=bool).reshape(-1)
    if y.size != s.size:
        raise ValueError(f"scores ({s.size}) and labels ({y.size}) differ in length")
    uniq = np.unique(s)
    span = max(float(uniq[-1] - uniq[0]), 1.0)
    cands = np.r_[uniq[0] - 1e-3 * span, (uniq[1:] + uniq[:-1]) / 2.0, uniq[-1] + 1e-3 * span]
    # accepted(t) = s >= t; count correct decisions for every candidate with sorted cumulative counts.
    order = np.sort(s[y])
    neg = np.sort(s[~y])
    tp = order.size - np.searchsorted(order, cands, side="left")
    tn = np.searchsorted(neg, cands, side="left")
    acc = (tp + tn) / s.size
    best = np.flatnonzero(acc == acc.max())
    # Middle of the last (strictest) contiguous run of best candidates: fail closed on ties.
    run_start = best[-1]
    while run_start > 0 and acc[run_start - 1] == acc[best[-1]]:
        run_start -= 1
    k = (run_start + best[-1]) // 2
    return float(cands[k]), float(acc[k])


@dataclass(frozen=True)
class FoldResult:
    """Result of the k-fold protocol: per-fold ``accuracies`` and ``thresholds`` (K float64 arrays)."""

    accuracies: np.ndarray
    thresholds: np.ndarray

    @property
    def mean(self) -> float:
        return float(self.accuracies.mean())

    @property
    def std(self) -> float:
        """Sample standard deviation across folds (ddof = 1), as in the LFW README's σ."""
        return float(self.accuracies.std(ddof=1)) if self.accuracies.size > 1 else 0.0

    @property
    def sem(self) -> float:
        """Standard error of the mean, σ/√K: the ± the LFW README (Huang et al. 2007, §View 2) asks for."""
        return self.std / float(np.sqrt(self.accuracies.size))


def kfold_accuracy(scores: np.ndarray, same: np.ndarray, folds: np.ndarray) -> FoldResult:
    """LFW View 2 protocol: for each fold k the threshold of best accuracy on the other folds is tested on fold k.

    ``scores`` N float; ``same`` N bool (mated pair); ``folds`` N int fold ids (View 2: 0…9, 600 pairs each).
    Source: Huang et al., "Labeled Faces in the Wild", UMass TR 07-49 (2007), View 2 "unrestricted" protocol.
    Raises ``ValueError`` with fewer than two folds.
    """
    s = _as_scores(scores, "scores")
    y = np.asarray(same, dtype=bool).reshape(-1)
    f = np.asarray(folds).reshape(-1)
    ids = np.unique(f)
    if ids.size < 2:
        raise ValueError("the k-fold protocol needs at least two folds")
    accs, ths = [], []
    for k in ids:
        test = f == k
        t, _ = best_accuracy_threshold(s[~test], y[~test])
        accepted = s[test] >= t
        accs.append(float(np.mean(accepted == y[test])))
        ths.append(t)
    return FoldResult(np.asarray(accs), np.asarray(ths))


# ---------------------------------------------------------------------------------------------- open-set 1:N


@dataclass(frozen=True)
class Searches:
    """Outcomes of 1:N searches, as needed for rank-1, FNIR and FPIR.

    ``mate_scores``: M scores of each mated probe against its mate; ``mate_is_top``: M bools, True when the mate
    is the rank-1 candidate (ties with another identity count as not rank 1 — fail closed); ``top_other``: M best
    non-mate scores of the mated probes; ``nonmated_top``: U best scores of the non-mated probes.
    """

    mate_scores: np.ndarray
    mate_is_top: np.ndarray
    top_other: np.ndarray
    nonmated_top: np.ndarray


def search(
    mated: np.ndarray, mated_ids: np.ndarray, nonmated: np.ndarray, gallery: np.ndarray, metric: Rule,
    chunk: int = 2048,
) -> Searches:
    """Exhaustive 1:N search of probes against a gallery with one template per identity.

    ``mated`` M×D with ``mated_ids`` M ints (row index of the mate in ``gallery``), ``nonmated`` U×D,
    ``gallery`` G×D (G ≥ 2). Brute force in chunks of ``chunk`` probes (exact; the LFW gallery is ~1,700).
    """
    gallery = np.asarray(gallery)
    if len(gallery) < 2:
        raise ValueError("open-set search needs a gallery of at least two identities")
    ids = np.asarray(mated_ids, dtype=np.int64).reshape(-1)
    mate, top, other = [], [], []
    for start in range(0, len(mated), chunk):
        sm = score_matrix(mated[start : start + chunk], gallery, metric)
        rows = np.arange(len(sm))
        own = sm[rows, ids[start : start + chunk]]
        sm[rows, ids[start : start + chunk]] = -np.inf
        best_other = sm.max(axis=1)
        mate.append(own)
        other.append(best_other)
        top.append(own > best_other)
    nm = [score_matrix(nonmated[s : s + chunk], gallery, metric).max(axis=1) for s in range(0, len(nonmated), chunk)]
    cat = (lambda xs: np.concatenate(xs) if xs else np.zeros(0))  # noqa: E731
    return Searches(cat(mate), cat(top).astype(bool), cat(other), cat(nm))


def rank1(result: Searches) -> float:
    """Closed-set rank-1 identification rate of the mated probes (no threshold)."""
    return float(np.mean(result.mate_is_top))


def fnir_fpir_at(result: Searches, threshold: float) -> tuple[float, float]:
    """(FNIR, FPIR) at a score threshold; FNIR counts a mated search as missed unless its mate is rank 1 and ≥ T."""
    hit = result.mate_is_top & (result.mate_scores >= threshold)
    return float(1.0 - np.mean(hit)), float(np.mean(result.nonmated_top >= threshold))


def misidentification_rate(result: Searches, threshold: float) -> float:
    """Fraction of mated searches whose rank-1 candidate is a *wrong* identity scoring ≥ T (a wrong door opens)."""
    wrong = (~result.mate_is_top) & (result.top_other >= threshold)
    return float(np.mean(wrong))


@dataclass(frozen=True)
class OpenSetPoint:
    """Threshold (score units) chosen for a target FPIR, and the FNIR and FPIR it gives."""

    threshold: float
    fpir: float
    fnir: float


def fnir_at_fpir(result: Searches, target_fpir: float) -> OpenSetPoint:
    """The lowest threshold whose FPIR ≤ ``target_fpir`` (U non-mated searches ⇒ FPIR steps of 1/U) and its FNIR.

    Thresholds are taken among the distinct non-mated top scores, just above each (``np.nextafter``), so that
    the score equal to the threshold is rejected for exactly the searches counted.
    """
    nm = _as_scores(result.nonmated_top, "nonmated_top")
    desc = np.sort(nm)[::-1]
    allowed = int(np.floor(target_fpir * nm.size + 1e-9))  # how many non-mated searches may pass
    if allowed >= nm.size:
        threshold = float(np.nextafter(desc[-1], -np.inf))
    else:
        # accept ≥ T with T just above desc[allowed]; ties at desc[allowed] reduce the count further (fail closed).
        threshold = float(np.nextafter(desc[allowed], np.inf))
    fnir, fpir = fnir_fpir_at(result, threshold)
    return OpenSetPoint(threshold, fpir, fnir)


def det_points(result: Searches) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Open-set DET curve: (thresholds, FPIR, FNIR) at every distinct non-mated/mated score, thresholds descending."""
    cands = np.unique(np.r_[result.nonmated_top, result.mate_scores])[::-1]
    nm = np.sort(result.nonmated_top)
    fpir = (nm.size - np.searchsorted(nm, cands, side="left")) / nm.size
    hits = np.sort(result.mate_scores[result.mate_is_top])
    fnir = 1.0 - (hits.size - np.searchsorted(hits, cands, side="left")) / max(result.mate_scores.size, 1)
    return cands, fpir, fnir


# ------------------------------------------------------------------------------------- all-pairs verification


@dataclass(frozen=True)
class AllPairs:
    """Every within-identity (genuine) and cross-identity (impostor) comparison of a labelled set of embeddings.

    ``genuine``: all genuine scores (float64); ``impostor_count``: how many impostor comparisons there were;
    ``impostor_top``: the highest impostor scores, descending (enough for the FMR targets asked for);
    ``impostor_at``: {score threshold: impostor comparisons scoring ≥ it} for the thresholds asked for.
    """

    genuine: np.ndarray
    impostor_count: int
    impostor_top: np.ndarray
    impostor_at: dict[float, int]

    def at_fmr(self, far: float) -> OperatingPoint:
        """Lowest threshold whose FMR ≤ ``far`` (just above the (⌊far·I⌋+1)-th best impostor) and its TAR."""
        allowed = int(np.floor(far * self.impostor_count + 1e-9))
        if allowed >= self.impostor_top.size:
            raise ValueError(f"FMR {far:g} needs more than the {self.impostor_top.size} impostor scores kept")
        threshold = float(np.nextafter(self.impostor_top[allowed], np.inf))
        passed = int(np.sum(self.impostor_top >= threshold))
        return OperatingPoint(threshold, passed / self.impostor_count, float(np.mean(self.genuine >= threshold)))

    def rates_at(self, threshold: float) -> tuple[float, float]:
        """(FMR, FNMR) at a threshold given to ``all_pairs`` in ``thresholds``."""
        return self.impostor_at[threshold] / self.impostor_count, float(np.mean(self.genuine < threshold))


def all_pairs(
    embeddings: np.ndarray, labels: np.ndarray, metric: Rule, fars: tuple[float, ...] = (1e-3,),
    thresholds: tuple[float, ...] = (), chunk: int = 512,
) -> AllPairs:
    """Compare every unordered pair of the N×D ``embeddings`` (N labels, any hashable dtype) exhaustively.

    Keeps all genuine scores, exact impostor counts at ``thresholds`` (score units) and the ⌊max(fars)·I⌋ + 1
    best impostor scores — O(N²) time in chunks of ``chunk`` rows, O(N·chunk) memory. Needs two identities.
    """
    emb = np.asarray(embeddings, dtype=np.float64)
    _, lab = np.unique(np.asarray(labels), return_inverse=True)
    n = len(emb)
    if lab.max(initial=0) < 1:
        raise ValueError("all-pairs verification needs at least two identities")
    counts = np.bincount(lab)
    impostor_count = n * (n - 1) // 2 - int(np.sum(counts * (counts - 1) // 2))
    keep = int(np.floor(max(fars, default=0.0) * impostor_count + 1e-9)) + 1
    genuine, top = [], np.zeros(0)
    at = dict.fromkeys(thresholds, 0)
    for start in range(0, n, chunk):
        rows = np.arange(start, min(start + chunk, n))
        sm = score_matrix(emb[rows], emb, metric)
        upper = np.arange(n)[None, :] > rows[:, None]  # each unordered pair once
        same = lab[rows][:, None] == lab[None, :]
        genuine.append(sm[upper & same])
        imp = sm[upper & ~same]
        for t in at:
            at[t] += int(np.sum(imp >= t))
        top = np.concatenate([top, imp])
        if top.size > keep:
            top = np.partition(top, top.size - keep)[top.size - keep :]
    return AllPairs(np.concatenate(genuine), impostor_count, np.sort(top)[::-1], at)
