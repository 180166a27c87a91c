"""Score fusion of two recognisers: fitting the fused score, and cross-fitted evaluation so that no comparison is
scored by a fusion fitted on it.

A fused score is linear in the parts' native scores, ``c + Σ w_p · s_p`` (``FusionModel``). Rules (``fit``):

* ``platt``: each part's own logistic regression of genuine against impostor (Platt scaling, Platt 1999), the
  training prior removed by weighting both classes equally, so each part's map is its own LLR; the fused score is
  their sum (the naive-Bayes product rule);
* ``joint``: one logistic regression on both parts' scores together (linear logistic fusion, as in Brümmer's FoCal:
  Brümmer et al., "Fusion of heterogeneous speaker recognition systems in the STBU submission for the NIST SRE
  2006", IEEE TASLP 15(7), 2007), which accounts for the parts' correlation at the bulk of the pairs;
* ``zscore``: the baseline of the issue: each part's score z-normalised by the mean and standard deviation of the
  training comparisons, then added (not an LLR);
* ``tail`` (what the built-in pack ships, ``fit_tail``): the direction ``r · h₀ + h₁`` (h = the part's score in
  "higher = more alike" units) whose TAR at a target FMR (1e-5) is highest over the **all-pairs** comparisons of
  the training folds (a grid search over r, ``RatioGrid``), then that one score Platt-scaled on the training folds'
  View 2 pairs, so the fused score is a calibrated LLR; each part's ``llr`` map is its share of it
  (``slope_p = β · w_p``, half the intercept each). The other rules fit the bulk of the pairs, where the two models'
  errors are nearly independent; at FMR 1e-5 the few impostors that pass are hard for both models (their errors
  are correlated), and fits to the bulk give the weaker model far too much weight (README, Accuracy).

Logistic regressions are fitted by iteratively reweighted least squares (Newton's method on the class-balanced mean
log loss, a 1e-6 ridge for stability), in numpy.

Cross-fitting (``fold_tables``, ``tail_tables``): pairs are assigned to folds (LFW View 2's ten person-disjoint
folds; an identity outside View 2 gets fold ``crc32(name) mod 10``). A comparison between identities of folds a
and b is scored with the fusion fitted on the training data of every other fold (neither a nor b), so neither
person's comparisons were in the fit.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from facegate import scoring

#: The fusion rules ``fit`` knows (``tail`` is fitted by ``fit_tail``, on all-pairs data).
RULES = ("platt", "joint", "zscore")
#: Weight ratios r of part 0 against part 1 searched by the ``tail`` rule.
RATIOS = tuple(float(r) for r in np.round(np.linspace(0.0, 1.5, 31), 3))
#: The FMR at which the ``tail`` rule maximises TAR.
TAIL_FMR = 1e-5


@dataclass(frozen=True)
class FusionModel:
    """A linear fused score ``intercept + Σ slopes[p] · s_p`` of the parts' native scores (distance or cosine).
    For ``platt``, ``parts`` holds each part's own (intercept, slope), whose sum is the model."""

    rule: str
    intercept: float
    slopes: tuple[float, ...]
    parts: tuple[tuple[float, float], ...] = ()

    def score(self, part_scores: Sequence[np.ndarray]) -> np.ndarray:
        """Fused scores (float64, higher = more alike) of the parts' native scores (arrays of one shape)."""
        total = np.full(np.shape(part_scores[0]), self.intercept, np.float64)
        for w, s in zip(self.slopes, part_scores, strict=True):
            total += w * np.asarray(s, np.float64)
        return total


def fit_logistic(features: np.ndarray, labels: np.ndarray, ridge: float = 1e-6, iterations: int = 100) -> np.ndarray:
    """Class-balanced logistic regression: N×F ``features``, N bool ``labels`` (True = genuine) → F+1 weights
    (intercept first). Both classes weigh the same in total, so the fitted logit is a log-likelihood ratio (the
    prior log-odds of the training set removed). Features are standardised inside and the weights mapped back.
    Raises ``ValueError`` without both classes."""
    x = np.asarray(features, np.float64).reshape(len(labels), -1)
    y = np.asarray(labels, bool)
    if y.all() or not y.any():
        raise ValueError("logistic fit needs genuine and impostor comparisons")
    mu, sd = x.mean(0), x.std(0)
    sd[sd == 0] = 1.0
    z = np.c_[np.ones(len(x)), (x - mu) / sd]
    weight = np.where(y, 0.5 / y.sum(), 0.5 / (~y).sum())
    beta = np.zeros(z.shape[1])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ beta, -700, 700)))
        grad = z.T @ (weight * (p - y)) + ridge * np.r_[0.0, beta[1:]]
        hess = (z * (weight * p * (1 - p))[:, None]).T @ z + ridge * np.diag(np.r_[0.0, np.ones(len(beta) - 1)])
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    slopes = beta[1:] / sd
    return np.r_[beta[0] - np.sum(slopes * mu), slopes]


def fit(rule: str, part_scores: Sequence[np.ndarray], same: np.ndarray) -> FusionModel:
    """Fit a ``rule`` (``RULES``) on training comparisons: each part's native scores (N each) and ``same`` (N
    bool). Raises ``ValueError`` for an unknown rule."""
    cols = [np.asarray(s, np.float64) for s in part_scores]
    if rule == "platt":
        maps = [tuple(float(v) for v in fit_logistic(s[:, None], same)) for s in cols]
        return FusionModel(rule, sum(a for a, _ in maps), tuple(b for _, b in maps), tuple(maps))  # type: ignore
    if rule == "joint":
        w = fit_logistic(np.stack(cols, 1), same)
        return FusionModel(rule, float(w[0]), tuple(float(v) for v in w[1:]))
    if rule == "zscore":
        # z = sign·(s − mean)/sd so that higher = more alike for distances too
        signs = [1.0 if np.mean(s[same]) > np.mean(s[~same]) else -1.0 for s in cols]
        slopes = [sg / max(float(np.std(s)), 1e-12) for sg, s in zip(signs, cols, strict=True)]
        intercept = -sum(w * float(np.mean(s)) for w, s in zip(slopes, cols, strict=True))
        return FusionModel(rule, intercept, tuple(slopes))
    raise ValueError(f"unknown fusion rule {rule!r}; known: {', '.join(RULES)}")


def identity_fold(name: str, view2_folds: dict[str, int], folds: int = 10) -> int:
    """The fold of an identity: its LFW View 2 fold, else ``crc32(name) mod folds`` (stable across runs)."""
    return view2_folds.get(name, zlib.crc32(name.encode()) % folds)


@dataclass(frozen=True)
class FoldTables:
    """Cross-fitted models for every pair of folds: ``intercept[a, b]`` and ``slopes[a, b, p]`` is the model fitted
    without the training pairs of folds a and b (symmetric)."""

    intercept: np.ndarray
    slopes: np.ndarray

    def score(self, part_scores: Sequence[np.ndarray], rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Fused scores of an R×C block: ``part_scores`` R×C native scores per part, ``rows``/``cols`` the folds of
        the block's row and column identities."""
        r, c = np.asarray(rows)[:, None], np.asarray(cols)[None, :]
        total = self.intercept[r, c].astype(np.float64)
        for p, s in enumerate(part_scores):
            total = total + self.slopes[r, c, p] * np.asarray(s, np.float64)
        return total


def fold_tables(rule: str, part_scores: Sequence[np.ndarray], same: np.ndarray, folds: np.ndarray,
                count: int = 10) -> FoldTables:
    """Fit ``rule`` once per pair of folds (a, b), on the training comparisons of every fold except a and b."""
    inter = np.zeros((count, count))
    slopes = np.zeros((count, count, len(part_scores)))
    folds = np.asarray(folds)
    for a in range(count):
        for b in range(a, count):
            keep = (folds != a) & (folds != b)
            model = fit(rule, [np.asarray(s)[keep] for s in part_scores], np.asarray(same)[keep])
            inter[a, b] = inter[b, a] = model.intercept
            slopes[a, b] = slopes[b, a] = model.slopes
    return FoldTables(inter, slopes)


def part_matrices(fusion: scoring.Fusion, a: np.ndarray, b: np.ndarray) -> list[np.ndarray]:
    """Each part's native comparison scores of fused templates ``a`` (N×D) against ``b`` (M×D), float64."""
    return fusion.part_scores(a, b, np.float64)


def crossfit_all_pairs(
    emb: np.ndarray, labels: np.ndarray, folds: np.ndarray, fusion: scoring.Fusion, tables: FoldTables,
    keep_fmr: float = 1e-3, chunk: int = 512, exclude: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Every unordered pair of the N fused templates ``emb`` scored by ``tables`` (cross-fitted): returns (all
    genuine scores, the ⌊keep_fmr · I⌋ + 1 highest impostor scores descending, the impostor count I). ``labels``
    N identity labels, ``folds`` N folds. ``exclude(rows, cols)`` (optional) gives a bool block of genuine pairs to
    leave out (e.g. two crops of one photo)."""
    _, lab = np.unique(labels, return_inverse=True)
    n = len(emb)
    counts = np.bincount(lab)
    impostors = n * (n - 1) // 2 - int(np.sum(counts * (counts - 1) // 2))
    keep = int(np.floor(keep_fmr * impostors + 1e-9)) + 1
    genuine, top = [], np.zeros(0)
    for start in range(0, n, chunk):
        rows = np.arange(start, min(start + chunk, n))
        parts = part_matrices(fusion, emb[rows], emb)
        sm = tables.score(parts, folds[rows], folds)
        upper = np.arange(n)[None, :] > rows[:, None]
        same = lab[rows][:, None] == lab[None, :]
        gen_mask = upper & same
        if exclude is not None:
            gen_mask &= ~exclude(rows, np.arange(n))
        genuine.append(sm[gen_mask])
        top = np.concatenate([top, sm[upper & ~same]])
        if top.size > keep:
            top = np.partition(top, top.size - keep)[top.size - keep :]
    return np.concatenate(genuine), np.sort(top)[::-1], impostors


# ------------------------------------------------------------------------------------------ the tail rule


@dataclass
class _Block:
    genuine: list[np.ndarray]  # per ratio
    top: list[np.ndarray]  # per ratio: the highest impostor scores, descending
    impostors: int


class RatioGrid:
    """All-pairs scores of two-part fused templates for each weight ratio r (score ``r · h₀ + h₁``), kept per block
    of folds (a ≤ b): every genuine score and the ``keep`` highest impostor scores, so that TAR at an FMR can be
    read for any set of folds without comparing again. ``emb`` N×D fused templates, ``labels`` N identities,
    ``folds`` N fold numbers (identities never span folds)."""

    def __init__(self, emb: np.ndarray, labels: np.ndarray, folds: np.ndarray, fusion: scoring.Fusion,
                 ratios: Sequence[float] = RATIOS, keep: int = 600) -> None:
        if len(fusion.parts) != 2:
            raise ValueError("the ratio grid weighs two parts")
        self.ratios = tuple(ratios)
        self.fusion = fusion
        folds = np.asarray(folds)
        _, lab = np.unique(np.asarray(labels), return_inverse=True)
        members = {f: np.flatnonzero(folds == f) for f in np.unique(folds)}
        self.blocks: dict[tuple[int, int], _Block] = {}
        for a in members:
            for b in members:
                if b < a:
                    continue
                ra, rb = members[a], members[b]
                h = [scoring.to_higher_better(s, p.metric)
                     for s, p in zip(fusion.part_scores(emb[ra], emb[rb], np.float64), fusion.parts, strict=True)]
                mask = np.ones(h[0].shape, bool) if a != b else np.triu(np.ones(h[0].shape, bool), 1)
                same = (lab[ra][:, None] == lab[rb][None, :]) & mask
                imp = mask & ~same
                genuine, tops = [], []
                for r in self.ratios:
                    sc = r * h[0] + h[1]
                    genuine.append(sc[same])
                    values = sc[imp]
                    k = min(keep, values.size)
                    tops.append(np.sort(np.partition(values, values.size - k)[values.size - k:])[::-1]
                                if k else values)
                self.blocks[(int(a), int(b))] = _Block(genuine, tops, int(imp.sum()))

    def tar_at(self, i: int, excluded: set[int], fmr: float) -> tuple[float, float]:
        """(TAR, threshold) of ratio ``self.ratios[i]`` at ``fmr`` over the blocks that touch no ``excluded`` fold."""
        blocks = [b for (x, y), b in self.blocks.items() if x not in excluded and y not in excluded]
        impostors = sum(b.impostors for b in blocks)
        top = np.sort(np.concatenate([b.top[i] for b in blocks]))[::-1]
        allowed = int(np.floor(fmr * impostors + 1e-9))
        if allowed >= top.size:
            raise ValueError(f"FMR {fmr:g} needs more than the {top.size} impostor scores kept per block")
        threshold = float(np.nextafter(top[allowed], np.inf))
        genuine = np.concatenate([b.genuine[i] for b in blocks])
        return float(np.mean(genuine >= threshold)), threshold

    def best_ratio(self, excluded: set[int], fmr: float = TAIL_FMR) -> float:
        """The ratio with the highest TAR at ``fmr`` on the blocks that touch no ``excluded`` fold (the smallest
        such ratio on ties)."""
        tars = [self.tar_at(i, excluded, fmr)[0] for i in range(len(self.ratios))]
        return self.ratios[int(np.argmax(tars))]


def fit_tail(grid: RatioGrid, pair_parts: Sequence[np.ndarray], same: np.ndarray, pair_folds: np.ndarray,
             excluded: set[int], fmr: float = TAIL_FMR) -> FusionModel:
    """The ``tail`` rule fitted without the ``excluded`` folds: the best ratio on the grid's all-pairs data, then
    Platt scaling of ``r · h₀ + h₁`` on the View 2 pairs (``pair_parts``: each part's native scores, ``same``,
    ``pair_folds``) of the other folds. Returns the model in native units, with each part's (intercept, slope)."""
    r = grid.best_ratio(excluded, fmr)
    keep = ~np.isin(np.asarray(pair_folds), list(excluded))
    signs = [-1.0 if p.metric == "euclidean" else 1.0 for p in grid.fusion.parts]
    weights = (r * signs[0], signs[1])  # native slopes of the direction r·h0 + h1
    direction = sum(w * np.asarray(s, np.float64)[keep] for w, s in zip(weights, pair_parts, strict=True))
    alpha, beta = fit_logistic(direction[:, None], np.asarray(same)[keep])
    slopes = tuple(float(beta * w) for w in weights)
    parts = tuple((float(alpha) / 2, s) for s in slopes)
    return FusionModel("tail", float(alpha), slopes, parts)


def tail_tables(grid: RatioGrid, pair_parts: Sequence[np.ndarray], same: np.ndarray, pair_folds: np.ndarray,
                count: int = 10, fmr: float = TAIL_FMR) -> FoldTables:
    """``fit_tail`` once per pair of folds (a, b), without folds a and b (as ``fold_tables``)."""
    inter = np.zeros((count, count))
    slopes = np.zeros((count, count, 2))
    for a in range(count):
        for b in range(a, count):
            model = fit_tail(grid, pair_parts, same, pair_folds, {a, b}, fmr)
            inter[a, b] = inter[b, a] = model.intercept
            slopes[a, b] = slopes[b, a] = model.slopes
    return FoldTables(inter, slopes)
