"""The running daemon's view of the gallery: opened for the loaded pack, followed while other processes enrol and
erase, and searched by the decision stage — failing closed whenever it cannot be trusted.

``LiveGallery.search`` is the decision engine's ``SearchFn``. While the gallery cannot be refreshed (a locked or
damaged database, so an erasure made by another process may not be applied yet) every probe gets no candidates:
every face stays unknown and no door opens, until a refresh succeeds again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from facegate.gallery.location import default_gallery_path

if TYPE_CHECKING:
    from facegate.config import Config
    from facegate.gallery import Gallery
    from facegate.pipeline import FacePipeline
    from facegate.scoring import Candidate

log = logging.getLogger(__name__)

#: Candidates fetched per probe: the best identity and enough others for the margin test.
SEARCH_K = 5


class LiveGallery:
    """The gallery of one pack, refreshed incrementally (``refresh``) and searched (``search``). Thread-safe as
    ``Gallery`` is (its index serialises searches and updates)."""

    def __init__(self, gallery: Gallery) -> None:
        self.gallery = gallery
        self.stale = False  # set while the gallery cannot be refreshed: search answers nothing (fail closed)
        #: Called with the new template count after every change ``refresh`` applies (the decision engine's
        #: ``gallery_changed``: the threshold of a false-accept goal depends on the gallery's size).
        self.on_change: Callable[[int], Any] | None = None
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
        return cls(Gallery(folder, pack=pack_binding(pipeline), scorer=pipeline.scorer))

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
        log.info("event=gallery_reloaded identities=%d templates=%d", len(now), self.templates)
        if self.on_change is not None:
            self.on_change(self.templates)
        return True

    @property
    def templates(self) -> int:
        """Templates in the gallery now (every one a stranger is compared with)."""
        return int(self.gallery.stats()["templates"])

    def search(self, embeddings: np.ndarray) -> list[list[Candidate]]:
        """Per probe (N×D float32), its ``Candidate`` identities best first. Nothing while the gallery is stale
        (fail closed)."""
        if self.stale:
            return [[] for _ in range(len(embeddings))]
        return self.gallery.search(embeddings, SEARCH_K)

    def close(self) -> None:
        """Save the index if it changed and close the database (idempotent through ``Gallery.close``)."""
        self.gallery.close()
