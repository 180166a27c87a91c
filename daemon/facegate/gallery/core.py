"""``Gallery``: the SQLite store plus the derived hnswlib index, kept consistent.

Folder layout (``--gallery DIR``): ``gallery.db`` (+ ``-wal``/``-shm`` while open), ``index.json`` and one
``index-<generation>-<random>.hnsw``. Only ``gallery.db`` matters: the index files can be deleted at any time
and are rebuilt (or brought up to date label by label) from SQLite when the gallery opens.

Writes go to SQLite first (one transaction), then to the index, both under the gallery's write lock, so two
writers in one process cannot interleave; searches run concurrently and only wait for the index lock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from facegate.errors import GalleryError
from facegate.gallery.binding import LEGACY_DEFAULT, LEGACY_RENAMED, PackBinding
from facegate.gallery.exact import ExactIndex
from facegate.gallery.exchange import EXPORT_FORMAT, EXPORT_VERSION, MIN_TEMPLATE_NORM, read_export
from facegate.gallery.index import DEFAULT_EF, GalleryIndex, remove_stale_files
from facegate.gallery.store import FILE_MODE, Identity, Store
from facegate.gallery.validate import groups_problem, name_problem
from facegate.scoring import Candidate, Scorer

log = logging.getLogger(__name__)


class Gallery:
    """Identities and templates of one gallery folder, bound to one pack; thread-safe.

    ``pack`` (optional) is the pack the caller will add or search with; a gallery bound to another pack raises
    ``GalleryError``. A new gallery is bound by its first enrolment. ``scorer`` (optional, or later
    ``use_scorer``): the pack's ``scoring.Scorer``; a gallery of a fused pack is searched exactly with it
    (``gallery/exact.py``), every other one through the hnswlib index (``gallery/index.py``).

    ``saves_index=False`` makes a read-only consumer of the index files (the running daemon,
    ``runtime/matching.py``): ``save``/``close`` never write one. The commands that change the gallery (enrol,
    remove, import, compact) keep them up to date; a consumer that saved would write its in-memory graph, in which
    hnswlib's ``mark_deleted`` keeps every erased template's vector, back into the folder after a ``compact``.
    """

    def __init__(self, folder: str | Path, pack: PackBinding | None = None, ef: int = DEFAULT_EF,
                 index_params: dict[str, int] | None = None, saves_index: bool = True,
                 scorer: Scorer | None = None) -> None:
        self.folder = Path(folder)
        self.saves_index = saves_index
        self.store = Store(self.folder)
        self._write_lock = threading.RLock()
        self._ef = ef
        self._params = dict(index_params or {})
        self._scorer = scorer
        self._index: GalleryIndex | ExactIndex | None = None
        self._dirty = False
        bound = self.store.binding()
        if pack is not None and bound is not None and bound != pack:
            bound = self.store.bind(pack)  # raises the mismatch error with the folder named (or renames a legacy one)
        self.pack = bound or pack
        if bound is not None:
            self._open_index(bound)

    # -- lifecycle --------------------------------------------------------------------------------------------
    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Persist the index if it changed (unless ``saves_index`` is False) and close the database."""
        self.save()
        self.store.close()

    def save(self) -> None:
        """Write the index atomically if it changed since it was loaded or saved; never with ``saves_index=False``."""
        with self._write_lock:
            if self.saves_index and self._index is not None and self._dirty and self.pack is not None:
                self._index.save(self.folder, self.store.gallery_id, self.pack.name)
                self._dirty = False

    def _new_index(self, pack: PackBinding, capacity: int) -> GalleryIndex | ExactIndex:
        if pack.metric == "fused":
            scorer = self._scorer if self._scorer is not None and self._scorer.metric == pack.metric else None
            return ExactIndex(pack.dim, pack.metric, scorer)
        return GalleryIndex(pack.dim, pack.metric, ef=self._ef, capacity=capacity, **self._params)

    def use_scorer(self, scorer: Scorer) -> None:
        """Search with the pack's ``scorer`` from now on (needed by a fused gallery; the hnswlib index of the other
        metrics scores by itself). Raises ``GalleryError`` for a scorer of another metric or width."""
        self._scorer = scorer
        index = self._index
        if isinstance(index, ExactIndex):
            index.use_scorer(scorer)

    def _names(self) -> dict[int, tuple[str, tuple[str, ...]]]:
        return {i.id: (i.name, tuple(i.groups)) for i in self.store.identities()}

    def _open_index(self, pack: PackBinding) -> None:
        """Load the saved index and bring it up to the store's state, or rebuild it from SQLite."""
        t0 = time.perf_counter()
        generation = self.store.generation
        tids, iids = self.store.template_ids()
        loaded = None if self._params or pack.metric == "fused" else GalleryIndex.load(
            self.folder, self.store.gallery_id, pack.name, pack.dim, pack.metric, self._ef)
        if loaded is not None and loaded[1] > generation:
            # an index newer than the database: gallery.db was restored from a backup. Its graph may hold templates
            # of the backup as deleted marks, which attach cannot revive: rebuild from SQLite, the truth.
            log.warning("gallery_index_ignored reason=newer_than_database index_generation=%d generation=%d",
                        loaded[1], generation)
            loaded = None
        if loaded is not None:
            index, saved_generation = loaded
            in_graph = index.labels()
            present = np.isin(tids, in_graph)
            index.attach(self.store.embeddings(tids[present]), self._names(), generation)
            missing = tids[~present]
            for mt, mi, vecs in self.store.embeddings(missing if len(missing) else np.zeros(0, np.int64)):
                index.add(mt, mi, vecs)
            self._index = index
            self._dirty = saved_generation != generation
            how = "loaded" if not self._dirty else f"loaded+{len(missing)} added"
        else:
            self._rebuild(pack, len(tids))
            how = "rebuilt"
        log.info("gallery_open folder=%s templates=%d index=%s seconds=%.2f", self.folder, len(tids), how,
                 time.perf_counter() - t0)

    def _rebuild(self, pack: PackBinding, count: int) -> None:
        index = self._new_index(pack, max(count, 16))
        for tids, iids, vecs in self.store.embeddings():
            index.add(tids, iids, vecs)
        index.add(np.zeros(0, np.int64), 0, np.zeros((0, pack.dim), np.float32), names=self._names(),
                  generation=self.store.generation)
        self._index = index
        self._dirty = True

    def refresh(self) -> bool:
        """Bring the index up to date after another process changed ``gallery.db`` (e.g. the daemon on SIGHUP):
        templates added there are added here, removed ones are marked deleted, names and groups are reloaded.
        Searches continue meanwhile. Returns True when something changed."""
        with self._write_lock:
            bound = self.store.binding()
            if bound is None:
                return False
            if self._index is None:
                self.pack = bound
                self._open_index(bound)
                return True
            generation = self.store.generation
            if self._index.generation == generation:
                return False
            tids, _ = self.store.template_ids()
            live = self._index.live_labels()
            self._index.remove(np.setdiff1d(live, tids))
            for new_tids, new_iids, vecs in self.store.embeddings(np.setdiff1d(tids, live)):
                self._index.add(new_tids, new_iids, vecs)
            self._index.set_names(self._names(), generation)
            self._dirty = True
            log.info("gallery_refresh generation=%d templates=%d", generation, len(tids))
            return True

    # -- reads ------------------------------------------------------------------------------------------------
    @property
    def metric(self) -> str | None:
        return self.pack.metric if self.pack else None

    def identities(self) -> list[Identity]:
        return self.store.identities()

    def identity(self, name_or_id: str | int) -> Identity:
        return self.store.identity(name_or_id)

    def stats(self) -> dict[str, Any]:
        identities, templates = self.store.counts()
        return {
            "folder": str(self.folder),
            "pack": self.pack.name if self.pack else None,
            "dim": self.pack.dim if self.pack else None,
            "metric": self.metric,
            "identities": identities,
            "templates": templates,
            "index_deleted_pending_compact": self._index.deleted if self._index else 0,
            "generation": self.store.generation,
        }

    def search(self, probes: np.ndarray, k: int = 5) -> list[list[Candidate]]:
        """Top-``k`` identities per probe (N×D float32), best first; see ``GalleryIndex.search``."""
        return self.search_versioned(probes, k)[0]

    def search_versioned(self, probes: np.ndarray, k: int = 5) -> tuple[list[list[Candidate]], int]:
        """``search`` plus the index version the answer reflects (for consistency checks)."""
        probes = np.asarray(probes, dtype=np.float32)
        if probes.ndim == 1:
            probes = probes[None]
        if self.pack is not None and probes.shape[1] != self.pack.dim:
            raise GalleryError(f"probe embeddings are {probes.shape[1]}-d, the gallery holds "
                               f"{self.pack.describe()} templates")
        index = self._index
        if index is None:
            return [[] for _ in range(len(probes))], 0
        return index.search(probes, k)

    @property
    def version(self) -> int:
        return self._index.version if self._index else 0

    def templates(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every live template as the index holds it: (template ids int64 L, identity ids int64 L, vectors L×D
        float32; cosine vectors L2-normalised). Empty arrays for a gallery without a pack."""
        if self._index is None:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, self.pack.dim if self.pack else 0),
                                                                           np.float32)
        return self._index.templates()

    # -- writes -----------------------------------------------------------------------------------------------
    def enrol(
        self,
        name: str,
        embeddings: np.ndarray,
        pack: PackBinding,
        groups: Iterable[str] = (),
        image_sha256: list[str | None] | None = None,
        quality: list[dict[str, Any]] | None = None,
    ) -> tuple[int, np.ndarray]:
        """Add templates (N×D float32 of ``pack``) to identity ``name``, creating it if new.

        Quality gates and the duplicate check are the caller's (``facegate.gallery.enrol``). Returns
        (identity id, template ids; -1 for a template skipped because the identity already holds it, see
        ``Store.add``). Raises ``GalleryError`` for an invalid name or group (``facegate.gallery.validate``), a
        wrong shape, non-finite values, an all-zero row or another pack.
        """
        problem = name_problem(name) or groups_problem(list(groups))
        if problem:
            raise GalleryError(f"{problem}; give a valid --name/--group")
        name = name.strip()
        emb = np.asarray(embeddings, np.float32)
        if emb.ndim != 2 or emb.shape[1] != pack.dim or not len(emb):
            raise GalleryError(f"{name}: expected N×{pack.dim} embeddings of pack {pack.name}, got {emb.shape}")
        if not np.all(np.isfinite(emb)):
            raise GalleryError(f"{name}: embeddings contain NaN or infinity; the image or model is broken")
        if np.any(np.linalg.norm(emb, axis=1) < MIN_TEMPLATE_NORM):  # a recogniser never outputs one: not a face
            raise GalleryError(f"{name}: an all-zero embedding is not a template of a face; the image, the model or "
                               "the imported file is broken")
        with self._write_lock:
            bound = self.store.bind(pack)
            if self._index is None:
                self.pack = bound
                self._rebuild(bound, 0)
            assert self._index is not None
            identity_id, tids, generation = self.store.add(name, emb, bound, list(groups), image_sha256, quality)
            ident = self.store.identity(identity_id)
            new = tids >= 0
            self._index.add(tids[new], identity_id, emb[new], names={identity_id: (ident.name, tuple(ident.groups))},
                            generation=generation)
            self._dirty = True
        log.info("gallery_enrol identity=%r templates=%d skipped=%d", name, int(new.sum()), int((~new).sum()))
        return identity_id, tids

    def update(self, name_or_id: str | int, *, name: str | None = None, groups: list[str] | None = None) -> Identity:
        """Rename an identity and/or replace its groups; its templates stay. The index's labels follow at once
        (a running daemon's at its next refresh). Raises ``GalleryError`` for an unknown identity, an invalid or
        taken name, or an invalid group (``facegate.gallery.validate``). Returns the identity as stored now."""
        problem = (name_problem(name) if name is not None else None) or (
            groups_problem(list(groups)) if groups is not None else None)
        if problem:
            raise GalleryError(problem)
        with self._write_lock:
            ident = self.store.identity(name_or_id)
            if groups is not None:
                self.store.set_groups(ident.name, list(groups))
            if name is not None and name.strip() != ident.name:
                self.store.rename(ident.name, name.strip())
            self.refresh()
        log.info("gallery_update identity=%s name=%r groups=%s", ident.id, name, groups)
        return self.store.identity(name.strip() if name is not None else ident.name)

    def remove(self, name_or_id: str | int) -> Identity:
        """Erase an identity: its templates leave SQLite (overwritten, secure_delete) and the index (deleted
        marks). ``compact`` then rewrites both files. Raises ``GalleryError`` for an unknown identity."""
        with self._write_lock:
            ident, tids, generation = self.store.remove(name_or_id)
            if self._index is not None:
                self._index.remove(tids, ident.id, generation=generation)
            self._dirty = True
        log.info("gallery_remove identity=%s templates=%d", ident.name, len(tids))
        return ident

    def compact(self) -> dict[str, Any]:
        """Rebuild the index without deleted items, save it, delete old index files and VACUUM SQLite."""
        with self._write_lock:
            dropped = self._index.deleted if self._index else 0
            if self.pack is not None and self.store.binding() is not None:
                self._rebuild(self.pack, self.store.counts()[1])
                self.save()
            else:
                remove_stale_files(self.folder, keep=None)
            self.store.vacuum()
        return {"index_items_dropped": dropped, **self.stats()}

    # -- export / import --------------------------------------------------------------------------------------
    def export(self, path: str | Path, force: bool = False) -> dict[str, int]:
        """Write a portable JSON-lines file: a header line (format, pack) then one line per identity with its
        templates (embeddings as float lists, source sha256, quality). Written atomically, mode 0600 (biometric
        data). Raises ``GalleryError`` when ``path`` exists (unless ``force``) or cannot be written."""
        path = Path(path)
        if path.exists() and not force:
            raise GalleryError(f"{path}: the file already exists; give another file name or --force to overwrite it")
        if path.is_dir():
            raise GalleryError(f"{path}: is a directory; give a file name")
        tmp = path.with_name(f".{path.name}.tmp")
        n_ids = n_templates = 0
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
            os.fchmod(fd, FILE_MODE)  # an old temporary may have had other bits
            with open(fd, "w", encoding="utf-8") as out:
                header = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION,
                          "pack": self.pack.name if self.pack else None,
                          "dim": self.pack.dim if self.pack else None, "metric": self.metric}
                out.write(json.dumps(header) + "\n")
                for row in self.store.export_rows():
                    out.write(json.dumps(row) + "\n")
                    n_ids += 1
                    n_templates += len(row["templates"])
                out.flush()
                os.fsync(out.fileno())
            tmp.replace(path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise GalleryError(f"{path}: cannot write the export ({exc.strerror or exc}); check that the folder "
                               f"{path.parent} exists and is a writable directory") from None
        return {"identities": n_ids, "templates": n_templates}

    def import_file(self, path: str | Path) -> dict[str, int]:
        """Read a file written by ``export``; all or nothing (one SQLite transaction).

        Every record is validated before anything is written: a malformed line, a bad name or group, an
        embedding of the wrong size or with NaN/infinity raises ``GalleryError`` naming ``FILE:LINE`` and nothing
        is imported. A file of another pack than this gallery's is refused. Identities already present get the
        imported templates added (same name = same person); a template the identity already holds (same source
        image sha256 or identical embedding) is skipped, so importing a file twice or into the gallery it came
        from adds nothing. Returns ``{"identities", "templates" (added), "skipped"}``.
        """
        path = Path(path)

        def accept(pack: PackBinding) -> None:
            bound = self.store.binding()
            if pack == LEGACY_DEFAULT and bound == LEGACY_RENAMED:
                return  # an export of the old built-in pack: the dlib pack makes the same templates
            if bound is not None and bound != pack:
                raise GalleryError(f"{path}: templates of pack {pack.describe()} cannot be imported into "
                                   f"{self.folder}, which holds pack {bound.describe()}; import into another "
                                   "--gallery folder")

        # read incrementally within stated limits, every line validated before anything is written
        pack, records = read_export(path, accept)
        if pack is None:
            return {"identities": 0, "templates": 0, "skipped": 0}
        if pack == LEGACY_DEFAULT and self.store.binding() == LEGACY_RENAMED:
            pack = LEGACY_RENAMED
        with self._write_lock:
            added, skipped, _ = self.store.add_many(pack, records)
            self.refresh()  # adds the new templates (and names) to the index, or opens it
        log.info("gallery_import file=%s identities=%d templates=%d skipped=%d", path, len(records), added, skipped)
        return {"identities": len(records), "templates": added, "skipped": skipped}

