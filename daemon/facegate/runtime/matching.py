"""The running daemon's view of the gallery: opened for the loaded pack, followed while other processes enrol and
erase, and searched by the decision stage — failing closed whenever it cannot be trusted.

``LiveGallery.search`` is the decision engine's ``SearchFn``. While the gallery cannot be refreshed (a locked or
damaged database, so an erasure made by another process may not be applied yet) every probe gets no candidates:
every face stays unknown and no door opens, until a refresh succeeds again.

``LiveGallery.lookalikes`` is the decision engine's ``LookalikesFn``: the gallery's lookalike pairs
(``gallery/lookalikes.py``) under the engine's threshold, brought up to date after every change (incremental: new
templates against all; a stricter threshold only filters the pairs, a looser one recomputes them).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from facegate.gallery.location import default_gallery_path
from facegate.gallery.lookalikes import Lookalikes

if TYPE_CHECKING:
    from facegate.config import Config
    from facegate.gallery import Gallery
    from facegate.pipeline import FacePipeline
    from facegate.scoring import Candidate, Scorer

log = logging.getLogger(__name__)

#: Candidates fetched per probe: the best identity and enough others for the margin test.
SEARCH_K = 5
#: Lookalike pairs named in the ``event=lookalikes`` log line (closest first); `facegate gallery list --lookalikes`
#: lists them all.
LOG_PAIRS = 20


class LiveGallery:
    """The gallery of one pack, refreshed incrementally (``refresh``) and searched (``search``). Thread-safe as
    ``Gallery`` is (its index serialises searches and updates)."""

    def __init__(self, gallery: Gallery) -> None:
        self.gallery = gallery
        self.stale = False  # set while the gallery cannot be refreshed: search answers nothing (fail closed)
        self._lookalikes: Lookalikes | None = None
        self._lookalikes_version = -1  # the gallery version the pairs reflect
        self._lookalikes_lock = threading.Lock()
        self._identities = self._names()
        stats = gallery.stats()
        log.info("event=gallery_opened folder=%s identities=%s templates=%s", stats["folder"], stats["identities"],
                 stats["templates"])
        if not stats["identities"]:
            log.warning("event=gallery_empty folder=%s note=every_face_will_be_unknown", stats["folder"])

    @classmethod
    def from_config(cls, config: Config, pipeline: FacePipeline) -> LiveGallery:
        """Open ``gallery.path`` (default: ``facegate.gallery.location``) bound to ``pipeline``'s pack: a gallery
        enrolled with another pack is refused (``GalleryError``)."""
        from facegate.gallery import Gallery
        from facegate.gallery.enrol import pack_binding

        folder = Path(config.gallery.path) if config.gallery.path else default_gallery_path()
        return cls(Gallery(folder, pack=pack_binding(pipeline)))

    def _names(self) -> dict[Any, str]:
        return {i.id: i.name for i in self.gallery.identities()}

    def refresh(self) -> bool:
        """Follow enrolments and erasures made by other processes (``Gallery.refresh``: incremental, searches go
        on meanwhile). Logs each identity added or removed. Returns True when the gallery changed; a failure is
        logged once per episode, makes the gallery stale (no matches) and is retried at the next call."""
        try:
            changed = self.gallery.refresh()
            if self.stale:
                log.warning("event=gallery_refresh_recovered note=matching_resumed")
            self.stale = False
            if not changed:
                return False
            now = self._names()
        except Exception as exc:  # a locked or damaged gallery must not stop the daemon; said loudly, fail closed
            if not self.stale:
                log.error("event=gallery_refresh_failed error=%r note=no_grants_until_it_recovers", str(exc))
            self.stale = True
            return False
        before = self._identities
        for iid in sorted(set(now) - set(before)):
            log.info("event=gallery_identity_added id=%s name=%r", iid, now[iid])
        for iid in sorted(set(before) - set(now)):
            log.info("event=gallery_identity_removed id=%s name=%r", iid, before[iid])
        self._identities = now
        log.info("event=gallery_reloaded identities=%d", len(now))
        if self._lookalikes is not None:  # now, not at the next frame
            self.lookalikes(self._lookalikes.scorer)
        return True

    def lookalikes(self, scorer: Scorer) -> Mapping[int, frozenset[int]]:
        """Identity id → the ids of its lookalikes under ``scorer`` (module docstring); updated first when the
        gallery or the threshold changed. Logs ``event=lookalikes`` with the pairs whenever they change."""
        with self._lookalikes_lock:
            la = self._lookalikes
            if la is not None and la.scorer != scorer and la.covers(scorer):
                la.restrict(scorer)
            elif la is None or la.scorer != scorer:
                la = self._lookalikes = Lookalikes(scorer)
                self._lookalikes_version = -1
            version = self.gallery.version  # read before the snapshot: a change meanwhile is caught next time
            if version != self._lookalikes_version:
                t0 = time.perf_counter()
                tids, iids, vecs = self.gallery.templates()
                if la.update(tids, iids, vecs) or self._lookalikes_version < 0:
                    names = self._identities
                    shown = la.scorer.best_first(la.pairs.values())[:LOG_PAIRS]
                    pairs = ",".join(f"{names.get(p.a, p.a)!r}~{names.get(p.b, p.b)!r}:{p.score:.3f}" for p in shown)
                    log.info("event=lookalikes pairs=%d threshold=%g templates=%d seconds=%.3f list=%s",
                             len(la.pairs), scorer.threshold, len(tids), time.perf_counter() - t0, pairs or "none")
                self._lookalikes_version = version
            return la.partners()

    def search(self, embeddings: np.ndarray) -> list[list[Candidate]]:
        """Per probe (N×D float32), its ``Candidate`` identities best first. Nothing while the gallery is stale
        (fail closed)."""
        if self.stale:
            return [[] for _ in range(len(embeddings))]
        return self.gallery.search(embeddings, SEARCH_K)

    def close(self) -> None:
        """Save the index if it changed and close the database (idempotent through ``Gallery.close``)."""
        self.gallery.close()
