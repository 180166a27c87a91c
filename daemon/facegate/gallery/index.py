"""The one owner of the gallery's hnswlib index (1:N search over templates).

hnswlib (https://github.com/nmslib/hnswlib, HNSW graphs of Malkov & Yashunin 2018, arXiv:1603.09320) is not safe
for ``add_items``/``mark_deleted`` concurrent with ``knn_query`` (its README: "thread-safe for queries only" and
"not safe to call add and query at the same time"). ``GalleryIndex`` therefore serialises every call on the index
behind one lock; a query takes well under a millisecond, so writers wait at most that long.

Labels are the store's template ids. The index also keeps, for the search result, the identity of every label and
the name and groups of every identity, updated under the same lock, so a search never sees a half-applied change.

Metric (fixed by the gallery's pack):

* ``euclidean`` (dlib): hnswlib space ``l2`` returns the **squared** distance; ``search`` returns its square root,
  the Euclidean distance (lower = more alike).
* ``cosine`` (ArcFace-style packs): hnswlib space ``cosine`` L2-normalises vectors on add and query and returns
  ``1 − cos``; ``search`` returns the cosine similarity ``1 − d`` (higher = more alike).

These are the comparison scores of ``facegate/scoring.py``, which owns what passes and what is better; ``search``
returns ``scoring.Candidate`` lists, the type the decision engine takes.

Default parameters were chosen from bench/gallery_bench.py (README "Gallery and enrolment" has the full table) on
the synthetic worst case of ../shared/notes/peers.md (128-d, 5 templates per identity), one query thread, on the
shared 2-core VM (other jobs running, so wall-clock p99 is scheduler noise; CPU time per query is given too):

* 100k templates, M=48, ef_construction=400: ef=64 → recall@1 0.999, CPU p50/p99 0.33/0.51 ms;
  ef=128 → 1.000, 0.61/0.86 ms (numpy brute force 1.9 ms).
* 1M templates, same graph (build 4,044 s on 2 loaded cores, 874 MiB): ef=64 → 0.976 (p50 0.58 ms),
  ef=128 → 0.988 (1.10 ms), ef=160 → 0.994 (1.20 ms); numpy brute force p50 21.5 ms. The target of recall@1
  ≥ 0.995 with p99 ≤ 1 ms at 1M was **not** met by this graph; hnswlib's defaults (M=16, ef_construction=200)
  are far worse (0.94 at ef=256, peers.md).

``DEFAULT_EF`` = 160 is the highest-recall setting measured at 1M (0.994, ≈ 1.2 ms); at 100k ef ≥ 96 already
gives 1.000.

Search (``search``): exact below ``EXACT_SEARCH_MAX_TEMPLATES`` live templates — brute force over the in-memory
template matrix (``gallery/template_matrix.py``), so an enrolled template is always found — and above it the graph
with an exact re-rank of ``RERANK_FACTOR`` × the needed candidates; the numbers above are the graph alone.

Persistence is atomic: the index is written to a new file, fsynced, then a small ``index.json`` (gallery id,
generation, parameters, file name, sha256) is written to a temporary file, fsynced and renamed over the old one;
only then are older index files removed. A crash at any point leaves ``index.json`` naming a complete file (or no
``index.json``), and a file whose checksum, gallery id or pack does not match is ignored and rebuilt from SQLite.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import threading
from collections.abc import Iterable
from pathlib import Path

import hnswlib
import numpy as np

from facegate.errors import GalleryError
from facegate.fileio import folder_lock, read_limited, sha256_file, write_atomic
from facegate.gallery.template_matrix import TemplateMatrix
from facegate.scoring import METRICS, Candidate

log = logging.getLogger(__name__)

#: Graph out-degree. 48 (not hnswlib's 16) because the 1M synthetic case reached only recall@1 0.94 with M=16 even
#: at ef=256 (peers.md); M=48 reaches 0.994 at ef=160 (module docstring).
DEFAULT_M = 48
#: Build-time candidate list; 400 with M=48 gives the recall/latency of the module docstring.
DEFAULT_EF_CONSTRUCTION = 400
#: Query-time candidate list (raised per query to at least the number of templates fetched); see the module docstring.
DEFAULT_EF = 160
#: Up to this many live templates every search is exact: brute force over all of them
#: (``gallery/template_matrix.py``, one BLAS matrix product), no approximation, so no silent miss. Above it
#: hnswlib fetches candidates, which are then re-scored exactly. Measured by ``bench/gallery_bench.py
#: --crossover`` (README "1:N search benchmark", 2026-12-06, 2-core VM, 128-d, k = 5): the latency curves cross
#: between 10k and 50k templates, but the graph path, even re-ranked, returned another best template than brute
#: force for 2/500 fresh queries at 50k and 4/500 at 100k, while brute force at 100k costs 3.6 ms CPU p50 / 5.5 ms
#: p99 per search (≈ 6 % of a frame's cycle).
EXACT_SEARCH_MAX_TEMPLATES = 100_000
#: Above ``EXACT_SEARCH_MAX_TEMPLATES``: the graph is asked for this many times the templates a search needs (k ×
#: the largest template count of one identity), all re-scored exactly; the best template per identity wins.
RERANK_FACTOR = 4
#: Capacity grows by this factor when full (hnswlib's resize_index copies the graph).
GROWTH = 2.0
INITIAL_CAPACITY = 1024
META_NAME = "index.json"
INDEX_FORMAT = 1


class GalleryIndex:
    """Thread-safe hnswlib index of templates (see the module docstring); every method takes the one lock."""

    def __init__(
        self,
        dim: int,
        metric: str,
        M: int = DEFAULT_M,
        ef_construction: int = DEFAULT_EF_CONSTRUCTION,
        ef: int = DEFAULT_EF,
        capacity: int | None = INITIAL_CAPACITY,
        exact_max: int = EXACT_SEARCH_MAX_TEMPLATES,
    ) -> None:
        if metric not in METRICS:
            raise GalleryError(f"metric {metric!r} is not 'euclidean' or 'cosine'")
        self.dim, self.metric = dim, metric
        self.M, self.ef_construction, self.ef = M, ef_construction, ef
        #: Live-template count up to which searches are exact (brute force); see ``EXACT_SEARCH_MAX_TEMPLATES``.
        self.exact_max = exact_max
        self._exact = TemplateMatrix(dim, metric)  # every live template, for exact search and re-scoring
        self._lock = threading.Lock()
        self._index = hnswlib.Index(space="l2" if metric == "euclidean" else "cosine", dim=dim)
        if capacity is not None:  # None: load_index follows (hnswlib prints a warning on stdout otherwise)
            self._index.init_index(max_elements=max(capacity, 16), M=M, ef_construction=ef_construction,
                                   random_seed=100)
        self._owner = np.full(INITIAL_CAPACITY, -1, np.int64)  # template id → identity id (-1: absent/deleted)
        self._per_identity: dict[int, int] = {}  # identity id → live templates
        self._meta: dict[int, tuple[str, tuple[str, ...]]] = {}  # identity id → (name, groups)
        self._alive = 0
        self._max_per_identity = 0
        #: Incremented once per add/remove call; search returns the version its answer was computed at.
        self.version = 0
        self.generation = 0  # the store generation this index reflects

    # -- writes -----------------------------------------------------------------------------------------------
    def add(
        self,
        template_ids: np.ndarray,
        identity_id: int | np.ndarray,
        vectors: np.ndarray,
        names: dict[int, tuple[str, tuple[str, ...]]] | None = None,
        generation: int | None = None,
    ) -> None:
        """Insert templates (ids int64 N, identities scalar or N, vectors N×D float32); ``names`` updates labels."""
        tids = np.asarray(template_ids, np.int64).reshape(-1)
        vecs = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(tids), self.dim)
        iids = np.broadcast_to(np.asarray(identity_id, np.int64), tids.shape)
        with self._lock:
            if len(tids):
                needed = self._index.get_current_count() + len(tids)
                if needed > self._index.get_max_elements():
                    self._index.resize_index(max(needed, int(self._index.get_max_elements() * GROWTH)))
                top = int(tids.max()) + 1
                if top > len(self._owner):
                    grown = np.full(max(top, int(len(self._owner) * GROWTH)), -1, np.int64)
                    grown[: len(self._owner)] = self._owner
                    self._owner = grown
                # hnswlib parallelises big batches itself; single-template enrolments stay inline.
                self._index.add_items(vecs, tids, num_threads=-1 if len(tids) > 1000 else 1)
                self._exact.add(tids, vecs)
                self._owner[tids] = iids
                for iid, count in zip(*np.unique(iids, return_counts=True), strict=True):
                    self._per_identity[int(iid)] = self._per_identity.get(int(iid), 0) + int(count)
                self._alive += len(tids)
                self._max_per_identity = max(self._per_identity.values())
            if names:
                self._meta.update(names)
            if generation is not None:
                self.generation = generation
            self.version += 1

    def remove(self, template_ids: np.ndarray, identity_id: int | None = None, generation: int | None = None) -> int:
        """Mark templates deleted (they are never returned again); returns how many were live."""
        removed = 0
        with self._lock:
            for tid in np.asarray(template_ids, np.int64).reshape(-1):
                if tid < len(self._owner) and self._owner[tid] >= 0:
                    iid = int(self._owner[tid])
                    self._index.mark_deleted(int(tid))
                    self._exact.remove(np.array([tid]))
                    self._owner[tid] = -1
                    self._per_identity[iid] -= 1
                    if self._per_identity[iid] <= 0:
                        del self._per_identity[iid]
                    removed += 1
            self._alive -= removed
            self._max_per_identity = max(self._per_identity.values(), default=0)
            if identity_id is not None and identity_id not in self._per_identity:
                self._meta.pop(identity_id, None)
            if generation is not None:
                self.generation = generation
            self.version += 1
        return removed

    # -- reads ------------------------------------------------------------------------------------------------
    @property
    def count(self) -> int:
        """Live (not deleted) templates."""
        return self._alive

    @property
    def deleted(self) -> int:
        """Templates marked deleted but still in the graph (``compact`` drops them)."""
        with self._lock:
            return self._index.get_current_count() - self._alive

    def search(self, probes: np.ndarray, k: int = 5) -> tuple[list[list[Candidate]], int]:
        """Top-``k`` identities per probe (best template per identity), best first.

        ``probes``: N×D float32 embeddings of the gallery's pack. Up to ``exact_max`` live templates the answer is
        exact (brute force over every live template, ``gallery/template_matrix.py``); above it hnswlib fetches
        ``RERANK_FACTOR`` × as many templates as needed and they are re-scored exactly. Templates needed: ``k`` ×
        the largest number of templates one identity has, which guarantees ``k`` distinct identities. Every score
        is ``scoring.compare`` of the probe and the stored template, whichever path found it. An empty gallery
        gives empty lists; fewer than ``k`` identities give shorter lists. Returns (per-probe lists of
        ``scoring.Candidate`` with ``template_id`` set, the index version the answer reflects).
        """
        probes = np.ascontiguousarray(probes, dtype=np.float32).reshape(-1, self.dim)
        if k < 1:
            raise GalleryError(f"k={k}: ask for at least one identity")
        with self._lock:
            version = self.version
            if self._alive == 0 or len(probes) == 0:
                return [[] for _ in range(len(probes))], version
            fetch = min(self._alive, k * max(1, self._max_per_identity))
            if self._alive <= self.exact_max:
                found = self._exact.nearest(probes, fetch)
            else:
                found = self._approximate(probes, min(self._alive, fetch * RERANK_FACTOR))
            out = [self._group(probe, tids, k) for probe, tids in zip(probes, found, strict=True)]
        return out, version

    def _approximate(self, probes: np.ndarray, fetch: int) -> list[np.ndarray]:
        """hnswlib's ``fetch`` nearest live templates per probe (ef raised to at least ``fetch``)."""
        self._index.set_ef(max(self.ef, fetch))
        labels, _ = self._query(probes, fetch)
        return [row[(row >= 0) & (self._owner[np.maximum(row, 0)] >= 0)] for row in labels.astype(np.int64)]

    def _group(self, probe: np.ndarray, template_ids: np.ndarray, k: int) -> list[Candidate]:
        """Re-score the templates exactly, sort best first and keep the best template of each of ``k`` identities."""
        scores = self._exact.rescore(probe, template_ids)
        order = np.argsort(scores if self.metric == "euclidean" else -scores, kind="stable")
        seen: set[int] = set()
        matches: list[Candidate] = []
        for i in order:
            label = int(template_ids[i])
            iid = int(self._owner[label])
            if iid < 0 or iid in seen:
                continue
            seen.add(iid)
            name, groups = self._meta.get(iid, (f"#{iid}", ()))
            matches.append(Candidate(iid, name, groups, float(scores[i]), label))
            if len(matches) == k:
                break
        return matches

    def _query(self, probes: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        """knn_query, tolerating hnswlib's RuntimeError when it finds fewer than ``fetch`` live items
        (possible after deletions): retry probe by probe with a halving ``fetch``; -1 labels pad short rows."""
        try:
            return self._index.knn_query(probes, k=fetch, num_threads=1)
        except RuntimeError:
            labels = np.full((len(probes), fetch), -1, np.int64)
            dists = np.full((len(probes), fetch), np.inf, np.float32)
            for i, probe in enumerate(probes):
                kk = fetch
                while kk >= 1:
                    try:
                        lab, dis = self._index.knn_query(probe[None], k=kk, num_threads=1)
                    except RuntimeError:
                        kk //= 2
                        continue
                    labels[i, :kk], dists[i, :kk] = lab[0], dis[0]
                    break
            return labels, dists

    # -- persistence ------------------------------------------------------------------------------------------
    def save(self, folder: Path, gallery_id: str, pack: str) -> Path:
        """Write the index atomically into ``folder`` (see the module docstring); returns the index file path.

        Holds an exclusive ``flock`` on ``folder/.index.lock`` throughout, so two processes saving into one gallery
        (two ``facegate enroll`` runs) cannot delete each other's just-written file as stale."""
        folder = Path(folder)
        with folder_lock(folder, ".index.lock"):
            return self._save_locked(folder, gallery_id, pack)

    def _save_locked(self, folder: Path, gallery_id: str, pack: str) -> Path:
        name = f"index-{self.generation}-{secrets.token_hex(4)}.hnsw"
        path = folder / name
        with self._lock:
            self._index.save_index(str(path))
            expected = int(self._index.index_file_size())
            os.chmod(path, 0o600)  # biometric data: owner only, whatever the umask
            written = path.stat().st_size
            if written != expected:  # hnswlib's ofstream ignores write errors (a full disk leaves a short file)
                path.unlink(missing_ok=True)
                raise OSError(errno.ENOSPC, f"index file written short ({written} of {expected} bytes; is the "
                              "disk full?)", str(path))
            generation = self.generation
            meta = {
                "format": INDEX_FORMAT, "gallery_id": gallery_id, "generation": generation, "pack": pack,
                "dim": self.dim, "metric": self.metric, "M": self.M, "ef_construction": self.ef_construction,
                "file": name,
            }
        with open(path, "rb+") as handle:
            os.fsync(handle.fileno())
        meta["sha256"] = sha256_file(path)
        meta["bytes"] = path.stat().st_size
        write_atomic(folder / META_NAME, json.dumps(meta).encode("utf-8"))  # temp file is 0600 (mkstemp)
        remove_stale_files(folder, keep=name)
        log.info("gallery_index_saved file=%s generation=%d bytes=%d", name, generation, meta["bytes"])
        return path

    @classmethod
    def load(cls, folder: Path, gallery_id: str, pack: str, dim: int, metric: str, ef: int = DEFAULT_EF,
             exact_max: int = EXACT_SEARCH_MAX_TEMPLATES) -> tuple[GalleryIndex, int] | None:
        """Load the saved index if it belongs to this gallery and pack and its checksum holds, else None.

        Returns (index with no label bookkeeping yet — call ``attach``, the generation it was saved at).
        """
        folder = Path(folder)
        try:
            meta = json.loads(read_limited(folder / META_NAME, 1 << 20, "an index.json").decode("utf-8"))
            path = folder / str(meta["file"])
            expected = (INDEX_FORMAT, gallery_id, pack, dim, metric)
            found = (meta.get("format"), meta.get("gallery_id"), meta.get("pack"), meta.get("dim"), meta.get("metric"))
            if found != expected:
                log.warning("gallery_index_ignored reason=mismatch found=%s expected=%s", found, expected)
                return None
            if path.stat().st_size != meta["bytes"] or sha256_file(path) != meta["sha256"]:
                log.warning("gallery_index_ignored reason=checksum file=%s", path)
                return None
            obj = cls(dim, metric, int(meta["M"]), int(meta["ef_construction"]), ef, capacity=None,
                      exact_max=exact_max)
            obj._index.load_index(str(path), allow_replace_deleted=False)
            obj.generation = int(meta["generation"])
            return obj, obj.generation
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            log.warning("gallery_index_ignored reason=unreadable error=%s", exc)
            return None

    def live_labels(self) -> np.ndarray:
        """Labels (template ids) that searches can return, int64 ascending."""
        with self._lock:
            return np.flatnonzero(self._owner >= 0).astype(np.int64)

    def set_names(self, names: dict[int, tuple[str, tuple[str, ...]]], generation: int | None = None) -> None:
        """Replace the identity id → (name, groups) map (after another process renamed or regrouped)."""
        with self._lock:
            self._meta = dict(names)
            if generation is not None:
                self.generation = generation
            self.version += 1

    def stored_vectors(self, template_ids: np.ndarray) -> np.ndarray:
        """The vectors the graph holds for these labels (N×D float32; L2-normalised by hnswlib for cosine)."""
        with self._lock:
            return np.asarray(self._index.get_items([int(t) for t in template_ids]), np.float32).reshape(-1, self.dim)

    def labels(self) -> np.ndarray:
        """Every label in the graph, deleted ones included (int64)."""
        with self._lock:
            return np.asarray(self._index.get_ids_list(), np.int64)

    def attach(self, templates: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]],
               names: dict[int, tuple[str, tuple[str, ...]]], generation: int) -> None:
        """After ``load``: take the live templates from the store and mark every other label deleted.

        ``templates``: batches of (template ids int64 B, identity ids int64 B, vectors B×D float32), as
        ``Store.embeddings`` yields them; every id must be in the graph (the caller adds missing ones with ``add``
        afterwards). The vectors fill the exact-search matrix (``gallery/template_matrix.py``).
        """
        exact = TemplateMatrix(self.dim, self.metric)
        tid_parts, iid_parts = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        for tids, iids, vecs in templates:
            exact.add(tids, vecs)
            tid_parts.append(np.asarray(tids, np.int64))
            iid_parts.append(np.asarray(iids, np.int64))
        tids, identity_ids = np.concatenate(tid_parts), np.concatenate(iid_parts)
        with self._lock:
            in_graph = np.asarray(self._index.get_ids_list(), np.int64)
            stale = np.setdiff1d(in_graph, tids)
            for tid in stale:
                with contextlib.suppress(RuntimeError):  # already marked deleted when the file was saved
                    self._index.mark_deleted(int(tid))
            size = int(max(in_graph.max(initial=0), tids.max(initial=0))) + 1
            self._owner = np.full(max(size, INITIAL_CAPACITY), -1, np.int64)
            self._owner[tids] = identity_ids
            self._exact = exact
            self._per_identity = {}
            for iid, count in zip(*np.unique(identity_ids, return_counts=True), strict=True):
                self._per_identity[int(iid)] = int(count)
            self._max_per_identity = max(self._per_identity.values(), default=0)
            self._alive = len(tids)
            self._meta = dict(names)
            self.generation = generation
            self.version += 1

    def templates(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A consistent copy of every live template: (template ids int64 L, identity ids int64 L, vectors L×D
        float32; cosine vectors L2-normalised)."""
        with self._lock:
            tids, vecs = self._exact.snapshot()
            return tids, self._owner[tids].copy(), vecs


def remove_stale_files(folder: Path, keep: str | None) -> None:
    """Delete index files (and temporaries) other than ``keep`` — after a successful save or when rebuilding."""
    for path in Path(folder).iterdir():
        stale_index = path.name.startswith("index-") and path.name.endswith(".hnsw") and path.name != keep
        if stale_index or (path.name.startswith(f".{META_NAME}.") and path.name.endswith(".tmp")):
            try:
                path.unlink()
            except OSError as exc:
                log.warning("gallery_stale_file_kept file=%s error=%s", path, exc)
