"""The gallery's templates as one in-memory matrix: exact 1:N search (brute force) and exact re-scoring.

``GalleryIndex`` keeps every live template here as well as in its hnswlib graph. Up to
``index.EXACT_SEARCH_MAX_TEMPLATES`` live templates it answers every search from this matrix (no approximation, so
no silent miss); above that it asks the graph for candidates and re-scores them exactly here.

Rows are appended in insertion order; ``row_of[template id]`` gives a template's row (-1: absent). Removing a
template zeroes its row and marks it dead (its label becomes -1); dead rows are skipped by the search and squeezed
out once they are more than half the rows (``compact``), so the matrix never holds more than twice the live rows.

Scores are the comparison scores of ``facegate/scoring.py``: the candidates a search selects are re-scored with
``scoring.compare_pairs`` (float64, the difference taken directly: a probe equal to a stored template scores exactly
0, where the matrix product's ‖p‖² + ‖t‖² − 2p·t in float32 leaves up to ≈ 1e-3 depending on the BLAS build), so a
template gets the same score from the exact and the approximate path. The
selection itself ranks by a key that orders exactly like that score (cosine: the dot product of L2-normalised
vectors; euclidean: the squared distance ‖p‖² + ‖t‖² − 2p·t, the same expression ``scoring.compare`` takes the root
of). Memory: ``dim`` × 4 bytes per row (0.5 KiB per 128-d template) plus 12 bytes of bookkeeping.

Not thread-safe: ``GalleryIndex`` calls it under its lock.
"""

from __future__ import annotations

import numpy as np

from facegate.scoring import MIN_NORM, compare_pairs

#: First allocation (rows); the matrix doubles when full.
INITIAL_ROWS = 1024
#: Probes scored per matrix product: bounds the temporary score matrix (64 × N float32, 25 MiB at 100k templates).
PROBE_CHUNK = 64
#: Rows per block of the top-k selection (``smallest``); INITIAL_ROWS is a multiple of it.
BLOCK = 128


class TemplateMatrix:
    """Live templates (rows of float32 vectors) with their template ids; see the module docstring.

    ``metric`` is ``euclidean`` or ``cosine``; cosine rows are stored L2-normalised (what ``scoring.compare``
    normalises them to), euclidean rows as given.
    """

    def __init__(self, dim: int, metric: str) -> None:
        self.dim, self.metric = dim, metric
        self._cosine = metric == "cosine"
        self._vecs = np.zeros((INITIAL_ROWS, dim), np.float32)
        self._sq = np.zeros(INITIAL_ROWS, np.float32)  # squared norms (euclidean)
        self._tid = np.full(INITIAL_ROWS, -1, np.int64)  # row → template id (-1: dead or unused)
        self.row_of = np.full(INITIAL_ROWS, -1, np.int64)  # template id → row (-1: absent)
        self.rows = 0  # rows in use, dead ones included
        self.dead = 0

    @property
    def live(self) -> int:
        """Live templates."""
        return self.rows - self.dead

    # -- writes -----------------------------------------------------------------------------------------------
    def add(self, template_ids: np.ndarray, vectors: np.ndarray) -> None:
        """Append templates (ids int64 N, vectors N×dim float32). An id already present is replaced."""
        tids = np.asarray(template_ids, np.int64).reshape(-1)
        vecs = np.asarray(vectors, np.float32).reshape(len(tids), self.dim)
        if not len(tids):
            return
        self.remove(tids[tids < len(self.row_of)])
        if self._cosine:
            vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), MIN_NORM)
        need = self.rows + len(tids)
        if need > len(self._vecs):
            size = -(-max(need, 2 * len(self._vecs)) // BLOCK) * BLOCK  # whole blocks, for ``smallest``
            self._vecs = _grown(self._vecs, size, 0.0)
            self._sq = _grown(self._sq, size, 0.0)
            self._tid = _grown(self._tid, size, -1)
        top = int(tids.max()) + 1
        if top > len(self.row_of):
            self.row_of = _grown(self.row_of, max(top, 2 * len(self.row_of)), -1)
        rows = np.arange(self.rows, need)
        self._vecs[rows] = vecs
        self._sq[rows] = np.einsum("ij,ij->i", vecs, vecs)
        self._tid[rows] = tids
        self.row_of[tids] = rows
        self.rows = need

    def remove(self, template_ids: np.ndarray) -> None:
        """Drop templates (ids absent here are ignored); their rows are zeroed."""
        tids = np.asarray(template_ids, np.int64).reshape(-1)
        tids = tids[(tids >= 0) & (tids < len(self.row_of))]
        rows = self.row_of[tids]
        rows = np.unique(rows[rows >= 0])
        if not len(rows):
            return
        self._vecs[rows] = 0.0
        self._sq[rows] = 0.0
        self._tid[rows] = -1
        self.row_of[tids] = -1
        self.dead += len(rows)
        if self.dead > max(self.live, INITIAL_ROWS):
            self.compact()

    def compact(self) -> None:
        """Squeeze out the dead rows (keeps the order of the live ones)."""
        keep = np.flatnonzero(self._tid[: self.rows] >= 0)
        n = len(keep)
        self._vecs[:n] = self._vecs[keep]
        self._sq[:n] = self._sq[keep]
        self._tid[:n] = self._tid[keep]
        self._vecs[n : self.rows] = 0.0
        self._sq[n : self.rows] = 0.0
        self._tid[n : self.rows] = -1
        self.row_of[self._tid[:n]] = np.arange(n)
        self.rows, self.dead = n, 0

    # -- reads ------------------------------------------------------------------------------------------------
    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        """(template ids int64 L, vectors L×dim float32) of the live templates — copies, in row order."""
        keep = np.flatnonzero(self._tid[: self.rows] >= 0)
        return self._tid[keep].copy(), self._vecs[keep].copy()

    def vectors(self, template_ids: np.ndarray) -> np.ndarray:
        """The stored vectors of these (live) templates, N×dim float32 (cosine: L2-normalised). Raises
        ``KeyError`` for an id that is not live."""
        tids = np.asarray(template_ids, np.int64).reshape(-1)
        ok = (tids >= 0) & (tids < len(self.row_of))
        rows = np.where(ok, self.row_of[np.where(ok, tids, 0)], -1)
        if (rows < 0).any():
            raise KeyError(f"template ids not in the matrix: {tids[rows < 0][:5].tolist()}")
        return self._vecs[rows]

    def nearest(self, probes: np.ndarray, fetch: int) -> list[np.ndarray]:
        """Exact top-``fetch`` templates per probe (N×dim float32): per probe the template ids, best first.

        Brute force: one matrix product per ``PROBE_CHUNK`` probes (numpy → BLAS), then ``smallest``. Fewer than
        ``fetch`` live templates give them all.
        """
        probes = np.asarray(probes, np.float32).reshape(-1, self.dim)
        fetch = min(fetch, self.live)
        if fetch <= 0:
            return [np.zeros(0, np.int64) for _ in range(len(probes))]
        # Whole blocks of rows (the capacity is a multiple of BLOCK); unused and dead rows get an infinite key.
        padded = -(-self.rows // BLOCK) * BLOCK
        rows = self._vecs[:padded]
        excluded = np.flatnonzero(self._tid[:padded] < 0)
        out: list[np.ndarray] = []
        buffer = np.empty((min(PROBE_CHUNK, len(probes)), padded), np.float32)  # reused: fresh pages cost more
        # Ascending key = best first, straight out of the matrix product (no extra pass over the N×rows matrix).
        # Cosine: −p·t (the probe's norm does not change the order within its row); euclidean: ‖t‖² − 2p·t, the
        # squared distance less ‖p‖², which is the same for every row of a probe.
        scaled = probes * np.float32(-1.0 if self._cosine else -2.0)
        for start in range(0, len(probes), PROBE_CHUNK):
            chunk = scaled[start : start + PROBE_CHUNK]
            key = buffer[: len(chunk)]
            np.matmul(chunk, rows.T, out=key)
            if not self._cosine:
                key += self._sq[:padded]
            key[:, excluded] = np.inf
            out.extend(self._tid[smallest(key, fetch)])
        return out

    def rescore(self, probe: np.ndarray, template_ids: np.ndarray) -> np.ndarray:
        """Exact comparison scores (``scoring.compare_pairs``, float64) of one probe (dim) against these live
        templates."""
        if not len(template_ids):
            return np.zeros(0, np.float64)
        vecs = self.vectors(template_ids)
        return compare_pairs(np.broadcast_to(np.asarray(probe, np.float32), vecs.shape), vecs, self.metric)


def smallest(key: np.ndarray, fetch: int) -> np.ndarray:
    """Column indices of the ``fetch`` smallest entries of each row of ``key`` (R×C float32, C a multiple of
    ``BLOCK``), per row in ascending order of key (R×fetch int64; ``fetch`` ≤ C).

    Block pruning, because ``np.argpartition`` over a whole row costs ≈ 15 ns per entry: the ``fetch`` smallest
    entries of a row lie in the ``fetch`` blocks of ``BLOCK`` columns with the smallest block minima (each of the
    ``f`` < ``fetch`` blocks whose minimum is below a block holding one of them contributes a distinct, smaller
    entry), so one vectorised min over the row, a partition of the block minima and one of ``fetch`` × ``BLOCK``
    entries replace the partition of the row.
    """
    n_rows, cols = key.shape
    blocks = key.reshape(n_rows, cols // BLOCK, BLOCK)
    if cols // BLOCK > fetch:
        chosen = np.argpartition(blocks.min(axis=2), fetch - 1, axis=1)[:, :fetch]  # R×fetch block numbers
        cand = np.take_along_axis(blocks, chosen[:, :, None], axis=1).reshape(n_rows, -1)
        cols_of = (chosen[:, :, None] * BLOCK + np.arange(BLOCK)).reshape(n_rows, -1)
    else:
        cand, cols_of = key, np.broadcast_to(np.arange(cols), key.shape)
    if cand.shape[1] > fetch:
        part = np.argpartition(cand, fetch - 1, axis=1)[:, :fetch]
    else:
        part = np.broadcast_to(np.arange(cand.shape[1]), cand.shape)
    order = np.take_along_axis(part, np.argsort(np.take_along_axis(cand, part, axis=1), axis=1, kind="stable"), 1)
    return np.take_along_axis(cols_of, order, axis=1)


def _grown(array: np.ndarray, size: int, fill: float) -> np.ndarray:
    out = np.full((size, *array.shape[1:]), fill, array.dtype)
    out[: len(array)] = array
    return out
