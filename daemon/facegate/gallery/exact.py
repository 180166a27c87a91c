"""Exact 1:N search for galleries whose comparison score no vector index can compute: a fused pack's sum of
per-model log-likelihood ratios (``facegate/scoring.py``, ``Fusion``).

``ExactIndex`` keeps every live template in one numpy array and scores a probe against all of them with the pack's
``Scorer`` (two matrix products for the built-in fused pack), so the search never misses the best template: at
100,000 256-d templates that is ≈ 100 MB of memory and a few milliseconds of BLAS per probe. It has the interface of
``gallery/index.py``'s ``GalleryIndex`` that ``Gallery`` uses (add, remove, attach, search, names, versions); it is
not saved to disk — ``Gallery`` rebuilds it from SQLite when it opens (≈ 1 s per 100,000 templates).

Thread safety: one lock around every read and write, as ``GalleryIndex``.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from facegate.errors import GalleryError
from facegate.scoring import Candidate, Scorer


class ExactIndex:
    """Brute-force index of ``dim``-wide templates scored by a ``Scorer`` (set at construction or later with
    ``use_scorer``; searching without one raises ``GalleryError``)."""

    def __init__(self, dim: int, metric: str, scorer: Scorer | None = None) -> None:
        self.dim, self.metric = dim, metric
        self._lock = threading.Lock()
        self._vecs = np.zeros((0, dim), np.float32)
        self._tids = np.zeros(0, np.int64)
        self._iids = np.zeros(0, np.int64)
        self._meta: dict[int, tuple[str, tuple[str, ...]]] = {}
        self._max_per_identity = 0
        self.scorer: Scorer | None = None
        self.version = 0
        self.generation = 0
        if scorer is not None:
            self.use_scorer(scorer)

    def use_scorer(self, scorer: Scorer) -> None:
        """Score with ``scorer`` (the pack's). Raises ``GalleryError`` for a scorer of another metric or width."""
        if scorer.metric != self.metric:
            raise GalleryError(f"the gallery holds {self.metric} templates; the scorer compares {scorer.metric}")
        if scorer.fusion is not None and scorer.fusion.dim != self.dim:
            raise GalleryError(f"the gallery holds {self.dim}-d templates; the pack's fusion expects "
                               f"{scorer.fusion.dim}-d")
        self.scorer = scorer

    # -- writes -----------------------------------------------------------------------------------------------
    def add(self, template_ids: np.ndarray, identity_id: int | np.ndarray, vectors: np.ndarray,
            names: dict[int, tuple[str, tuple[str, ...]]] | None = None, generation: int | None = None) -> None:
        """Insert templates (ids int64 N, identities scalar or N, vectors N×D float32); ``names`` updates labels."""
        tids = np.asarray(template_ids, np.int64).reshape(-1)
        vecs = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(tids), self.dim)
        iids = np.broadcast_to(np.asarray(identity_id, np.int64), tids.shape)
        with self._lock:
            if len(tids):
                self._vecs = np.concatenate([self._vecs, vecs])
                self._tids = np.concatenate([self._tids, tids])
                self._iids = np.concatenate([self._iids, iids])
                self._recount()
            if names:
                self._meta.update(names)
            if generation is not None:
                self.generation = generation
            self.version += 1

    def remove(self, template_ids: np.ndarray, identity_id: int | None = None, generation: int | None = None) -> int:
        """Drop templates (never returned again); returns how many were live."""
        with self._lock:
            gone = np.isin(self._tids, np.asarray(template_ids, np.int64).reshape(-1))
            removed = int(gone.sum())
            self._vecs, self._tids, self._iids = self._vecs[~gone], self._tids[~gone], self._iids[~gone]
            self._recount()
            if identity_id is not None and identity_id not in set(self._iids.tolist()):
                self._meta.pop(identity_id, None)
            if generation is not None:
                self.generation = generation
            self.version += 1
        return removed

    def _recount(self) -> None:
        self._max_per_identity = int(np.bincount(np.unique(self._iids, return_inverse=True)[1]).max()
                                     ) if len(self._iids) else 0

    def attach(self, template_ids: np.ndarray, identity_ids: np.ndarray,
               names: dict[int, tuple[str, tuple[str, ...]]], generation: int) -> None:
        """Keep only ``template_ids`` (with their identities) and set the names (``GalleryIndex`` interface)."""
        with self._lock:
            keep = np.isin(self._tids, np.asarray(template_ids, np.int64))
            self._vecs, self._tids = self._vecs[keep], self._tids[keep]
            owner = dict(zip(np.asarray(template_ids).tolist(), np.asarray(identity_ids).tolist(), strict=True))
            self._iids = np.array([owner[t] for t in self._tids.tolist()], np.int64)
            self._recount()
            self._meta = dict(names)
            self.generation = generation
            self.version += 1

    def set_names(self, names: dict[int, tuple[str, tuple[str, ...]]], generation: int | None = None) -> None:
        """Replace the identity id → (name, groups) map."""
        with self._lock:
            self._meta = dict(names)
            if generation is not None:
                self.generation = generation
            self.version += 1

    # -- reads ------------------------------------------------------------------------------------------------
    def templates(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A consistent copy of every live template: (template ids int64 L, identity ids int64 L, vectors L×D
        float32), as ``GalleryIndex.templates``."""
        with self._lock:
            return self._tids.copy(), self._iids.copy(), self._vecs.copy()

    @property
    def count(self) -> int:
        return len(self._tids)

    @property
    def deleted(self) -> int:
        return 0  # removed templates leave the array at once

    def labels(self) -> np.ndarray:
        with self._lock:
            return self._tids.copy()

    def live_labels(self) -> np.ndarray:
        with self._lock:
            return np.sort(self._tids)

    def stored_vectors(self, template_ids: np.ndarray) -> np.ndarray:
        """The stored templates of these ids, in that order (N×D float32)."""
        with self._lock:
            where = {t: i for i, t in enumerate(self._tids.tolist())}
            return self._vecs[[where[int(t)] for t in np.asarray(template_ids).reshape(-1)]]

    def search(self, probes: np.ndarray, k: int = 5) -> tuple[list[list[Candidate]], int]:
        """Top-``k`` identities per probe (N×D float32), best template per identity, best first — exactly, every
        template scored. Returns (lists of ``Candidate``, the version the answer reflects). Raises
        ``GalleryError`` for ``k`` < 1 or when no scorer was given."""
        probes = np.ascontiguousarray(probes, dtype=np.float32).reshape(-1, self.dim)
        if k < 1:
            raise GalleryError(f"k={k}: ask for at least one identity")
        with self._lock:
            version = self.version
            if not len(self._tids) or not len(probes):
                return [[] for _ in range(len(probes))], version
            if self.scorer is None:
                raise GalleryError(f"this gallery holds {self.metric} templates; searching it needs the pack's "
                                   "scorer (open it with the pack loaded)")
            scorer = self.scorer
            scores = np.asarray(scorer.compare(probes, self._vecs, np.float32), np.float32)
            keys = scores if scorer.lower_is_better else -scores
            keys = np.where(np.isnan(keys), np.inf, keys)  # NaN sorts last (fail closed)
            fetch = min(len(self._tids), k * max(1, self._max_per_identity))
            out: list[list[Candidate]] = []
            for probe, key in zip(probes, keys, strict=True):
                top = np.argpartition(key, fetch - 1)[:fetch] if fetch < len(key) else np.arange(len(key))
                # the float32 matrix product selects; the selected are scored again in float64, directly (a probe
                # equal to a stored template scores as itself, whatever the BLAS build rounds), and ranked by that
                exact = scorer.compare_pairs(np.broadcast_to(probe, (len(top), self.dim)), self._vecs[top])
                rank = exact if scorer.lower_is_better else -exact
                order = np.argsort(np.where(np.isnan(rank), np.inf, rank), kind="stable")
                seen: set[int] = set()
                found: list[Candidate] = []
                for i in order.tolist():
                    j = int(top[i])
                    iid = int(self._iids[j])
                    if iid in seen:
                        continue
                    seen.add(iid)
                    name, groups = self._meta.get(iid, (f"#{iid}", ()))
                    found.append(Candidate(iid, name, groups, float(exact[i]), int(self._tids[j])))
                    if len(found) == k:
                        break
                out.append(found)
        return out, version

    # -- persistence (none: rebuilt from SQLite) -----------------------------------------------------------------
    def save(self, folder: Path, gallery_id: str, pack: str) -> Any:
        """Nothing to write: the templates live in SQLite and the array is rebuilt when the gallery opens."""
        return None
