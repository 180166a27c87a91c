"""Lookalike pairs: enrolled identities that the threshold alone does not keep apart.

Two identities are **lookalikes** when some template of one and some template of the other compare closer than the
threshold in force (``Scorer.passes``): a face of either could then be admitted as the other. ``facegate gallery
list --lookalikes`` lists them; the daemon (``runtime/decision.py``) lets a frame vote for one of them only when its
score beats the other's by ``decision.lookalike_margin``.

Computed exactly from every template (no approximate search: a missed pair would be a silent hole): the templates
are compared all against all in blocks of ``BLOCK`` rows (one BLAS matrix product each, each pair once), so the
first computation costs N²/2 comparisons (README "Lookalikes" has the time per gallery size).
``Lookalikes.update`` is incremental: after an enrolment only the new templates are compared with all (N_new × N),
and pairs of removed identities are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from facegate.scoring import MIN_NORM, Scorer

#: Rows compared per matrix product (bounds the temporary BLOCK × N float32 matrix: 100 MiB at 100k templates).
BLOCK = 256
#: Screening slack in score units: float32 rounding is far below it, so no pair at the threshold is lost before the
#: exact float64 check.
SLACK = 1e-3


@dataclass(frozen=True)
class LookalikePair:
    """Identities ``a`` < ``b`` (ids) whose closest templates ``a_template``/``b_template`` score ``score``
    (the pack's metric), which passes the threshold."""

    a: int
    b: int
    score: float
    a_template: int
    b_template: int


def find_pairs(scorer: Scorer, template_ids: np.ndarray, identity_ids: np.ndarray, vectors: np.ndarray,
               rows: np.ndarray | None = None) -> dict[tuple[int, int], LookalikePair]:
    """Every pair of different identities with a template pair passing ``scorer``, with its best such score.

    ``template_ids``, ``identity_ids``: int64 N; ``vectors`` N×D float32. ``rows`` (indices into them) limits the
    comparisons to those rows against all N (the incremental case); None compares all against all (each pair once).

    The screening runs in float32 in place on ``BLOCK`` × N blocks (cosine: dot products of L2-normalised rows;
    euclidean: squared distances ‖a‖² + ‖b‖² − 2a·b against t², as ``scoring.compare`` computes them), with a
    margin of ``SLACK`` so rounding cannot drop a pair at the threshold; the screened pairs are then scored exactly
    (``scoring.compare_pairs``, float64) and kept when ``Scorer.passes``. A fused pack's blocks are scored with its
    rule directly (``Scorer.compare``).
    """
    tids = np.asarray(template_ids, np.int64)
    iids = np.asarray(identity_ids, np.int64)
    vecs = np.asarray(vectors, np.float32)
    cosine = scorer.metric == "cosine"
    unit = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), MIN_NORM) if cosine else vecs
    sq = np.einsum("ij,ij->i", unit, unit)
    full = rows is None
    rows = np.arange(len(tids)) if rows is None else np.asarray(rows, np.int64)
    t = scorer.threshold
    found: dict[tuple[int, int], LookalikePair] = {}
    for start in range(0, len(rows), BLOCK):
        block = rows[start : start + BLOCK]
        cols = np.arange(int(block[0]), len(tids)) if full else np.arange(len(tids))  # full: upper triangle
        if scorer.metric == "fused":  # no cheap screening key for a sum of LLRs: score the block with the rule itself
            r, c = np.nonzero(scorer.passes_all(scorer.compare(vecs[block], vecs[cols])))
            r, c = block[r], cols[c]
        else:
            r, c = _screened(unit, sq, block, cols, t, cosine)
        other = iids[r] != iids[c]
        r, c = r[other], c[other]
        if not len(r):
            continue
        s = scorer.compare_pairs(vecs[r], vecs[c])
        ok = scorer.passes_all(s)
        r, c, s = r[ok], c[ok], s[ok]
        order = np.argsort(scorer.to_higher_better(s))[::-1]  # best first
        r, c, s = r[order], c[order], s[order]
        swap = iids[r] > iids[c]
        first, second = np.where(swap, c, r), np.where(swap, r, c)  # rows of the lower and the higher identity
        pair_keys = np.stack([iids[first], iids[second]], axis=1)
        if not len(pair_keys):
            continue
        _, at = np.unique(pair_keys, axis=0, return_index=True)  # first occurrence = best score of the pair
        for i in at:
            k = (int(pair_keys[i, 0]), int(pair_keys[i, 1]))
            pair = LookalikePair(k[0], k[1], float(s[i]), int(tids[first[i]]), int(tids[second[i]]))
            old = found.get(k)
            if old is None or scorer.better(pair.score, old.score):
                found[k] = pair
    return found


class Lookalikes:
    """The lookalike pairs of one gallery under one ``Scorer``, kept up to date by ``update`` (incremental)."""

    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer
        self.pairs: dict[tuple[int, int], LookalikePair] = {}
        self._known = np.zeros(0, np.int64)  # template ids already compared with all the others
        self._partners: dict[int, frozenset[int]] = {}

    def update(self, template_ids: np.ndarray, identity_ids: np.ndarray, vectors: np.ndarray) -> bool:
        """Bring the pairs up to the live templates (ids int64 N, identity ids int64 N, vectors N×D float32 in the
        same order): pairs whose templates are gone are dropped (their identities are re-compared in full when
        both remain), new templates are compared with all. Returns True when the set of pairs changed."""
        tids = np.asarray(template_ids, np.int64)
        iids = np.asarray(identity_ids, np.int64)
        before = set(self.pairs)
        live = set(tids.tolist())
        gone = [k for k, p in self.pairs.items() if p.a_template not in live or p.b_template not in live]
        for key in gone:
            del self.pairs[key]
        known = np.isin(tids, self._known)
        if gone:  # a pair lost its closest templates: the identities still enrolled are compared again in full
            again = np.isin(iids, [i for key in gone for i in key])
            known &= ~again
        new_rows = np.flatnonzero(~known)
        if len(new_rows):
            for key, pair in find_pairs(self.scorer, tids, iids, vectors, new_rows).items():
                old = self.pairs.get(key)
                if old is None or self.scorer.better(pair.score, old.score):
                    self.pairs[key] = pair
        self._known = tids.copy()
        self._index_partners()
        return set(self.pairs) != before

    def covers(self, scorer: Scorer) -> bool:
        """True when ``scorer`` is this one or stricter (same metric, threshold no looser): its pairs are a subset
        of these, so ``restrict`` gives them without comparing templates again."""
        return scorer.metric == self.scorer.metric and self.scorer.passes(scorer.threshold)

    def restrict(self, scorer: Scorer) -> None:
        """Switch to ``scorer``, which ``covers`` must accept: keep the pairs whose score passes it."""
        if not self.covers(scorer):
            raise ValueError(f"{scorer.describe()} is looser than {self.scorer.describe()}: recompute the pairs")
        self.scorer = scorer
        self.pairs = {k: p for k, p in self.pairs.items() if scorer.passes(p.score)}
        self._index_partners()

    def _index_partners(self) -> None:
        partners: dict[int, set[int]] = {}
        for a, b in self.pairs:
            partners.setdefault(a, set()).add(b)
            partners.setdefault(b, set()).add(a)
        self._partners = {k: frozenset(v) for k, v in partners.items()}

    def partners(self) -> dict[int, frozenset[int]]:
        """Identity id → the ids of its lookalikes (only identities that have some)."""
        return self._partners

    def to_json(self, names: dict[int, str]) -> list[dict[str, Any]]:
        """The pairs for ``facegate gallery list --lookalikes``, closest first: names, ids, closest score and the
        templates that give it."""
        rows = self.scorer.best_first(self.pairs.values())
        return [{"a": names.get(p.a, f"#{p.a}"), "b": names.get(p.b, f"#{p.b}"), "a_id": p.a, "b_id": p.b,
                 "score": round(p.score, 5), "a_template": p.a_template, "b_template": p.b_template} for p in rows]


def _screened(unit: np.ndarray, sq: np.ndarray, block: np.ndarray, cols: np.ndarray, t: float,
              cosine: bool) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns (indices into the templates) of the block's pairs that may pass ``t`` (float32 key with
    ``SLACK``; see ``find_pairs``)."""
    key = unit[block] @ unit[cols].T
    if cosine:
        r, c = np.nonzero(key >= t - SLACK)
    else:
        key *= -2.0
        key += sq[cols][None, :]
        key += sq[block][:, None]
        r, c = np.nonzero(key <= (t + SLACK) ** 2)
    return block[r], cols[c]
