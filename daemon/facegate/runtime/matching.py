"""The running daemon's view of the gallery: opened for the loaded pack, followed while other processes enrol and
erase, and searched by the decision stage — failing closed whenever it cannot be trusted.

``LiveGallery.search`` is the decision engine's ``SearchFn``. Every ``refresh`` (each ``gallery.refresh_s`` and on
SIGHUP) first looks at the file now at the gallery path (``gallery/watch.py``: exists, is an SQLite database, which
file and which gallery id), then:

* the same file, readable: the gallery is followed incrementally (``Gallery.refresh``), identities added and
  removed are logged;
* missing, unreadable, overwritten with garbage, locked past the busy timeout, holding a corrupt template, or bound
  to another pack: the gallery is *stale* — every probe gets no candidates, so every face stays unknown and no door
  opens (an erasure may be among the changes that cannot be read) — reported once per episode through ``Health``
  (part ``gallery``), and retried at every refresh;
* another file or another gallery (its gallery id changed: the folder was replaced, a backup restored) or the end
  of a stale episode: the gallery at the path is opened afresh and loaded whole (never merged into what was loaded
  before), searches answering nothing meanwhile; the old one is closed.

The daemon is a read-only consumer of the index files (``Gallery(saves_index=False)``): it never writes one, so
after ``facegate gallery remove`` and ``compact`` by another process nothing it does (refresh, SIGHUP, SIGTERM,
SIGKILL) can put an erased template back into the folder.

``LiveGallery.lookalikes`` is the decision engine's ``LookalikesFn``: the gallery's lookalike pairs
(``gallery/lookalikes.py``) under the engine's threshold, brought up to date after every change (incremental: new
templates against all; a stricter threshold only filters the pairs, a looser one recomputes them; a gallery loaded
whole starts them afresh).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from facegate.errors import GalleryError
from facegate.gallery.location import default_gallery_path
from facegate.gallery.lookalikes import Lookalikes
from facegate.gallery.watch import GalleryFile, probe
from facegate.runtime.health import Health

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
    """The gallery of one pack, refreshed (``refresh``) and searched (``search``). Thread-safe as ``Gallery`` is
    (its index serialises searches and updates); ``refresh`` runs on one thread (the service's).

    ``gallery``: the opened gallery; ``opener``: opens the same folder afresh for a whole reload (None: the folder
    of ``gallery`` with its pack, index files never saved); ``health``: where episodes are reported (a private
    registry when None). Raises ``GalleryError`` when the opened folder holds no readable gallery.
    """

    def __init__(self, gallery: Gallery, opener: Callable[[], Gallery] | None = None,
                 health: Health | None = None) -> None:
        self.gallery = gallery
        self.folder = gallery.folder
        self.opener = opener or self._default_opener(gallery)
        self.health = health if health is not None else Health()
        self.stale = False  # set while the gallery cannot be trusted: search answers nothing (fail closed)
        self._reopen = False  # load the gallery whole at the next refresh (after a stale episode)
        self._file: GalleryFile = probe(self.folder)
        self._lookalikes: Lookalikes | None = None
        self._lookalikes_version = -1  # the gallery version the pairs reflect
        self._lookalikes_lock = threading.Lock()
        #: Called with the new template count after every change ``refresh`` applies (the decision engine's
        #: ``gallery_changed``: the threshold of a false-accept goal depends on the gallery's size).
        self.on_change: Callable[[int], Any] | None = None
        #: Called when another gallery was loaded whole (its identity ids name other people): the decision engine's
        #: ``gallery_replaced`` forgets its votes and passages.
        self.on_replace: Callable[[], Any] | None = None
        self._identities = self._names()
        self._opened_log()

    @staticmethod
    def _default_opener(gallery: Gallery) -> Callable[[], Gallery]:
        from facegate.gallery import Gallery

        folder, pack = gallery.folder, gallery.pack
        return lambda: Gallery(folder, pack=pack, saves_index=False)

    @classmethod
    def from_config(cls, config: Config, pipeline: FacePipeline, health: Health | None = None) -> LiveGallery:
        """Open ``gallery.path`` (default: ``facegate.gallery.location``) bound to ``pipeline``'s pack: a gallery
        enrolled with another pack is refused (``GalleryError``). The index files are never saved by it."""
        from facegate.gallery import Gallery
        from facegate.gallery.enrol import pack_binding

        folder = Path(config.gallery.path) if config.gallery.path else default_gallery_path()
        pack = pack_binding(pipeline)
        return cls(Gallery(folder, pack=pack, saves_index=False, scorer=pipeline.scorer),
                   opener=lambda: Gallery(folder, pack=pack, saves_index=False, scorer=pipeline.scorer),
                   health=health)

    def _opened_log(self) -> None:
        stats = self.gallery.stats()
        log.info("event=gallery_opened folder=%s identities=%s templates=%s gallery_id=%s", stats["folder"],
                 stats["identities"], stats["templates"], self._file.gallery_id)
        if not stats["identities"]:
            log.warning("event=gallery_empty folder=%s note=every_face_will_be_unknown", stats["folder"])

    def _names(self) -> dict[Any, str]:
        return {i.id: i.name for i in self.gallery.identities()}

    # ------------------------------------------------------------------------------------------------ refresh
    def refresh(self) -> bool:
        """Follow the gallery at the path (see the module docstring). Returns True when what is searched changed.
        Never raises: a failure makes the gallery stale (no matches) until a later refresh succeeds."""
        try:
            now = probe(self.folder)
        except GalleryError as exc:
            self._fail(str(exc))
            return False
        if now.gallery_id != self._file.gallery_id:
            self._fail(f"another gallery (id {now.gallery_id}, was {self._file.gallery_id}) is now at "
                       f"{self.folder}: loading it whole")
            return self._reload()
        if self._reopen or (now.device, now.inode) != (self._file.device, self._file.inode):
            return self._reload()
        try:
            changed = self.gallery.refresh()
            names = self._names() if changed else self._identities
        except Exception as exc:  # a locked or damaged gallery must not stop the daemon; fail closed, reload later
            self._fail(f"refresh failed: {exc}")
            return False
        self._log_changes(names)
        self._recovered()
        if changed:
            self._changed()
        return changed

    def _reload(self) -> bool:
        """Open the gallery at the path afresh and search it from now on; the old one is closed."""
        self.stale = True  # nothing matches while the new one loads
        try:
            new = self.opener()
        except Exception as exc:
            self._fail(f"cannot open: {exc}")
            return False
        try:
            now = probe(self.folder)
            if now.gallery_id != new.store.gallery_id:
                raise GalleryError(f"the gallery at {self.folder} changed again while it was being opened")
        except GalleryError as exc:
            new.close()
            self._fail(str(exc))
            return False
        old, self.gallery = self.gallery, new
        replaced = now.gallery_id != self._file.gallery_id
        with self._lookalikes_lock:  # another gallery's templates: the pairs start afresh
            if self._lookalikes is not None:
                self._lookalikes = Lookalikes(self._lookalikes.scorer)
            self._lookalikes_version = -1
        self._file = now
        try:
            old.close()  # never saves an index (saves_index=False); closes its database connection
        except Exception as exc:  # the old file may be gone or garbage: nothing of it is needed any more
            log.debug("event=gallery_old_close_failed error=%r", str(exc))
        names = self._names()
        if replaced:
            log.warning("event=gallery_replaced folder=%s gallery_id=%s identities=%d note=loaded_whole", self.folder,
                        now.gallery_id, len(names))
            self._identities = {}
            if self.on_replace is not None:
                self.on_replace()
        self._opened_log()
        self._log_changes(names)
        self._recovered()
        self._changed()
        return True

    @property
    def identities(self) -> int:
        """Identities the daemon currently matches against (as of the last refresh)."""
        return len(self._identities)

    def _log_changes(self, names: dict[Any, str]) -> None:
        before = self._identities
        if names == before:
            return
        for iid in sorted(set(names) - set(before)):
            log.info("event=gallery_identity_added id=%s name=%r", iid, names[iid])
        for iid in sorted(set(before) - set(names)):
            log.info("event=gallery_identity_removed id=%s name=%r", iid, before[iid])
        self._identities = names
        log.info("event=gallery_reloaded identities=%d templates=%d", len(names), self.templates)

    def _changed(self) -> None:
        """After any change of the templates searched: lookalikes now (not at the next frame), then ``on_change``
        (the threshold of a false-accept goal follows the gallery's size)."""
        if self._lookalikes is not None:
            self.lookalikes(self._lookalikes.scorer)
        if self.on_change is not None:
            self.on_change(self.templates)

    def _fail(self, reason: str) -> None:
        self.stale = True
        self._reopen = True
        self.health.problem("gallery", reason)

    def _recovered(self) -> None:
        self.stale = False
        self._reopen = False
        self.health.clear("gallery")

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

    @property
    def templates(self) -> int:
        """Templates in the gallery now (every one a stranger is compared with)."""
        return int(self.gallery.stats()["templates"])

    # ------------------------------------------------------------------------------------------------ search
    def search(self, embeddings: np.ndarray) -> list[list[Candidate]]:
        """Per probe (N×D float32), its ``Candidate`` identities best first. Nothing while the gallery is stale
        (fail closed)."""
        if self.stale:
            return [[] for _ in range(len(embeddings))]
        return self.gallery.search(embeddings, SEARCH_K)

    def close(self) -> None:
        """Close the database (idempotent through ``Gallery.close``); no index file is written."""
        self.gallery.close()
